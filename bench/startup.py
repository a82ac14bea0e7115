#!/usr/bin/env python3
"""Start-up time of ``boomerang --help``, ``--version`` and ``distill --help`` against ``import typer``.

Each command runs ``--repeat`` times in a fresh interpreter, from a neutral
directory (so ``-m boomerang_cli`` finds the tree under test, not the current
one); the median wall time is reported with its ratio to the median of
``python -c "import typer"`` measured in the same rounds, which is what the
CLI cannot go below. ``--root`` selects the source tree (default: this one),
so an older commit's tree can be measured the same way.

    python bench/startup.py                       # markdown table on stdout
    python bench/startup.py --root /tmp/old-tree  # another checkout
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--help"], ["--version"], ["distill", "--help"])


def _seconds(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.root.resolve())}
    runs: dict[str, list[float]] = {"import typer": []}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeat):  # interleaved: load on a shared machine hits all alike
            runs["import typer"].append(_seconds([sys.executable, "-c", "import typer"], env, cwd))
            for argv in COMMANDS:
                name = "boomerang " + " ".join(argv)
                runs.setdefault(name, []).append(_seconds([sys.executable, "-m", "boomerang_cli", *argv], env, cwd))
    base = statistics.median(runs["import typer"])
    print(f"| command ({args.repeat} runs, median) | seconds | x `import typer` |")
    print("|---|---:|---:|")
    for name, times in runs.items():
        t = statistics.median(times)
        print(f"| `{name}` | {t:.2f} | {t / base:.1f} |")


if __name__ == "__main__":
    main()
