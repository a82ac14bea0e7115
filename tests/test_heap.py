"""distill.heap: a sharded run's freed tensors go back to the system (glibc), and a user's malloc settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from boomerang_cli.distill import heap

REPO = Path(__file__).resolve().parents[1]
glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)

# FSDP's pattern in small: layer-sized tensors gathered and freed while long-lived ones (shards, AdamW
# state) are allocated in between. Prints the resident set (MiB) before the churn and after freeing it.
CHURN = """
import sys, torch
from boomerang_cli.distill import heap
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // (1 << 20)
if sys.argv[1] == "set":
    assert heap.return_freed_memory()
torch.empty(4 << 18).fill_(1)  # a 4 MiB block mapped and freed: glibc's threshold rises past it
kept, churn = [], []
before = rss()
for i in range(64):
    churn.append(torch.ones(1 << 20))  # 4 MiB each, touched
    kept.append(torch.ones(1 << 16))  # 256 KiB, kept
del churn
print(before, rss())
"""


def _churn(mode: str) -> tuple[int, int]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after = map(int, out.stdout.split())
    return before, after


@glibc
def test_freed_tensors_go_back_to_the_system():
    """256 MiB of 4 MiB tensors freed between long-lived small ones: with the threshold fixed at 1 MiB
    the resident set returns to within 32 MiB of where it was (the kept 16 MiB and noise); with
    glibc's default, dynamic threshold most of the 256 MiB stays resident (why heap.py exists)."""
    before, after = _churn("set")
    assert after - before < 32, (before, after)
    before, after = _churn("default")
    assert after - before > 128, ("glibc gave the freed tensors back by itself", before, after)


def test_a_users_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert heap.return_freed_memory() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert heap.return_freed_memory() is False
