"""``boomerang demo``: the whole pipeline on the embedded teacher, resumable stage by stage.

init-student + distill (one stage: the student is initialized in memory and
trained with the ``short`` recipe, embeddings frozen so members stay tied),
family (all members of the ``auto`` order, calibrated on the training text),
eval with the ShortGPT baseline, the plot, and a summary judged as a user
would: every member's saved size lies between student and teacher,
perplexity never increases as members grow, and every member beats ShortGPT
pruning at equal parameter count (:mod:`boomerang_cli.evaluate.score`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BoomerangError
from .evaluate.score import family_order, score_family
from .progress import NULL, Progress
from .refs import DEFAULT_TEACHER
from .atomic import atomic_write_text

STAGES = ("distill", "family", "eval")
DEMO_JSON = "demo.json"


@dataclass
class DemoConfig:
    """A small default budget: 40 steps of 8 x 128 tokens, 4096 held-out tokens."""

    output: Path
    teacher: str = DEFAULT_TEACHER
    data: str = "stdlib"
    steps: int = 40
    seq_len: int = 128
    batch_size: int = 8
    recipe: str = "short"  # the sweep's winner at this budget (docs/results.md)
    order: str = "auto"  # per size the lowest-KL member of kl-dp, first-last and last-first
    calib_samples: int = 4  # calibration sequences for the order (train split of the data): 512 tokens
    calib_seq_len: int = 128
    eval_tokens: int = 4096
    eval_seq_len: int = 256
    calibration_tokens: int = 2048  # ShortGPT's block influence
    baselines: tuple[str, ...] = ("shortgpt",)
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
        d["baselines"] = list(self.baselines)
        return d


@dataclass
class Check:
    """A claim of the paper, checked on this run."""

    name: str
    passed: bool
    detail: str


@dataclass
class DemoResult:
    output: str
    student: str
    family: str
    manifest: str
    plot: str
    stages: dict[str, str]  # stage -> "ran" | "resumed" | "skipped (done)"
    seconds: dict[str, float]
    rows: list[dict[str, Any]]
    checks: list[Check] = field(default_factory=list)
    distill: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d


def _trained(student: Path) -> bool:
    try:
        data = json.loads((student / "boomerang.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(data.get("training"))


def paper_checks(rows: list[dict[str, Any]], methods: tuple[str, ...] = ("shortgpt", "plan-prune")) -> list[Check]:
    """Sizes within [student, teacher], monotone perplexity, and members against each baseline at
    equal saved size (SPEC section 6; a member as deep as the teacher comes before it)."""
    scores = {method: score_family(rows, method) for method in methods}
    first = scores[methods[0]]
    n = len(family_order(rows))
    checks = [
        Check("every member's saved size lies between student and teacher", first.within_range,
              "; ".join(first.outside) if first.outside else f"{n} models"),
        Check("perplexity never increases as members grow", not first.increases,
              "; ".join(first.increase_detail) if first.increases else f"{n} models, student to teacher"),
    ]
    for method, sc in scores.items():
        losses = [f"{v.name} {v.ppl:.3g} vs {v.baseline_ppl:.3g}" for v in sc.per_size if not v.wins]
        curve = any(r["kind"] == "baseline" and r.get("method") == method for r in rows)
        detail = (f"{sc.wins} of {sc.sizes} sizes, perplexity {sc.geomean_ratio:.3f}x {method}'s (geometric mean)"
                  if curve and sc.geomean_ratio is not None else "nothing compared")
        checks.append(Check(f"every member beats {method} at equal parameter count", curve and not losses and
                            sc.sizes > 0, detail + (": " + "; ".join(losses) if losses and curve else "")))
    return checks


def run_demo(cfg: DemoConfig, progress: Progress = NULL) -> DemoResult:
    """Run (or resume) every stage into ``cfg.output``."""
    import time

    from .distill import DistillConfig, distill
    from .evaluate.plot import plot_results, require_matplotlib
    from .evaluate.family import evaluate_family
    from .evaluate.options import EvalOptions
    from .family.run import FamilyRequest, make_family
    from .orders.names import CALIBRATED_ORDERS
    from .refs import resolve
    from .state import record

    require_matplotlib()
    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    student, ckpt, fam_dir = out / "student", out / "student-checkpoints", out / "family"
    manifest, plot = fam_dir / "family.json", out / "family.png"
    stages: dict[str, str] = {}
    seconds: dict[str, float] = {}
    teacher = resolve(cfg.teacher)

    t0 = time.perf_counter()
    distill_summary = None
    if _trained(student):
        stages["distill"] = "skipped (done)"
    else:
        resume = ckpt.is_dir() and any(ckpt.glob("step-*"))
        dcfg = DistillConfig(
            teacher=teacher.ref, output=student, data=[cfg.data], seq_len=cfg.seq_len,
            batch_size=cfg.batch_size, steps=cfg.steps, recipe=cfg.recipe, seed=cfg.seed,
            save_every=max(cfg.steps // 6, 1), checkpoint_dir=ckpt, resume=resume, eval_every=0,
            overwrite=student.exists() and not _trained(student),
        )
        distill_summary = distill(dcfg, progress).to_json()
        stages["distill"] = "resumed" if resume else "ran"
    seconds["distill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # Every member; a calibrated order on the training split of the distillation text, its search
    # reused from the manifest on a rerun.
    calib = (cfg.data,) if cfg.order in CALIBRATED_ORDERS else ()
    fam = make_family(FamilyRequest(teacher.ref, str(student), fam_dir, all_members=True, order=cfg.order,
                                    calib_data=calib, calib_samples=cfg.calib_samples,
                                    calib_seq_len=cfg.calib_seq_len), progress)
    assert fam.result is not None  # not a dry run
    stages["family"] = "ran" if fam.result.written else "skipped (done)"
    seconds["family"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary_path = out / DEMO_JSON
    previous = _previous(summary_path, cfg)
    if previous is not None and stages["distill"] != "ran" and stages["family"] != "ran" and plot.exists():
        rows = previous["rows"]
        stages["eval"] = "skipped (done)"
    else:
        opts = EvalOptions(sources=[cfg.data], max_tokens=cfg.eval_tokens, seq_len=cfg.eval_seq_len,
                           baselines=list(cfg.baselines), calibration_tokens=cfg.calibration_tokens)
        report = evaluate_family(manifest, opts, progress=progress)
        rows = [r.plot_point() | {"num_layers": r.num_layers} for r in report.rows]
        plot_results([r.plot_point() for r in report.rows], plot,
                     title=f"{Path(teacher.ref).name} boomerang family ({cfg.steps} distill steps, {cfg.order})",
                     data_key=report.data["key"] if report.data else None)
        stages["eval"] = "ran"
    seconds["eval"] = time.perf_counter() - t0
    record(student=student, family=manifest)
    if not rows:
        raise BoomerangError("evaluation produced no results")
    result = DemoResult(str(out), str(student), str(fam_dir), str(manifest), str(plot), stages, seconds,
                        rows, paper_checks(rows, cfg.baselines), distill_summary)
    atomic_write_text(summary_path, json.dumps({"config": cfg.to_json(), "result": result.to_json()}, indent=2) + "\n")
    return result


def _previous(path: Path, cfg: DemoConfig) -> dict[str, Any] | None:
    """The summary of an earlier finished run with the same settings, if any."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("config") != cfg.to_json():
        return None
    return data.get("result")
