"""Benchmark: write a whole family with the streaming writer vs in-memory surgery + save_pretrained.

    python bench/family_build.py [--teacher smollm2-135m] [--order last-first] [--repeat N] [--keep-output]

Builds every member of the teacher's default-plan family (SmolLM2-135M: 13
members, ~7 GB in fp32) three ways, each in a fresh process so peak RSS is the
process's own:

1. the streaming writer: what ``boomerang family TEACHER STUDENT --all`` runs (pair check,
   fingerprints, per-file sha256 checksums and the manifest included);
2. the baseline the paper's code implies: load teacher and student with
   ``from_pretrained``, build each member by module surgery (student layers plus
   deep copies of teacher blocks, embeddings and head by the SPEC rule) and
   ``save_pretrained`` it with the tokenizer;
3. a plain kernel copy (``copy_file_range``, what ``cp`` does) of as many bytes
   as the members' weight files hold.

Prints wall time and peak RSS of each process (and the import / setup / build
phases of the two builders) and the ratios, checks that both builds wrote the
same tensors, and deletes everything under a temporary directory in
/tmp (``--keep-output`` keeps it). The default student is ``init-student`` of
the teacher with the paper's flags (no training needed to time the writer).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# -- workers (run in their own process) ---------------------------------------------------


def surgery_member(teacher, student, kept, num_teacher_layers, teacher_blocks):
    """The member in memory, the reference code's way: a deep copy of the student with blocks swapped."""
    import copy

    import torch

    blocks = list(zip(kept, list(kept[1:]) + [num_teacher_layers]))
    model = copy.deepcopy(student)
    base, tbase, sbase = model.model, teacher.model, student.model
    layers = []
    for b, (start, end) in enumerate(blocks):
        if b in teacher_blocks:
            layers += [copy.deepcopy(tbase.layers[j]) for j in range(start, end)]
        else:
            layers.append(copy.deepcopy(sbase.layers[b]))
    for i, layer in enumerate(layers):
        layer.self_attn.layer_idx = i
    base.layers = torch.nn.ModuleList(layers)
    embed_model = teacher if 0 in teacher_blocks else student
    head_model = teacher if len(blocks) - 1 in teacher_blocks else student
    base.embed_tokens = copy.deepcopy(embed_model.model.embed_tokens)
    base.norm = copy.deepcopy(head_model.model.norm)
    # Untie exactly when embeddings and head come from different models (SPEC section 4).
    tied = embed_model is head_model and teacher.config.tie_word_embeddings
    model.lm_head = copy.deepcopy(head_model.lm_head) if not tied else model.lm_head
    model.config.num_hidden_layers = len(layers)
    model.config.tie_word_embeddings = bool(tied)
    return model


def _phase_report(path: str, phases: dict[str, float]) -> None:
    Path(path).write_text(json.dumps(phases))


def streaming_worker(teacher_ref: str, student_dir: str, out: str, order: str, report: str) -> None:
    """What ``boomerang family TEACHER STUDENT -o OUT --all`` runs, with its phases timed."""
    t0 = time.perf_counter()
    from boomerang_cli.family import achievable, build_family, open_pair, select
    from boomerang_cli.refs import resolve

    t1 = time.perf_counter()
    pair = open_pair(resolve(teacher_ref), resolve(student_dir))
    every = achievable(pair, order)
    picks = select(
        every[1:-1], all_members=True, student_params=every[0].num_params, teacher_params=every[-1].num_params
    )
    t2 = time.perf_counter()
    build_family(pair, picks, Path(out), order=order)
    t3 = time.perf_counter()
    _phase_report(report, {"import_s": t1 - t0, "setup_s": t2 - t1, "build_s": t3 - t2})


def baseline_worker(teacher_ref: str, student_dir: str, out: str, order: str, report: str) -> None:
    import gc

    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from boomerang_cli.orders.names import sequential_members
    from boomerang_cli.refs import resolve
    from boomerang_cli.student import student_plan

    t1 = time.perf_counter()
    teacher_dir = str(resolve(teacher_ref).path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    plan, _ = student_plan(Path(student_dir), teacher.config.num_hidden_layers)
    t2 = time.perf_counter()
    for m in sequential_members(plan, order)[1:-1]:
        member = surgery_member(teacher, student, plan.kept, plan.num_teacher_layers, m.teacher_blocks)
        member.save_pretrained(str(Path(out) / m.name))
        tokenizer.save_pretrained(str(Path(out) / m.name))
        del member
        gc.collect()
    t3 = time.perf_counter()
    _phase_report(report, {"import_s": t1 - t0, "setup_s": t2 - t1, "build_s": t3 - t2})


def copy_worker(sources: list[str], sizes: list[int], out: str) -> None:
    """``len(sizes)`` files of those sizes, kernel-copied from the sources in turn."""
    srcs = [open(s, "rb") for s in sources]
    lengths = [os.fstat(f.fileno()).st_size for f in srcs]
    for i, size in enumerate(sizes):
        with open(Path(out) / f"copy-{i:02d}.bin", "wb") as dst:
            left, k = size, i
            while left:
                src, n = srcs[k % len(srcs)], min(left, lengths[k % len(srcs)])
                off = 0
                while off < n:
                    done = os.copy_file_range(src.fileno(), dst.fileno(), n - off, off)
                    if done == 0:
                        break
                    off += done
                left -= n
                k += 1


# -- driver ---------------------------------------------------------------------------------


def run_measured(cmd: list[str], env: dict[str, str], report: Path | None = None) -> dict[str, float]:
    """Run ``cmd`` in a fresh process: wall seconds, its own peak RSS (MB), its phase times.

    The driver imports nothing heavy before this, so a forked child does not
    inherit (and report) the driver's memory before it execs.
    """
    os.sync()  # the previous phase's dirty pages must not slow this one
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, cwd=str(REPO))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed with exit code {proc.returncode}")
    out = {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}
    if report is not None:
        out.update(json.loads(report.read_text()))
    return out


def weight_bytes(directory: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(directory.rglob("*.safetensors"))]


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: h.get_tensor(k) for k in h.keys()})
        return out

    ta, tb = tensors(a), tensors(b)
    # A member saved tied (the writer ties by content) stores no head: its head is its embedding.
    for t in (ta, tb):
        if "lm_head.weight" not in t and "model.embed_tokens.weight" in t:
            t["lm_head.weight"] = t["model.embed_tokens.weight"]
    return ta.keys() == tb.keys() and all(ta[k].equal(tb[k]) for k in ta)


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest of repeated runs (the least disturbed by other load), with the largest peak RSS."""
    out = dict(min(runs, key=lambda r: r["wall_s"]))
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["runs_wall_s"] = [round(r["wall_s"], 2) for r in runs]
    out["median_wall_s"] = statistics.median(r["wall_s"] for r in runs)
    if "build_s" in runs[0]:
        out["median_build_s"] = statistics.median(r["build_s"] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--student", default=None, help="default: init-student of the teacher, paper flags")
    ap.add_argument("--order", default="last-first")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each variant; the fastest is reported")
    ap.add_argument("--keep-output", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    ap.add_argument("--worker", choices=["streaming", "baseline", "copy"], help=argparse.SUPPRESS)
    ap.add_argument("worker_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "streaming":
        streaming_worker(*args.worker_args)
        return
    if args.worker == "baseline":
        baseline_worker(*args.worker_args)
        return
    if args.worker == "copy":
        spec = json.loads(args.worker_args[0])
        copy_worker(spec["sources"], spec["sizes"], spec["out"])
        return

    root = Path(tempfile.mkdtemp(prefix="boomerang-bench-", dir="/tmp"))
    env = dict(
        os.environ,
        BOOMERANG_STATE=str(root / "state.json"),
        BOOMERANG_PROGRESS="0",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    try:
        if args.student:
            student = Path(args.student).resolve()
        else:
            student = root / "student"
            subprocess.run(
                [sys.executable, "-m", "boomerang_cli", "init-student", args.teacher, "-o", str(student), "--json"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                cwd=str(REPO),
            )
        teacher_dir = Path(
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from boomerang_cli.refs import resolve; print(resolve(sys.argv[1]).path)",
                    args.teacher,
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        runs: dict[str, list[dict[str, float]]] = {"streaming": [], "baseline": [], "plain copy": []}
        stream_out, base_out, copy_out = root / "streaming", root / "baseline", root / "copy"
        report = root / "phases.json"
        sizes: list[int] = []
        names: list[str] = []
        identical = None
        for _ in range(args.repeat):
            for d in (stream_out, base_out):
                shutil.rmtree(d, ignore_errors=True)
            runs["streaming"].append(
                run_measured(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "streaming",
                        args.teacher,
                        str(student),
                        str(stream_out),
                        args.order,
                        str(report),
                    ],
                    env,
                    report,
                )
            )
            manifest = json.loads((stream_out / "family.json").read_text())
            sizes = weight_bytes(stream_out)
            names = [m["name"] for m in manifest["members"]]

            base_out.mkdir()
            runs["baseline"].append(
                run_measured(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "baseline",
                        args.teacher,
                        str(student),
                        str(base_out),
                        args.order,
                        str(report),
                    ],
                    env,
                    report,
                )
            )
            assert sorted(p.name for p in base_out.iterdir()) == sorted(names), "baseline wrote other members"

            copy_out.mkdir()
            srcs = [str(p) for p in sorted(teacher_dir.glob("*.safetensors"))]
            spec = json.dumps({"sources": srcs, "sizes": sizes, "out": str(copy_out)})
            runs["plain copy"].append(run_measured([sys.executable, __file__, "--worker", "copy", spec], env))
            assert sum(p.stat().st_size for p in copy_out.iterdir()) == sum(sizes)
            shutil.rmtree(copy_out)  # peak disk use: two families (~15 GB for SmolLM2)
        check = names[len(names) // 2]
        identical = same_tensors(stream_out / check, base_out / check)  # heavy imports only now
        total = sum(sizes)
        figures = {k: best(v) for k, v in runs.items()}

        s, b, c = figures["streaming"], figures["baseline"], figures["plain copy"]
        ratios = {
            "rss_streaming_over_baseline": s["peak_rss_mb"] / b["peak_rss_mb"],
            "wall_streaming_over_baseline": s["wall_s"] / b["wall_s"],
            "wall_streaming_over_copy": s["wall_s"] / c["wall_s"],
            "build_streaming_over_baseline": s["build_s"] / b["build_s"],
            "build_streaming_over_copy": s["build_s"] / c["wall_s"],
            "median_wall_streaming_over_baseline": s["median_wall_s"] / b["median_wall_s"],
            "median_wall_streaming_over_copy": s["median_wall_s"] / c["median_wall_s"],
            "median_build_streaming_over_copy": s["median_build_s"] / c["median_wall_s"],
        }
        print(
            f"teacher {args.teacher}, {len(names)} members ({args.order}), {total / 1e9:.2f} GB of weights, "
            f"{os.cpu_count()} CPUs, best of {args.repeat}"
        )
        print(f"{'':12} {'wall s':>8} {'peak RSS MB':>12} {'import s':>9} {'setup s':>8} {'build s':>8}")
        for k, v in figures.items():
            ph = "".join(f" {v[p]:8.1f}" if p in v else f" {'-':>8}" for p in ("import_s", "setup_s", "build_s"))
            print(f"{k:12} {v['wall_s']:8.1f} {v['peak_rss_mb']:12.0f} {ph}")
        print(f"peak RSS streaming/baseline: {ratios['rss_streaming_over_baseline']:.2f} (target <= 0.3)")
        print(f"wall streaming/baseline:     {ratios['wall_streaming_over_baseline']:.2f} (target <= 0.6)")
        print(f"wall streaming/plain copy:   {ratios['wall_streaming_over_copy']:.2f} (target <= 2)")
        print(
            f"build phase only: streaming/baseline {ratios['build_streaming_over_baseline']:.2f}, "
            f"streaming/plain copy {ratios['build_streaming_over_copy']:.2f}"
        )
        if args.repeat > 1:
            print(
                f"medians of {args.repeat}: wall streaming/baseline {ratios['median_wall_streaming_over_baseline']:.2f}, "
                f"streaming/plain copy {ratios['median_wall_streaming_over_copy']:.2f}, build phase/plain copy "
                f"{ratios['median_build_streaming_over_copy']:.2f}"
            )
            for k, v in figures.items():
                print(f"  {k} runs: {v['runs_wall_s']} s")
        print(f"{check}: streaming and baseline tensors identical: {identical}")
        if args.json_out:
            Path(args.json_out).write_text(
                json.dumps(
                    {
                        "teacher": args.teacher,
                        "members": len(names),
                        "bytes": total,
                        "figures": figures,
                        "ratios": ratios,
                        "identical": identical,
                        "cpus": os.cpu_count(),
                        "repeat": args.repeat,
                    },
                    indent=2,
                )
                + "\n"
            )
    finally:
        if args.keep_output:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
