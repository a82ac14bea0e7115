#!/usr/bin/env python3
"""``--fsdp`` on every visible GPU in one short run: NCCL, bf16, tokens/s, MFU and peak memory per GPU.

For a GPU machine when one is lent (never needed by CI; nothing here runs
without CUDA). Three parts, each with its own time limit:

1. NCCL: ``all_reduce`` of 256 MiB of bf16 across all GPUs (``torchrun``),
   checked for the right sum, with its bus bandwidth.
2. ``boomerang distill --fsdp --precision bf16`` on all GPUs against one GPU
   (same global batch): tokens/s, each rank's peak CUDA memory and the
   run summary's per-rank shard sizes; the losses of the two must agree.
3. MFU: model FLOPs per token (6 x trained student parameters for forward and
   backward, plus 2 x teacher parameters for its forward; attention ignored)
   x tokens/s over the GPUs' dense bf16 peak (``--peak-tflops``, else by name).

    python bench/gpu_fsdp_check.py OUTDIR [--teacher smollm2-135m] [--steps 20]

Writes OUTDIR/gpu_fsdp_check.json and prints a markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 1 << 30
#: dense bf16 TFLOP/s by GPU name (no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}

NCCL = r"""
import os, time, torch, torch.distributed as dist
dist.init_process_group("nccl")
rank, world = dist.get_rank(), dist.get_world_size()
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
x = torch.full((128 << 20,), float(rank + 1), dtype=torch.bfloat16, device="cuda")
for _ in range(3):
    y = x.clone(); dist.all_reduce(y)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10):
    y = x.clone(); dist.all_reduce(y)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
ok = bool((y == world * (world + 1) / 2).all())
bus = 2 * (world - 1) / world * x.numel() * x.element_size() / dt / 1e9
if rank == 0:
    print({"world": world, "sum_ok": ok, "ms": round(dt * 1e3, 2), "bus_GBps": round(bus, 1),
           "nccl": ".".join(map(str, torch.cuda.nccl.version()))})
dist.destroy_process_group()
"""


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BOOMERANG_PROGRESS": "0",
        "HF_HUB_OFFLINE": "1",
        "BOOMERANG_STATE": str(work / "state.json"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def distill(n: int, args: argparse.Namespace, work: Path) -> dict:
    """One bf16 run on ``n`` GPUs (``--fsdp`` when n > 1), global batch ``args.batch`` sequences."""
    out = work / f"gpus-{n}"
    cmd = [
        *(_torchrun(n) if n > 1 else [sys.executable]),
        "-m",
        "boomerang_cli",
        "distill",
        args.teacher,
        "-o",
        str(out),
        "--data",
        "stdlib",
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch // n),
        "--steps",
        str(args.steps),
        "--save-every",
        "0",
        "--precision",
        "bf16",
        "--device",
        "cuda",
        "--json",
        "--overwrite",
        *(["--fsdp"] if n > 1 else []),
    ]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=_env(work), capture_output=True, text=True, timeout=args.timeout)
    if p.returncode:
        return {"gpus": n, "rc": p.returncode, "error": p.stderr[-2000:]}
    s = json.loads(p.stdout[p.stdout.index("{") :])
    return {
        "gpus": n,
        "rc": 0,
        "wall_s": round(time.perf_counter() - t, 1),
        "tokens_per_s": s["tokens_per_s"],
        "final": s["final"],
        "memory": s["memory"],
        "peak_memory_bytes": s["peak_memory_bytes"],
        "command": " ".join(cmd[cmd.index("distill") :]),
    }


def flops_per_token(teacher: str) -> tuple[float, dict]:
    """6 N_student(trained) + 2 N_teacher, counted from the models' files and the default plan."""
    from boomerang_cli.arch import ModelInfo
    from boomerang_cli.plan import Plan
    from boomerang_cli.refs import resolve

    info = ModelInfo.load(Path(resolve(teacher).path))
    n_teacher = sum(e.numel for e in info.weights.entries.values())
    plan = Plan.from_flags(info.arch.num_layers, None, 1, 2, 2)
    n_layers = sum(info.layer_params(k) for k in plan.kept)  # tied teacher: embeddings frozen, not trained
    n_student = (
        n_layers
        if info.arch.tied
        else n_teacher - sum(info.layer_params(i) for i in range(info.arch.num_layers)) + n_layers
    )
    return 6.0 * n_student + 2.0 * n_teacher, {"teacher_params": n_teacher, "student_trained_params": n_student}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="global batch, sequences (divisible by the GPU count)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--timeout", type=int, default=240)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this check is for a GPU machine")
    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = args.outdir / "work"
    report: dict = {"gpu": name, "gpus": n, "torch": torch.__version__, "bf16": torch.cuda.is_bf16_supported()}
    p = subprocess.run(
        [*_torchrun(n), "--no-python", sys.executable, "-c", NCCL],
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    report["nccl"] = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else p.stderr[-2000:]
    runs = [distill(1, args, work)] + ([distill(n, args, work)] if n > 1 else [])
    fpt, counts = flops_per_token(args.teacher)
    report.update(counts, flops_per_token=fpt, peak_tflops_per_gpu=peak, runs=runs)
    for r in runs:
        if r["rc"] == 0 and peak:
            r["mfu"] = round(fpt * r["tokens_per_s"] / (r["gpus"] * peak * 1e12), 4)
    if len(runs) == 2 and all(r["rc"] == 0 for r in runs):
        a, b = runs[0]["final"], runs[1]["final"]
        report["losses_agree"] = all(abs(a[k] - b[k]) <= 2e-2 * max(1.0, abs(a[k])) for k in a)
    (args.outdir / "gpu_fsdp_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{name} x {n}, NCCL: {report['nccl']}\n")
    print("| GPUs | tokens/s | MFU | peak CUDA memory per GPU (GiB) |\n|---:|---:|---:|---|")
    for r in runs:
        if r["rc"]:
            print(f"| {r['gpus']} | failed (rc {r['rc']}) | - | - |")
            continue
        mem = ", ".join(f"{m.get('cuda_peak_allocated', 0) / GiB:.2f}" for m in r["memory"])
        print(f"| {r['gpus']} | {r['tokens_per_s']:,.0f} | {r.get('mfu', '-')} | {mem} |")


if __name__ == "__main__":
    main()
