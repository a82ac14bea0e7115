#!/usr/bin/env python3
"""``python bench/rss_phases.py distill ...``: ``boomerang distill`` with its resident set traced by phase.

Used by ``bench/fsdp_memory.py --phases`` (under torchrun, one trace per
rank). The run's phases are marked from outside, by wrapping the functions
that begin them (teacher load and shard, student load and shard, each
micro-batch's teacher forward, student forward and backward, clip, optimizer
step, the final gather and write), so the library is traced as it ships. For
each phase the trace keeps the resident set at its start and end; the highest
one a sampling thread saw during it (every 3 ms), with what glibc's malloc
held then (``mallinfo2``: bytes in use, and free bytes it keeps in its
arenas); the most bytes in use seen; and by how much the process's
high-water mark (``getrusage`` ``ru_maxrss``, what ``time -v`` reports) rose
during it: the phase that raised it last set the peak, exactly. What is
resident outside malloc (shared libraries, Python's object arenas) is the
resident set less malloc's in use and free. FSDP's pre-forward hooks run
before a wrapped ``forward``, so a unit's gather counts in the phase before.

The trace is one JSON file per process, at ``$RSS_PHASES_OUT.<rank>.json``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError):  # not glibc
    _libc = None


def heap() -> tuple[int, int]:
    """glibc's bytes in use (arenas and mmapped chunks) and free bytes it keeps in its arenas."""
    if _libc is None:
        return 0, 0
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd, m.fordblks


def hwm() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Tracer:
    """The current phase, and per phase (in order of first entry) what the resident set did."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, int]] = {}
        self.current = "start"
        self.lock = threading.Lock()
        self._enter("start")
        threading.Thread(target=self._sample, daemon=True).start()

    def _note(self, p: dict[str, int], now: int, used: int, free: int) -> None:
        if now > p["max"]:
            p["max"], p["used_at_max"], p["free_at_max"] = now, used, free
        p["max_used"] = max(p["max_used"], used)

    def _enter(self, name: str) -> None:
        now, high = rss(), hwm()
        used, free = heap()
        with self.lock:
            if self.current in self.phases:
                p = self.phases[self.current]
                p["end"] = now
                self._note(p, now, used, free)
                p["hwm_rise"] += max(0, high - p.pop("_hwm0", high))
            self.current = name
            p = self.phases.setdefault(
                name,
                {
                    "start": now,
                    "end": now,
                    "max": 0,
                    "hwm_rise": 0,
                    "count": 0,
                    "max_used": 0,
                    "used_at_max": 0,
                    "free_at_max": 0,
                },
            )
            p["count"] += 1
            p["_hwm0"] = high
            self._note(p, now, used, free)

    def mark(self, name: str) -> None:
        self._enter(name)

    def _sample(self) -> None:
        while True:
            now = rss()
            used, free = heap()
            with self.lock:
                p = self.phases.get(self.current)
                if p is not None:
                    self._note(p, now, used, free)
            time.sleep(0.003)

    def dump(self, path: str) -> None:
        self._enter("exit")
        out = {
            "phases": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in self.phases.items()},
            "peak": hwm(),
        }
        Path(path).write_text(json.dumps(out, indent=1))


def _wrap(owner: Any, attr: str, before: str, after: str | None, tracer: Tracer) -> None:
    fn: Callable = getattr(owner, attr)

    def wrapped(*a: Any, **kw: Any) -> Any:
        tracer.mark(before)
        try:
            return fn(*a, **kw)
        finally:
            if after:
                tracer.mark(after)

    setattr(owner, attr, wrapped)


def install(tracer: Tracer) -> None:
    import torch

    from boomerang_cli.distill import fsdp, model, setup, sharded_load, train

    _wrap(setup, "_setup_inputs", "setup: tokenizer and data", "setup: other", tracer)
    _wrap(sharded_load, "teacher", "load: teacher (build)", None, tracer)
    _wrap(fsdp.Sharding, "shard_teacher", "load: teacher (shard, read)", "setup: other", tracer)
    _wrap(sharded_load, "student", "load: student (build)", None, tracer)
    _wrap(fsdp.Sharding, "shard_student", "load: student (shard, read)", "setup: other", tracer)
    _wrap(model.Teacher, "__call__", "step: teacher forward", None, tracer)
    _wrap(model.DistillStudent, "forward", "step: student forward + loss", "step: backward", tracer)
    _wrap(torch.optim.AdamW, "step", "step: optimizer", "step: after optimizer", tracer)
    _wrap(fsdp, "memory_report", "step: memory report", "step: after optimizer", tracer)
    _wrap(train, "forward_backward", "step: teacher forward", "step: clip", tracer)
    _wrap(fsdp, "release", "finish: release", "finish: gather state dict", tracer)
    _wrap(train, "write_student", "finish: write", "finish: other", tracer)


def main() -> None:
    tracer = Tracer()
    install(tracer)
    out = os.environ["RSS_PHASES_OUT"]
    sys.argv = ["boomerang", *sys.argv[1:]]
    from boomerang_cli.cli import app

    try:
        app(prog_name="boomerang")
    finally:
        tracer.dump(f"{out}.{os.environ.get('RANK', '0')}.json")


if __name__ == "__main__":
    main()
