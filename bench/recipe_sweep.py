"""Sweep distillation settings at the demo's budget, each judged on two domains (issue #22).

Every point is the demo's pipeline (`boomerang_cli.demo.run_demo`: 40 steps of
8 x 128 tokens, frozen embeddings, the `auto` order on 4 x 128 calibration
tokens of the training text) with one setting changed, judged against ShortGPT
at equal saved size on **code** (4096 held-out stdlib tokens in blocks of 256)
and on **prose** (Debian's GPL-3, all of it, 4096 tokens in blocks of 256;
never trained on). A point records, per domain, wins, perplexity increases
along the family and the geometric mean of member/ShortGPT perplexity.

    python bench/recipe_sweep.py OUT [NAME ...] [--seeds 0,1,2] [--list | --table]

Each (setting, seed) runs into OUT/NAME/seed-K (resumable: a finished point is
read back, an interrupted one continues from its checkpoints); every finished
point is appended to OUT/points.jsonl, and a Markdown table of all points is
printed. Member weights are deleted once a point is judged (`--keep-weights`
keeps them: 5.7 GB a point). `--seed` picks the document order (`--shuffle`) and the members
`--mix` trains; a setting with neither is deterministic, so one seed is run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from boomerang_cli.demo import DemoConfig, run_demo
from boomerang_cli.distill.weights import LossWeights
from boomerang_cli.evaluate.score import score_family

DOCS = ("stdlib", "stdlib-docs")

#: name -> DemoConfig overrides. The demo's recipe before issue #22 is `control`.
SETTINGS: dict[str, dict[str, Any]] = {
    "control": dict(data=("stdlib",)),
    "shuffle": dict(data=("stdlib",), shuffle=True),
    "docs50": dict(data=DOCS, data_weights=(1, 1), shuffle=True),
    "docs25": dict(data=DOCS, data_weights=(3, 1), shuffle=True),
    "docs75": dict(data=DOCS, data_weights=(1, 3), shuffle=True),
    "docs50-mix50": dict(data=DOCS, data_weights=(1, 1), shuffle=True, mix=0.5),
    "docs50-mix25": dict(data=DOCS, data_weights=(1, 1), shuffle=True, mix=0.25),
    "docs50-mix75": dict(data=DOCS, data_weights=(1, 1), shuffle=True, mix=0.75),
    "docs50-mix100": dict(data=DOCS, data_weights=(1, 1), shuffle=True, mix=1.0),
    "shuffle-mix50": dict(shuffle=True, mix=0.5),
    "docs50-ordered": dict(data=DOCS, data_weights=(1, 1)),
    "docs75-ordered": dict(data=DOCS, data_weights=(1, 3)),
    "docs25-ordered": dict(data=DOCS, data_weights=(3, 1)),
    "docs50-ordered-mix50": dict(data=DOCS, data_weights=(1, 1), mix=0.5),
    "docs50-ordered-mix100": dict(data=DOCS, data_weights=(1, 1), mix=1.0),
    "docs50-kl1": dict(data=DOCS, data_weights=(1, 1), shuffle=True, weights=LossWeights(kl=1.0)),
    "docs50-noce": dict(data=DOCS, data_weights=(1, 1), shuffle=True, weights=LossWeights(ce=0.0, kl=1.0)),
    "docs50-cos5": dict(data=DOCS, data_weights=(1, 1), shuffle=True, weights=LossWeights(cosine=5.0)),
    "docs50-cos0": dict(data=DOCS, data_weights=(1, 1), shuffle=True, weights=LossWeights(cosine=0.0)),
    "docs50-t2": dict(data=DOCS, data_weights=(1, 1), shuffle=True, weights=LossWeights(kl=1.0, temperature=2.0)),
    "docs50-lr2e-3": dict(data=DOCS, data_weights=(1, 1), shuffle=True, lr=2e-3),
    "docs50-w20": dict(data=DOCS, data_weights=(1, 1), shuffle=True, warmup=0.2),
    "docs50-calib16": dict(data=DOCS, data_weights=(1, 1), shuffle=True, calib_samples=16, reuse="docs50"),
    "control-calib16": dict(data=("stdlib",), calib_samples=16, reuse="control"),
}


def seeded(settings: dict[str, Any]) -> bool:
    """Whether --seed changes anything for this setting (a shuffled order, or members drawn)."""
    return bool(settings.get("shuffle") or settings.get("mix"))


def judge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sc = score_family(rows, "shortgpt")
    student = next(r["ppl"] for r in rows if r["kind"] == "student")
    teacher = next(r["ppl"] for r in rows if r["kind"] == "teacher")
    return {
        "wins": sc.wins,
        "sizes": sc.sizes,
        "increases": sc.increases,
        "increase_detail": sc.increase_detail,
        "geomean": sc.geomean_ratio,
        "student_ppl": student,
        "teacher_ppl": teacher,
        "losses": [f"{v.name} {v.ppl:.4g} vs {v.baseline_ppl:.4g}" for v in sc.per_size if not v.wins],
        "per_size": [
            {"name": v.name, "layers": v.num_layers, "ppl": v.ppl, "shortgpt": v.baseline_ppl} for v in sc.per_size
        ],
    }


def run_point(out: Path, name: str, seed: int, keep_weights: bool = False) -> dict[str, Any]:
    settings = dict(SETTINGS[name])
    reuse = settings.pop("reuse", None)  # a setting that changes only the family: that setting's student
    cfg = DemoConfig(output=out / name / f"seed-{seed}", seed=seed, **settings)
    if reuse and not (cfg.output / "student").exists():
        src = out / reuse / f"seed-{seed}" / "student"
        if not (src / "boomerang.json").exists():
            run_point(out, reuse, seed)
        shutil.copytree(src, cfg.output / "student")
    t0 = time.perf_counter()
    result = run_demo(cfg)
    if not keep_weights:  # 14 members of 0.4 GB a point: the records (family.json, demo.json) are what stays
        for f in (cfg.output / "family").rglob("*.safetensors"):
            f.unlink()
    point = {
        "name": name,
        "seed": seed,
        "settings": cfg.to_json(),
        "seconds": round(time.perf_counter() - t0, 1),
        "stage_seconds": {k: round(v, 1) for k, v in result.seconds.items()},
        "final_losses": (result.distill or {}).get("final"),
        "domains": {d: judge(rows) for d, rows in result.domains.items()},
    }
    return point


def table(points: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | seed | code wins | code incr. | code geomean | prose wins | prose incr. | prose geomean "
        "| student ppl code / prose |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        c, r = p["domains"]["code"], p["domains"]["prose"]
        lines.append(
            f"| {p['name']} | {p['seed']} | {c['wins']}/{c['sizes']} | {c['increases']} | "
            f"{c['geomean']:.3f} | {r['wins']}/{r['sizes']} | {r['increases']} | {r['geomean']:.3f} | "
            f"{c['student_ppl']:.1f} / {r['student_ppl']:.1f} |"
        )
    return "\n".join(lines)


def spread(points: list[dict[str, Any]], name: str) -> str:
    """min-max over the seeds of one setting, per domain."""
    ps = [p for p in points if p["name"] == name]
    parts = []
    for d in ("code", "prose"):
        js = [p["domains"][d] for p in ps]
        g = [j["geomean"] for j in js]
        parts.append(
            f"{d}: wins {min(j['wins'] for j in js)}-{max(j['wins'] for j in js)}, increases "
            f"{min(j['increases'] for j in js)}-{max(j['increases'] for j in js)}, geomean "
            f"{min(g):.3f}-{max(g):.3f} (mean {math.fsum(g) / len(g):.3f})"
        )
    return f"{name} over {len(ps)} seeds: " + "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("names", nargs="*")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--list", action="store_true", help="the settings, and nothing run")
    ap.add_argument("--table", action="store_true", help="the table of the points run so far, and nothing run")
    ap.add_argument("--keep-weights", action="store_true", help="keep each family's member weights (0.4 GB each)")
    args = ap.parse_args()
    if args.list:
        print("\n".join(SETTINGS))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "points.jsonl"
    done = {(p["name"], p["seed"]): p for p in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    for name in [] if args.table else args.names or list(SETTINGS):
        seeds = [int(s) for s in args.seeds.split(",")] if seeded(SETTINGS[name]) else [0]
        for seed in seeds:
            if (name, seed) in done:
                continue
            point = run_point(args.out, name, seed, args.keep_weights)
            done[(name, seed)] = point
            with open(log, "a") as f:
                f.write(json.dumps(point) + "\n")
            c, r = point["domains"]["code"], point["domains"]["prose"]
            print(
                f"{name} seed {seed}: code {c['wins']}/{c['sizes']} incr {c['increases']} g {c['geomean']:.3f}; "
                f"prose {r['wins']}/{r['sizes']} incr {r['increases']} g {r['geomean']:.3f} "
                f"({point['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    points = list(done.values())
    print(table(points))
    for name in dict.fromkeys(p["name"] for p in points):
        if sum(p["name"] == name for p in points) > 1:
            print(spread(points, name))


if __name__ == "__main__":
    main()
