#!/usr/bin/env python3
"""Per-rank memory of ``boomerang distill``: 1 process, 2 processes DDP, 2 processes ``--fsdp``.

Each variant is one real ``boomerang distill`` run (teacher ``smollm2-135m``,
its default student built in memory, a few short steps on ``stdlib``), on CPU
over gloo under ``torchrun``. The run's summary (``--json``) carries, per
rank, what ``boomerang_cli.distill.fsdp.memory_report`` counted after the
first optimizer step, tensor by tensor over the rank's local shards: the
student's parameters, gradients and AdamW state, and the teacher's
parameters; and the rank's resident set then (``/proc/self/statm``) and at
its peak (``getrusage``), which include the interpreter, torch and the load of both
models in full before they are sharded.

    python bench/fsdp_memory.py              # markdown table on stdout
    python bench/fsdp_memory.py --json       # the raw numbers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
VARIANTS = {"1 process": (1, []), "2 processes, DDP": (2, []), "2 processes, --fsdp": (2, ["--fsdp"])}
COLUMNS = [("student_params", "student weights"), ("student_grads", "gradients"),
           ("optimizer_state", "AdamW state"), ("student_total", "student total"),
           ("teacher_params", "teacher weights"), ("rss", "RSS after step 1"), ("peak_rss", "peak RSS")]


def run(nproc: int, extra: list[str], args: argparse.Namespace, work: Path) -> dict:
    out = work / f"out-{nproc}-{'-'.join(extra) or 'ddp'}"
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
                if nproc > 1 else [sys.executable])
    cmd = [*launcher, "-m", "boomerang_cli", "distill", args.teacher, "-o", str(out), "--data", "stdlib",
           "--seq-len", str(args.seq_len), "--batch-size", "1", "--steps", str(args.steps), "--save-every", "0",
           "--device", "cpu", "--json", "--overwrite", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads),
           "BOOMERANG_PROGRESS": "0", "BOOMERANG_STATE": str(work / "state.json")}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    return {"command": " ".join(cmd[cmd.index("distill"):]), "wall_s": round(time.perf_counter() - t, 1),
            "world_size": summary["world_size"], "ranks": summary["memory"]}


def table(results: dict[str, dict]) -> str:
    head = "| run | rank | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(COLUMNS)]
    for name, r in results.items():
        for i, rank in enumerate(r["ranks"]):
            cells = [f"{rank[k] / MiB:,.1f}" if k in rank else "-" for k, _ in COLUMNS]
            lines.append(f"| {name} | {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nMiB; per rank, after the first optimizer step."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(n, extra, args, Path(tmp)) for name, (n, extra) in VARIANTS.items()}
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
