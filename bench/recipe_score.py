"""Score students under several orders the way the demo judges a family, on both of its domains.

For each student (a directory OUT/<name> with a boomerang.json): perplexity of
the student, the teacher and every member of the given orders on each domain
the demo judges on (demo.DemoConfig.domains: 4096 held-out stdlib tokens, and
4096 tokens of Debian's GPL-3, in blocks of 256), against ShortGPT at equal
saved size (block influence on 2048 train tokens of that domain, as the demo).
ShortGPT and the teacher are computed once per domain and cached in
OUT/shortgpt-<domain>.json. Writes OUT/scores.jsonl, one row per (student,
order, domain). Where bench/recipe_sweep.py runs whole demo pipelines, this
re-scores students already trained (e.g. under another order) without training.

    python bench/recipe_score.py OUT [--orders first-last,auto] [--domains code,prose] [name ...]

Calibrated orders are read from OUT/fam-<name>/family.json (built by `boomerang family`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from boomerang_cli.arch import ModelInfo
from boomerang_cli.evaluate.baselines import block_influence, shortgpt_layers
from boomerang_cli.forward.perplexity import load_eval_data
from boomerang_cli.models import load_model, load_tokenizer
from boomerang_cli.evaluate.stacks import stack_perplexities
from boomerang_cli.evaluate.score import score_family
from boomerang_cli.forward.trunk import LayerRunner, Stack
from boomerang_cli.models import model_from_composition
from boomerang_cli.compose import compose
from boomerang_cli.demo import DemoConfig
from boomerang_cli.manifest import FamilyManifest
from boomerang_cli.member import Member
from boomerang_cli.orders.names import CALIBRATED_ORDERS, sequential_members
from boomerang_cli.orders.search import result_from_order_info
from boomerang_cli.refs import resolve
from boomerang_cli.student import student_plan

SEQ_LEN, MAX_TOKENS, CALIB_TOKENS = 256, 4096, 2048
DOMAINS = {d.name: d for d in DemoConfig(output=Path(".")).domains()}


def builder(infos):
    """A stack as a standalone model (the trunk checks its first batch against one)."""
    return lambda s: model_from_composition(
        compose(infos, s.layers, s.embed_from, s.head_from), torch.float32, torch.device("cpu")
    )


def shortgpt_rows(out: Path, domain: str, t_info, t_runner, tok, data) -> list[dict]:
    """The teacher and ShortGPT at every depth on ``domain``, computed once and cached."""
    cache = out / f"shortgpt-{domain}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    d = DOMAINS[domain]
    L = t_info.arch.num_layers
    calib = load_eval_data(list(d.sources), "train", tok, SEQ_LEN, CALIB_TOKENS, "text")
    influence = block_influence(t_runner, calib, 8)
    stacks = {"teacher": Stack.whole("teacher", L)}
    for n in range(L // 2, L):
        stacks[f"shortgpt-{n:02d}L"] = Stack.of_layers("teacher", shortgpt_layers(influence, n))
    res, _ = stack_perplexities(
        stacks, {"teacher": t_runner}, data, 8, builder({"teacher": t_info}), trunk=True, dtype=torch.float32
    )
    base = [
        {
            "name": k,
            "kind": "teacher" if k == "teacher" else "baseline",
            "method": "shortgpt",
            "num_layers": len(s.layers),
            "num_params": compose({"teacher": t_info}, s.layers, "teacher", "teacher").num_params,
            "ppl": res[k].ppl,
        }
        for k, s in stacks.items()
    ]
    cache.write_text(json.dumps(base, indent=1))
    return base


def members_of(out: Path, name: str, plan, order: str) -> list[Member] | None:
    """The members ``order`` gives this student's plan (None: a calibrated order with no family built)."""
    if order in CALIBRATED_ORDERS:
        mpath = out / f"fam-{name}" / "family.json"
        if not mpath.exists():
            print(f"{name}: no {mpath}, skipping {order}", flush=True)
            return None
        man = FamilyManifest.read(mpath)
        # The student itself always ends the family (a member as deep may stand beside it).
        members = [Member(plan, frozenset())] + result_from_order_info(plan, man.order).members()
        members = list(dict.fromkeys(members))
    else:
        members = sequential_members(plan, order)
    return [m for m in members if not m.is_teacher]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("names", nargs="*")
    ap.add_argument("--orders", default="first-last")
    ap.add_argument("--domains", default=",".join(DOMAINS))
    args = ap.parse_intermixed_args()
    out: Path = args.out
    t_info = ModelInfo.load(resolve("smollm2-135m").path)
    tok = load_tokenizer(t_info.path)
    teacher = load_model(t_info, torch.float32, torch.device("cpu"))
    t_runner = LayerRunner(teacher, t_info.arch.layers_path)
    L = t_info.arch.num_layers
    names = args.names or [p.name for p in sorted(out.iterdir()) if (p / "boomerang.json").exists()]
    for domain in args.domains.split(","):
        d = DOMAINS[domain]
        data = load_eval_data(list(d.sources), d.split, tok, SEQ_LEN, MAX_TOKENS, "text")
        base = shortgpt_rows(out, domain, t_info, t_runner, tok, data)
        for name in names:
            sdir = out / name
            s_info = ModelInfo.load(sdir)
            plan, _ = student_plan(sdir, L)
            infos = {"teacher": t_info, "student": s_info}
            student = load_model(s_info, torch.float32, torch.device("cpu"))
            runners = {"teacher": t_runner, "student": LayerRunner(student, s_info.arch.layers_path)}
            for order in args.orders.split(","):
                members = members_of(out, name, plan, order)
                if members is not None:
                    score(out, name, order, domain, members, infos, runners, data, base)


def score(
    out: Path, name: str, order: str, domain: str, members: list[Member], infos, runners, data, base: list[dict]
) -> None:
    t0 = time.perf_counter()
    stacks = {("student" if m.is_student else m.name): Stack.of_member(m) for m in members}
    res, _ = stack_perplexities(stacks, runners, data, 8, builder(infos), trunk=True, dtype=torch.float32)
    rows = list(base)
    for m in members:
        key = "student" if m.is_student else m.name
        comp = m.composition(infos)
        rows.append(
            {
                "name": key,
                "kind": "student" if m.is_student else "member",
                "method": None,
                "num_layers": m.num_layers,
                "num_params": comp.num_params,
                "tied": comp.tied,
                "teacher_blocks": sorted(m.teacher_blocks),
                "ppl": res[key].ppl,
            }
        )
    sc = score_family(rows)
    row = {
        "name": name,
        "order": order,
        "domain": domain,
        "seconds": round(time.perf_counter() - t0, 1),
        "geomean_ratio": sc.geomean_ratio,
        "wins": sc.wins,
        "sizes": sc.sizes,
        "increases": sc.increases,
        "within_range": sc.within_range,
        "student_ppl": res["student"].ppl,
        "rows": [r for r in rows if r["kind"] != "baseline"],
        "increase_detail": sc.increase_detail,
    }
    with open(out / "scores.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "rows"}), flush=True)


if __name__ == "__main__":
    main()
