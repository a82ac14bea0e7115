#!/usr/bin/env python3
"""Peak memory of ``boomerang init-student`` on SmolLM2-135M against loading the teacher.

Every measurement runs in a fresh interpreter, started by a small wrapper
process that reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak
resident set of exactly that one command. The one-time GGUF conversion happens
(or is found in the cache) before anything is measured.

    python bench/init_student_memory.py            # markdown table on stdout
    python bench/init_student_memory.py --json     # the raw numbers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if p.returncode:
    sys.stderr.write(p.stderr)
    sys.exit(p.returncode)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "wall_s": wall}))
"""

IMPORTS = (
    "import torch, transformers\n"
    "from transformers import AutoModelForCausalLM\n"
    "from transformers.models.llama import modeling_llama\n"
    "import boomerang_cli.cli.init_student\n"
)

LOAD = (
    "import sys, torch\n"
    "from transformers import AutoModelForCausalLM\n"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n"
)

LOAD_FORWARD = LOAD + ("with torch.no_grad():\n    m(input_ids=torch.arange(2, 34).unsqueeze(0), use_cache=False)\n")

NAIVE_PRUNE = LOAD + (
    "from boomerang_cli.plan import Plan\n"
    "kept = Plan.from_paper_flags(m.config.num_hidden_layers).kept\n"
    "m.model.layers = torch.nn.ModuleList([m.model.layers[i] for i in kept])\n"
    "m.config.num_hidden_layers = len(kept)\n"
    "m.save_pretrained(sys.argv[2])\n"
)


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from boomerang_cli import __version__
    from boomerang_cli.arch import ModelInfo
    from boomerang_cli.refs import resolve

    t = time.perf_counter()
    ref = resolve(args.teacher)  # converts the GGUF once, else reads the cache
    resolve_s = time.perf_counter() - t
    info = ModelInfo.load(ref.path)
    teacher_bytes = info.weights.total_bytes()
    params = info.count_params(info.arch.pre + info.arch.post) + sum(
        info.layer_params(i) for i in range(info.arch.num_layers)
    )

    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "python + torch + transformers imported (floor)": lambda i: [py, "-c", IMPORTS],
            "init-student (fp32, as stored)": lambda i: [
                py,
                "-m",
                "boomerang_cli",
                "init-student",
                args.teacher,
                "-o",
                f"{tmp}/fp32-{i}",
                "--json",
            ],
            "init-student --dtype bf16": lambda i: [
                py,
                "-m",
                "boomerang_cli",
                "init-student",
                args.teacher,
                "-o",
                f"{tmp}/bf16-{i}",
                "--json",
                "--dtype",
                "bf16",
            ],
            "from_pretrained (load only)": lambda i: [py, "-c", LOAD, str(ref.path)],
            "from_pretrained + one forward pass": lambda i: [py, "-c", LOAD_FORWARD, str(ref.path)],
            "naive prune: from_pretrained, drop layers, save_pretrained": lambda i: [
                py,
                "-c",
                NAIVE_PRUNE,
                str(ref.path),
                f"{tmp}/naive-{i}",
            ],
        }
        # The CLI's "last step" record goes to the temporary directory, not the caller's.
        env = {**os.environ, "BOOMERANG_STATE": f"{tmp}/state.json", "BOOMERANG_PROGRESS": "0"}
        results = {}
        for name, cmd in cases.items():
            runs = [measure(cmd(i), env) for i in range(args.repeats)]
            peaks = [r["peak_kib"] * 1024 / 1e6 for r in runs]
            results[name] = {
                "peak_mb_median": statistics.median(peaks),
                "peak_mb_min": min(peaks),
                "peak_mb_max": max(peaks),
                "wall_s_median": statistics.median(r["wall_s"] for r in runs),
            }
        student_bytes = ModelInfo.load(Path(f"{tmp}/fp32-0")).weights.total_bytes()

    import torch
    import transformers

    meta = {
        "teacher": args.teacher,
        "teacher_path": str(ref.path),
        "resolve_s": resolve_s,
        "teacher_params": params,
        "teacher_fp32_mb": teacher_bytes / 1e6,
        "student_fp32_mb": student_bytes / 1e6,
        "repeats": args.repeats,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "boomerang": __version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    floor = results["python + torch + transformers imported (floor)"]["peak_mb_median"]
    print(
        f"Teacher {args.teacher}: {params / 1e6:.1f}M parameters, {meta['teacher_fp32_mb']:.0f} MB in fp32; "
        f"student {meta['student_fp32_mb']:.0f} MB. Median of {args.repeats} runs; "
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['cpus']} CPUs.\n"
    )
    print("| command | peak RSS (MB) | above the floor (MB) | wall (s) |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        above = "—" if "floor" in name else f"{r['peak_mb_median'] - floor:.0f}"
        print(
            f"| {name} | {r['peak_mb_median']:.0f} ({r['peak_mb_min']:.0f}–{r['peak_mb_max']:.0f}) "
            f"| {above} | {r['wall_s_median']:.1f} |"
        )


if __name__ == "__main__":
    main()
