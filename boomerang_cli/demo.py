"""``boomerang demo``: the whole pipeline on the embedded teacher, resumable stage by stage.

init-student + distill (one stage: the student is initialized in memory and
trained), family (all members), eval with both pruning baselines, the plot,
and a summary that states whether the family behaves as the paper claims:
perplexity never increases as members grow, and every member beats both
training-free pruning baselines at its layer count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BoomerangError
from .progress import NULL, Progress
from .refs import DEFAULT_TEACHER
from .tensors import atomic_write_text

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
    lr: float = 3e-4
    order: str = "first-last"  # the paper's order for Llama models (SmolLM2 is one)
    eval_tokens: int = 4096
    eval_seq_len: int = 256
    calibration_tokens: int = 2048
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
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


def paper_checks(rows: list[dict[str, Any]]) -> list[Check]:
    """Monotone perplexity along the family, and members against baselines at equal depth."""
    # Along the family: student, members by depth, teacher last (a member as deep as the
    # teacher, first-last's last, comes before it, whatever its parameter count).
    rank = {"student": 0, "member": 1, "teacher": 2}
    fam = sorted((r for r in rows if r["kind"] in rank and r.get("ppl") is not None),
                 key=lambda r: (rank[r["kind"]], r["num_layers"], r["num_params"]))
    bad = [f"{a['name']} {a['ppl']:.3g} -> {b['name']} {b['ppl']:.3g}"
           for a, b in zip(fam, fam[1:]) if b["ppl"] > a["ppl"]]
    checks = [Check("perplexity never increases as members grow", not bad,
                    "; ".join(bad) if bad else f"{len(fam)} models, student to teacher")]
    by_layers = {r["num_layers"]: r for r in fam if r["kind"] in ("member", "student")}
    for method in ("shortgpt", "plan-prune"):
        losses, n = [], 0
        for r in rows:
            if r["kind"] != "baseline" or r.get("method") != method or r.get("ppl") is None:
                continue
            m = by_layers.get(r["num_layers"])
            if m is None:
                continue
            n += 1
            if not m["ppl"] < r["ppl"]:
                losses.append(f"{m['name']} {m['ppl']:.3g} vs {r['name']} {r['ppl']:.3g}")
        checks.append(Check(f"every member beats {method} at its layer count", n > 0 and not losses,
                            "; ".join(losses) if losses else f"{n} sizes compared"))
    return checks


def run_demo(cfg: DemoConfig, progress: Progress = NULL) -> DemoResult:
    """Run (or resume) every stage into ``cfg.output``."""
    import time

    from .distill.train import DistillConfig, distill
    from .evaluate.plot import plot_results, require_matplotlib
    from .evaluate.runner import EvalOptions, evaluate_family
    from .family import achievable, build_family, open_pair, select
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
            batch_size=cfg.batch_size, steps=cfg.steps, lr=cfg.lr, seed=cfg.seed,
            save_every=max(cfg.steps // 6, 1), checkpoint_dir=ckpt, resume=resume, eval_every=0,
            overwrite=student.exists() and not _trained(student),
        )
        distill_summary = distill(dcfg, progress).to_json()
        stages["distill"] = "resumed" if resume else "ran"
    seconds["distill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pair = open_pair(teacher, resolve(str(student)))
    cands = [c for c in achievable(pair, cfg.order) if not (c.member.is_student or c.member.is_teacher)]
    picks = select(cands, all_members=True, student_params=pair.entry("student").num_params,
                   teacher_params=pair.entry("teacher").num_params)
    res = build_family(pair, picks, fam_dir, order=cfg.order, progress=progress)
    stages["family"] = "ran" if res.written else "skipped (done)"
    seconds["family"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary_path = out / DEMO_JSON
    previous = _previous(summary_path, cfg)
    if previous is not None and stages["distill"] != "ran" and stages["family"] != "ran" and plot.exists():
        rows = previous["rows"]
        stages["eval"] = "skipped (done)"
    else:
        opts = EvalOptions(sources=[cfg.data], max_tokens=cfg.eval_tokens, seq_len=cfg.eval_seq_len,
                           baselines=["shortgpt", "plan-prune"], calibration_tokens=cfg.calibration_tokens)
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
                        rows, paper_checks(rows), distill_summary)
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
