#!/usr/bin/env python3
"""Per-rank memory of ``boomerang distill``: 1 process against 2 processes ``--fsdp`` (and DDP).

Each variant is one real ``boomerang distill`` run on CPU over gloo, its
student built in memory from the paper plan, a few short steps on
``stdlib``. The teacher is, by default, a randomly initialised fp32 Llama of
1.05 GiB (hidden 1024, 16 layers, SmolLM2's tokenizer and 49,152-token
vocabulary, tied embeddings), written once into the work directory; or any
teacher with ``--teacher``. Every process runs under GNU ``time -v``
(``torchrun --no-python /usr/bin/time -v python -m boomerang_cli ...``), whose
"Maximum resident set size" is the peak over the whole run (load, training,
writing the student). The run's summary (``--json``) adds, per rank, what
``boomerang_cli.distill.fsdp.memory_report`` counted after the first step,
tensor by tensor over the rank's local shards.

    python bench/fsdp_memory.py              # markdown table on stdout
    python bench/fsdp_memory.py --json       # the raw numbers
    python bench/fsdp_memory.py --ddp        # also 2 processes without --fsdp
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
TIME = "/usr/bin/time"
#: the random teacher: ~281M parameters, 1.05 GiB in fp32
LLAMA = dict(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
             intermediate_size=3328, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048)
COLUMNS = [("student_params", "student weights"), ("student_grads", "gradients"),
           ("optimizer_state", "AdamW state"), ("teacher_params", "teacher weights"),
           ("peak_rss", "peak RSS at step 1"), ("time_peak_rss", "peak RSS (time -v)")]


def random_teacher(work: Path) -> Path:
    """The random Llama teacher with SmolLM2's tokenizer (from the builtin, converted once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from boomerang_cli.refs import resolve

    out = work / "random-llama-1gib"
    if (out / "model.safetensors").exists():
        return out
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA))
    model.save_pretrained(str(out), safe_serialization=True)
    smol = Path(resolve("smollm2-135m").path)
    for f in smol.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")) or f.name in {"vocab.json", "merges.txt"}:
            shutil.copy(f, out / f.name)
    return out


def run(nproc: int, extra: list[str], teacher: str, args: argparse.Namespace, work: Path) -> dict:
    out = work / f"out-{nproc}-{'-'.join(extra) or 'ddp'}"
    timed = [TIME, "-v", sys.executable] if shutil.which(TIME) else [sys.executable]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                 "--no-python", *timed] if nproc > 1 else timed)
    cmd = [*launcher, "-m", "boomerang_cli", "distill", teacher, "-o", str(out), "--data", "stdlib",
           "--seq-len", str(args.seq_len), "--batch-size", str(2 // nproc if nproc <= 2 else 1),
           "--steps", str(args.steps), "--save-every", "0", "--device", "cpu", "--json", "--overwrite", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads),
           "BOOMERANG_PROGRESS": "0", "BOOMERANG_STATE": str(work / "state.json")}
    if args.mmap_threshold:  # glibc: allocations from this size on are mmapped, so freed ones go back
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    peaks = [int(k) * 1024 for k in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)]
    ranks = summary["memory"]
    # time -v reports in exit order, not by rank: listed largest first, as are the ranks' own peaks.
    for rank, peak in zip(sorted(ranks, key=lambda r: -r["peak_rss"]), sorted(peaks, reverse=True)):
        rank["time_peak_rss"] = peak
    return {"command": " ".join(cmd[cmd.index("distill") - 2:]), "wall_s": round(time.perf_counter() - t, 1),
            "world_size": summary["world_size"], "ranks": ranks, "final": summary["final"]}


def table(results: dict[str, dict]) -> str:
    base = max(r.get("time_peak_rss", 0) for r in results["1 process"]["ranks"])
    head = "| run | rank | " + " | ".join(c for _, c in COLUMNS) + " | peak / 1 process |"
    lines = [head, "|---|---:|" + "---:|" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        for i, rank in enumerate(r["ranks"]):
            cells = [f"{rank[k] / MiB:,.0f}" if k in rank else "-" for k, _ in COLUMNS]
            ratio = f"{rank['time_peak_rss'] / base:.2f}x" if base and "time_peak_rss" in rank else "-"
            lines.append(f"| {name} | {i} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n\nMiB per rank; tensor columns after the first optimizer step."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="a teacher reference (default: the random 1.05 GiB Llama)")
    ap.add_argument("--work", type=Path, default=None, help="keep the random teacher here between runs")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ddp", action="store_true", help="also 2 processes without --fsdp")
    ap.add_argument("--mmap-threshold", type=int, default=0,
                    help="MALLOC_MMAP_THRESHOLD_ for every run (glibc; 0: the default, dynamic)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    variants = {"1 process": (1, []), **({"2 processes, DDP": (2, [])} if args.ddp else {}),
                "2 processes, --fsdp": (2, ["--fsdp"])}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        teacher = args.teacher or str(random_teacher(work))
        results = {name: run(n, extra, teacher, args, work) for name, (n, extra) in variants.items()}
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
