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

With ``--phases`` each process runs under ``bench/rss_phases.py`` instead,
which traces its resident set and glibc's heap by phase of the run (load,
teacher forward, student forward, backward, optimizer, final gather), printed
after the table: where each rank's peak is set, and of what it consists.

    python bench/fsdp_memory.py              # markdown table on stdout
    python bench/fsdp_memory.py --runs 3     # every variant 3 times: peaks and ratios min-max
    python bench/fsdp_memory.py --phases     # and the per-phase breakdown of each rank
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
LLAMA = dict(
    hidden_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    intermediate_size=3328,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
COLUMNS = [
    ("student_params", "student weights"),
    ("student_grads", "gradients"),
    ("optimizer_state", "AdamW state"),
    ("teacher_params", "teacher weights"),
    ("peak_rss", "peak RSS at step 1"),
    ("time_peak_rss", "peak RSS (time -v)"),
]


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


def run(
    nproc: int, extra: list[str], env_extra: dict[str, str], teacher: str, args: argparse.Namespace, work: Path
) -> dict:
    out = work / f"out-{nproc}-{'-'.join(extra) or 'ddp'}"
    timed = [TIME, "-v", sys.executable] if shutil.which(TIME) else [sys.executable]
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "--no-python",
            *timed,
        ]
        if nproc > 1
        else timed
    )
    entry = [str(REPO / "bench" / "rss_phases.py")] if args.phases else ["-m", "boomerang_cli"]
    cmd = [
        *launcher,
        *entry,
        "distill",
        teacher,
        "-o",
        str(out),
        "--data",
        "stdlib",
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(2 // nproc if nproc <= 2 else 1),
        "--steps",
        str(args.steps),
        "--save-every",
        "0",
        "--device",
        "cpu",
        "--json",
        "--overwrite",
        *extra,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(args.threads),
        "BOOMERANG_PROGRESS": "0",
        "BOOMERANG_STATE": str(work / "state.json"),
        **env_extra,
    }
    if args.phases:
        env["RSS_PHASES_OUT"] = str(out) + "-phases"
    if args.mmap_threshold:  # glibc: allocations from this size on are mmapped, so freed ones go back
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    summary = json.loads(p.stdout[p.stdout.index("{") :])
    peaks = [int(k) * 1024 for k in re.findall(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)]
    ranks = summary["memory"]
    phases = [json.loads(Path(f"{out}-phases.{r}.json").read_text()) for r in range(nproc)] if args.phases else None
    # time -v reports in exit order, not by rank: matched by size to each rank's own peak (its trace's
    # high-water mark, the same getrusage figure, or else its peak at step 1).
    key = [tr["peak"] for tr in phases] if phases else [r["peak_rss"] for r in ranks]
    for i, peak in zip(sorted(range(len(ranks)), key=lambda i: -key[i]), sorted(peaks, reverse=True)):
        ranks[i]["time_peak_rss"] = peak
    return {
        "command": " ".join(cmd[cmd.index("distill") - 2 :]),
        "env": env_extra,
        "phases": phases,
        "wall_s": round(time.perf_counter() - t, 1),
        "world_size": summary["world_size"],
        "ranks": ranks,
        "final": summary["final"],
    }


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def table(results: dict[str, list[dict]]) -> str:
    """One row per variant and rank: the tensor columns of the first run; the peaks, and each run's
    peak over that same run's one-process peak, as min-max over the runs."""
    runs = len(results["1 process"])
    base = [max(r.get("time_peak_rss", 0) for r in one["ranks"]) for one in results["1 process"]]
    head = (
        "| run | rank | "
        + " | ".join(c for _, c in COLUMNS)
        + f" | peak / 1 process{f' ({runs} runs)' if runs > 1 else ''} |"
    )
    lines = [head, "|---|---:|" + "---:|" * (len(COLUMNS) + 1)]
    for name, reps in results.items():
        for i, rank in enumerate(reps[0]["ranks"]):
            cells = [f"{rank[k] / MiB:,.0f}" if k in rank else "-" for k, _ in COLUMNS[:-1]]
            peaks = [rep["ranks"][i].get("time_peak_rss", 0) for rep in reps]
            cells.append(_span([p / MiB for p in peaks], "{:,.0f}") if all(peaks) else "-")
            ratio = _span([p / b for p, b in zip(peaks, base)], "{:.2f}x") if all(base) and all(peaks) else "-"
            lines.append(f"| {name} | {i} | " + " | ".join(cells) + f" | {ratio} |")
    note = f"; peaks min-max over {runs} runs, each ratio against its own run's one process" if runs > 1 else ""
    return "\n".join(lines) + f"\n\nMiB per rank; tensor columns after the first optimizer step{note}."


def phase_table(results: dict[str, list[dict]]) -> str:
    """Per variant and rank (first run): each phase's resident set (start, highest seen, end), what
    glibc's malloc held then, and by how much the phase raised the process's peak."""
    out = []
    for name, reps in results.items():
        for rank, trace in enumerate(reps[0].get("phases") or []):
            out += [
                f"\n{name}, rank {rank} (peak {trace['peak'] / MiB:,.0f} MiB)\n",
                "| phase | times | RSS at start | highest seen | malloc in use / free then | most in use | at end "
                "| peak rose by |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for phase, p in trace["phases"].items():
                out.append(
                    f"| {phase} | {p['count']} | {p['start'] / MiB:,.0f} | {p['max'] / MiB:,.0f} | "
                    f"{p['used_at_max'] / MiB:,.0f} / {p['free_at_max'] / MiB:,.0f} | "
                    f"{p['max_used'] / MiB:,.0f} | {p['end'] / MiB:,.0f} | {p['hwm_rise'] / MiB:,.0f} |"
                )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="a teacher reference (default: the random 1.05 GiB Llama)")
    ap.add_argument("--work", type=Path, default=None, help="keep the random teacher here between runs")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1, help="repeat every variant, report peaks min-max")
    ap.add_argument("--ddp", action="store_true", help="also 2 processes without --fsdp")
    ap.add_argument(
        "--same-allocator",
        action="store_true",
        help="also 1 process with glibc's mmap threshold fixed at 1 MiB, the setting --fsdp makes "
        "(distill/heap.py), so that the ratio is not the allocator's alone",
    )
    ap.add_argument(
        "--mmap-threshold",
        type=int,
        default=0,
        help="MALLOC_MMAP_THRESHOLD_ for every run (glibc; 0: the default, dynamic)",
    )
    ap.add_argument(
        "--phases",
        action="store_true",
        help="trace each rank's resident set by phase (bench/rss_phases.py) and print it after the table",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    variants: dict[str, tuple[int, list[str], dict[str, str]]] = {"1 process": (1, [], {})}
    if args.same_allocator:
        variants["1 process, 1 MiB mmap threshold"] = (1, [], {"MALLOC_MMAP_THRESHOLD_": "1048576"})
    if args.ddp:
        variants["2 processes, DDP"] = (2, [], {})
    variants["2 processes, --fsdp"] = (2, ["--fsdp"], {})
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        teacher = args.teacher or str(random_teacher(work))
        for _ in range(args.runs):  # variants interleaved, so that a slow spell of the machine hits them all
            for name, (n, extra, env) in variants.items():
                results[name].append(run(n, extra, env, teacher, args, work))
    print(json.dumps(results, indent=2) if args.json else table(results) + "\n" + phase_table(results))


if __name__ == "__main__":
    main()
