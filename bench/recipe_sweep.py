"""Sweep distillation settings at the demo's budget (docs/results.md, "Recipes for small budgets").

Phase ``distill``: one student per setting (40 steps of 8 x 128 stdlib tokens, seed 0,
the demo's budget), each into OUT/<name>. Phase ``eval`` (bench/recipe_score.py)
scores each student's family against ShortGPT at equal saved size.

    python bench/recipe_sweep.py OUT [name ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from boomerang_cli.distill.losses import LossWeights
from boomerang_cli.distill import DistillConfig, distill

BUDGET = dict(teacher="smollm2-135m", data=["stdlib"], steps=40, seq_len=128, batch_size=8, seed=0, save_every=0)

SETTINGS: dict[str, dict] = {
    "lr1e-3-w5-frozen": dict(lr=1e-3, warmup=0.05, freeze_embeddings=True),
    "paper-frozen": dict(recipe="paper", freeze_embeddings=True),
    "lr1e-3-w5-trained": dict(lr=1e-3, warmup=0.05, freeze_embeddings=False),
    "lr2e-3-w5-frozen": dict(lr=2e-3, warmup=0.05, freeze_embeddings=True),
    "lr1e-3-w5-kl1-frozen": dict(lr=1e-3, warmup=0.05, freeze_embeddings=True, weights=LossWeights(kl=1.0)),
    "lr1e-3-w5-noce-frozen": dict(lr=1e-3, warmup=0.05, freeze_embeddings=True,
                                  weights=LossWeights(ce=0.0, kl=1.0)),
    "lr1e-3-w5-cos5-frozen": dict(lr=1e-3, warmup=0.05, freeze_embeddings=True, weights=LossWeights(cosine=5.0)),
    "paper-trained": dict(recipe="paper", freeze_embeddings=False),
}


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(SETTINGS)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = out / name
        if (target / "boomerang.json").exists():
            print(f"{name}: done already", flush=True)
            continue
        t0 = time.perf_counter()
        cfg = DistillConfig(output=target, **BUDGET, **SETTINGS[name])
        result = distill(cfg)
        row = {"name": name, "seconds": round(time.perf_counter() - t0, 1), "final": result.final,
               "tokens": result.tokens, "tokens_per_s": result.tokens_per_s, "config": SETTINGS[name] | {}}
        row["config"] = {k: (v.to_json() if isinstance(v, LossWeights) else v) for k, v in row["config"].items()}
        with open(out / "distill.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
