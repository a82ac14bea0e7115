"""Shared-trunk vs member-by-member perplexity of the SmolLM2-135M family, on the same tokens.

The real teacher (builtin ``smollm2-135m``, 30 layers) and its default-plan
student (``init_student``, 16 layers, into a temporary directory); the family is
student + the 13 intermediate members of the chosen order + teacher, all built
in memory. Both methods score exactly the same token blocks (the held-out
``stdlib`` split); the trunk's time includes its first-batch check against one
standalone member, the member-by-member time includes building each member.

    python bench/family_eval.py [--order last-first] [--max-tokens 2048] [--seq-len 512] [--batch-size 4]
                                [--threads N] [--repeat N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from boomerang_cli.arch import ModelInfo  # noqa: E402
from boomerang_cli.cli.common import quiet_libraries  # noqa: E402
from boomerang_cli.compose import compose  # noqa: E402
from boomerang_cli.forward.perplexity import load_eval_data, relative_difference  # noqa: E402
from boomerang_cli.evaluate.stacks import separate_perplexities, trunk_perplexities  # noqa: E402
from boomerang_cli.forward.trunk import LayerRunner, Stack  # noqa: E402
from boomerang_cli.models import load_model, load_tokenizer, model_from_composition  # noqa: E402
from boomerang_cli.orders.names import sequential_members  # noqa: E402
from boomerang_cli.plan import Plan  # noqa: E402
from boomerang_cli.refs import resolve  # noqa: E402
from boomerang_cli.student import init_student  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", default="last-first", choices=["last-first", "first-last"])
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="alternate trunk / member-by-member runs N times, keep the fastest"
    )
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = ap.parse_args()
    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float32

    teacher_ref = resolve("smollm2-135m")
    teacher = ModelInfo.load(teacher_ref.path)
    plan = Plan.from_paper_flags(teacher.arch.num_layers)
    with tempfile.TemporaryDirectory() as tmp:
        init_student(teacher_ref, plan, Path(tmp) / "student", teacher=teacher)
        infos = {"teacher": teacher, "student": ModelInfo.load(Path(tmp) / "student")}
        members = sequential_members(plan, args.order)  # student, members, teacher
        stacks = {m.name: Stack.of_member(m) for m in members}
        models = {r: load_model(infos[r], dtype, device) for r in infos}
        runners = {r: LayerRunner(models[r], infos[r].arch.layers_path) for r in infos}
        whole = {Stack.whole(r, runners[r].num_layers): r for r in runners}

        def build(stack: Stack):
            if stack in whole:
                return models[whole[stack]]
            return model_from_composition(
                compose(infos, stack.layers, stack.embed_from, stack.head_from), dtype, device
            )

        tok = load_tokenizer(teacher.path)
        data = load_eval_data(["stdlib"], "validation", tok, args.seq_len, args.max_tokens)

        # Alternate the two methods and keep each one's fastest run: on a shared machine the
        # load changes over minutes, and alternating exposes both methods to it alike.
        wall: dict[str, list[float]] = {"trunk": [], "flat": []}
        cpu: dict[str, list[float]] = {"trunk": [], "flat": []}
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            trunk, info = trunk_perplexities(stacks, runners, data, args.batch_size, build, tolerance=1e-5)
            wall["trunk"].append(time.perf_counter() - w0)
            cpu["trunk"].append(time.process_time() - c0)
            w0, c0 = time.perf_counter(), time.process_time()
            flat = separate_perplexities(stacks, data, args.batch_size, build)
            wall["flat"].append(time.perf_counter() - w0)
            cpu["flat"].append(time.process_time() - c0)
        t_trunk, t_flat = min(wall["trunk"]), min(wall["flat"])
        c_trunk, c_flat = min(cpu["trunk"]), min(cpu["flat"])

    diffs = {k: relative_difference(trunk[k].ppl, flat[k].ppl) for k in stacks}
    worst = max(diffs, key=diffs.__getitem__)
    n_mid = sum(1 for m in members if not (m.is_student or m.is_teacher))
    print(f"SmolLM2-135M family, {args.order}: student + {n_mid} members + teacher = {len(stacks)} models")
    print(
        f"device {device} ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), "
        f"fp32; {data.num_tokens} tokens scored ({data.num_blocks} blocks of {data.seq_len}, "
        f"batch {args.batch_size}, {data.key})"
    )
    print(
        f"decoder-layer passes per batch: trunk {info.layer_passes}, member by member {info.flat_layer_passes} "
        f"({info.flat_layer_passes / info.layer_passes:.2f}x); heads: {len(stacks)} in both"
    )
    print(f"{'model':<12} {'layers':>6} {'ppl (trunk)':>12} {'ppl (each)':>12} {'rel diff':>9}")
    for m in members:
        k = m.name
        print(f"{k:<12} {m.num_layers:>6} {trunk[k].ppl:>12.4f} {flat[k].ppl:>12.4f} {diffs[k]:>9.1e}")
    runs = f" (fastest of {args.repeat}, alternating)" if args.repeat > 1 else ""
    print(
        f"wall time{runs}: shared trunk {t_trunk:.1f} s, member by member {t_flat:.1f} s, ratio {t_flat / t_trunk:.2f}x"
    )
    print(
        f"CPU time{runs}:  shared trunk {c_trunk:.1f} s, member by member {c_flat:.1f} s, ratio {c_flat / c_trunk:.2f}x"
    )
    print(f"largest perplexity difference: {diffs[worst]:.2e} (relative, {worst})")
    if args.json:
        print(
            json.dumps(
                {
                    "order": args.order,
                    "models": len(stacks),
                    "tokens": data.num_tokens,
                    "seq_len": data.seq_len,
                    "batch_size": args.batch_size,
                    "device": str(device),
                    "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(),
                    "repeat": args.repeat,
                    "trunk_s": t_trunk,
                    "member_by_member_s": t_flat,
                    "speedup": t_flat / t_trunk,
                    "trunk_cpu_s": c_trunk,
                    "member_by_member_cpu_s": c_flat,
                    "cpu_speedup": c_flat / c_trunk,
                    "all_wall_s": wall,
                    "all_cpu_s": cpu,
                    "layer_passes": info.layer_passes,
                    "flat_layer_passes": info.flat_layer_passes,
                    "max_rel_ppl_diff": diffs[worst],
                }
            )
        )


if __name__ == "__main__":
    main()
