"""``boomerang demo``: the whole pipeline on the embedded teacher, resumable stage by stage.

init-student + distill (one stage: the student is initialized in memory and
trained with the ``short`` recipe, embeddings frozen so members stay tied),
family (all members of the ``auto`` order, calibrated on the training text),
eval with the ShortGPT baseline on two held-out domains, a plot for each, and
a summary judged as a user would: every member's saved size lies between
student and teacher, perplexity never increases as members grow, and every
member beats ShortGPT pruning at equal parameter count
(:mod:`boomerang_cli.evaluate.score`), on the held-out code of the training
corpus *and* on English prose no run trains on (:data:`DEFAULT_PROSE`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .distill.weights import LossWeights
from .errors import BoomerangError
from .evaluate.score import family_order, score_family
from .progress import NULL, Progress
from .refs import DEFAULT_TEACHER
from .atomic import atomic_write_text

STAGES = ("distill", "family", "eval")
DEMO_JSON = "demo.json"


#: English prose the demo is judged on beside the held-out code: the GPL-3 text Debian's base-files
#: ships, in no training corpus of the demo (stdlib code and docstrings). All of it, one document.
DEFAULT_PROSE = "/usr/share/common-licenses/GPL-3"
#: The demo's training text: stdlib code and its English (docstrings, pydoc topics), 3:1 by characters,
#: each in file order: the issue-22 sweep's best on code and prose together (docs/results.md).
DEFAULT_DATA = ("stdlib", "stdlib-docs")
DEFAULT_DATA_WEIGHTS = (3.0, 1.0)


@dataclass(frozen=True)
class Domain:
    """Held-out text a family is judged on: a name for checks and plots, the sources and their split."""

    name: str
    sources: tuple[str, ...]
    split: str

    @property
    def plot_name(self) -> str:
        return "family.png" if self.name == "code" else f"family-{self.name}.png"


@dataclass
class DemoConfig:
    """A small default budget: 40 steps of 8 x 128 tokens, 4096 held-out tokens of each domain."""

    output: Path
    teacher: str = DEFAULT_TEACHER
    data: tuple[str, ...] = DEFAULT_DATA  # the training text
    # each source's share (distill --data-weights); None: DEFAULT_DATA_WEIGHTS for DEFAULT_DATA, other
    # data read one source after the other
    data_weights: tuple[float, ...] | None = None
    shuffle: bool = False  # distill --shuffle (the order drawn from seed)
    steps: int = 40
    seq_len: int = 128
    batch_size: int = 8
    recipe: str = "short"  # the sweep's winner at this budget (docs/results.md)
    mix: float | None = None  # distill --mix; None: the recipe's
    lr: float | None = None  # None: the recipe's (as are warmup and weights)
    warmup: float | None = None
    weights: LossWeights | None = None
    order: str = "auto"  # per size the lowest-KL member of kl-dp, first-last and last-first
    calib_samples: int = 4  # calibration sequences for the order (train split of the data): 512 tokens
    calib_seq_len: int = 128
    eval_data: str = "stdlib"  # the code domain: its held-out (validation) split
    prose_data: str | None = DEFAULT_PROSE  # the second domain (all of it); None: judge on code only
    eval_tokens: int = 4096
    eval_seq_len: int = 256
    calibration_tokens: int = 2048  # ShortGPT's block influence
    baselines: tuple[str, ...] = ("shortgpt",)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.data_weights is None and tuple(self.data) == DEFAULT_DATA:
            self.data_weights = DEFAULT_DATA_WEIGHTS

    def domains(self) -> list[Domain]:
        """Code (held-out split of ``eval_data``), then prose (all of ``prose_data``) when given."""
        out = [Domain("code", (self.eval_data,), "validation")]
        if self.prose_data:
            out.append(Domain("prose", (self.prose_data,), "all"))
        return out

    def check(self) -> None:
        """Every setting that needs no model, before any work (one line naming the flag, exit 2)."""
        from .orders.calibration import check_sizes
        from .data import check_weights
        from .distill.recipes import check_mix, get_recipe
        from .orders.names import check_order

        for name in ("steps", "seq_len", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise BoomerangError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        get_recipe(self.recipe)
        check_order(self.order)
        check_sizes(self.calib_samples, self.calib_seq_len)
        check_weights(self.data, self.data_weights)
        check_mix(self.mix)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output)
        for key in ("baselines", "data", "data_weights"):
            d[key] = list(d[key]) if d[key] is not None else None
        d["weights"] = self.weights.to_json() if self.weights else None
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
    plot: str  # the code domain's plot
    stages: dict[str, str]  # stage -> "ran" | "resumed" | "skipped (done)"
    seconds: dict[str, float]
    rows: list[dict[str, Any]]  # the code domain's rows
    checks: list[Check] = field(default_factory=list)  # the code domain's, then each other domain's, prefixed
    distill: dict[str, Any] | None = None
    domains: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # rows of every domain, by name
    plots: dict[str, str] = field(default_factory=dict)  # plot of every domain, by name

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
        Check(
            "every member's saved size lies between student and teacher",
            first.within_range,
            "; ".join(first.outside) if first.outside else f"{n} models",
        ),
        Check(
            "perplexity never increases as members grow",
            not first.increases,
            "; ".join(first.increase_detail) if first.increases else f"{n} models, student to teacher",
        ),
    ]
    for method, sc in scores.items():
        losses = [f"{v.name} {v.ppl:.3g} vs {v.baseline_ppl:.3g}" for v in sc.per_size if not v.wins]
        curve = any(r["kind"] == "baseline" and r.get("method") == method for r in rows)
        detail = (
            f"{sc.wins} of {sc.sizes} sizes, perplexity {sc.geomean_ratio:.3f}x {method}'s (geometric mean)"
            if curve and sc.geomean_ratio is not None
            else "nothing compared"
        )
        checks.append(
            Check(
                f"every member beats {method} at equal parameter count",
                curve and not losses and sc.sizes > 0,
                detail + (": " + "; ".join(losses) if losses and curve else ""),
            )
        )
    return checks


def run_demo(cfg: DemoConfig, progress: Progress = NULL) -> DemoResult:
    """Run (or resume) every stage into ``cfg.output``."""
    import time

    from .evaluate.plot import require_matplotlib
    from .refs import resolve
    from .state import record

    require_matplotlib()
    cfg.check()
    domains = _check_domains(cfg)
    out = Path(cfg.output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    student, fam_dir = out / "student", out / "family"
    manifest = fam_dir / "family.json"
    stages: dict[str, str] = {}
    seconds: dict[str, float] = {}
    teacher = resolve(cfg.teacher).ref

    t0 = time.perf_counter()
    stages["distill"], distill_summary = _distill_stage(cfg, teacher, student, out / "student-checkpoints", progress)
    seconds["distill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stages["family"] = _family_stage(cfg, teacher, student, fam_dir, progress)
    seconds["family"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary_path = out / DEMO_JSON
    plots = {d.name: out / d.plot_name for d in domains}
    previous = _previous(summary_path, cfg)
    if (
        previous is not None
        and "ran" not in (stages["distill"], stages["family"])
        and all(p.exists() for p in plots.values())
        and set(previous.get("domains") or {}) == set(plots)
    ):
        by_domain = previous["domains"]
        stages["eval"] = "skipped (done)"
    else:
        by_domain = {d.name: _eval_domain(cfg, d, manifest, plots[d.name], teacher, progress) for d in domains}
        stages["eval"] = "ran"
    seconds["eval"] = time.perf_counter() - t0
    record(student=student, family=manifest)
    if not all(by_domain.values()):
        raise BoomerangError("evaluation produced no results")
    checks = [c for d in domains for c in _named(paper_checks(by_domain[d.name], cfg.baselines), d, domains)]
    result = DemoResult(
        str(out),
        str(student),
        str(fam_dir),
        str(manifest),
        str(plots["code"]),
        stages,
        seconds,
        by_domain["code"],
        checks,
        distill_summary,
        by_domain,
        {k: str(v) for k, v in plots.items()},
    )
    atomic_write_text(summary_path, json.dumps({"config": cfg.to_json(), "result": result.to_json()}, indent=2) + "\n")
    return result


def _check_domains(cfg: DemoConfig) -> list[Domain]:
    """The domains to judge on; a prose text that is missing is refused before any work."""
    from .data import check_source

    for d in cfg.domains():
        for source in d.sources:
            if d.name == "prose" and not Path(source).expanduser().exists():
                raise BoomerangError(
                    f"--prose-data {source}: no such file; pass an English text file to judge "
                    "the family on beside code, or --no-prose to judge on code only"
                )
            check_source(source)
    return cfg.domains()


def _named(checks: list[Check], domain: Domain, domains: list[Domain]) -> list[Check]:
    """A domain's checks, named after it when there are several (the code domain's keep their names)."""
    if domain.name == "code" or len(domains) == 1:
        return checks
    return [Check(f"{domain.name}: {c.name}", c.passed, c.detail) for c in checks]


def _distill_stage(
    cfg: DemoConfig, teacher: str, student: Path, ckpt: Path, progress: Progress
) -> tuple[str, dict[str, Any] | None]:
    """Distill the student (or resume it, or skip it when done): the stage's state and the run's summary."""
    from .distill import DistillConfig, distill

    if _trained(student):
        return "skipped (done)", None
    resume = ckpt.is_dir() and any(ckpt.glob("step-*"))
    dcfg = DistillConfig(
        teacher=teacher,
        output=student,
        data=list(cfg.data),
        seq_len=cfg.seq_len,
        data_weights=list(cfg.data_weights) if cfg.data_weights else None,
        shuffle=cfg.shuffle,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        recipe=cfg.recipe,
        seed=cfg.seed,
        mix=cfg.mix,
        lr=cfg.lr,
        warmup=cfg.warmup,
        weights=cfg.weights,
        save_every=max(cfg.steps // 6, 1),
        checkpoint_dir=ckpt,
        resume=resume,
        eval_every=0,
        overwrite=student.exists() and not _trained(student),
    )
    summary = distill(dcfg, progress).to_json()
    return ("resumed" if resume else "ran"), summary


def _family_stage(cfg: DemoConfig, teacher: str, student: Path, fam_dir: Path, progress: Progress) -> str:
    """Every member; a calibrated order on the training split of the distillation text (in its
    proportions), its search reused from the manifest on a rerun."""
    from .family.run import FamilyRequest, make_family

    fam = make_family(
        FamilyRequest(
            teacher,
            str(student),
            fam_dir,
            all_members=True,
            order=cfg.order,
            calib_samples=cfg.calib_samples,
            calib_seq_len=cfg.calib_seq_len,
        ),
        progress,
    )
    assert fam.result is not None  # not a dry run
    return "ran" if fam.result.written else "skipped (done)"


def _eval_domain(
    cfg: DemoConfig, domain: Domain, manifest: Path, plot: Path, teacher: str, progress: Progress
) -> list[dict[str, Any]]:
    """Perplexity of every model and baseline on one domain (recorded in the manifest), and its plot."""
    from .evaluate.family import evaluate_family
    from .evaluate.options import EvalOptions
    from .evaluate.plot import plot_results

    opts = EvalOptions(
        sources=list(domain.sources),
        split=domain.split,
        max_tokens=cfg.eval_tokens,
        seq_len=cfg.eval_seq_len,
        baselines=list(cfg.baselines),
        calibration_tokens=cfg.calibration_tokens,
    )
    report = evaluate_family(manifest, opts, progress=progress)
    rows = [r.plot_point() | {"num_layers": r.num_layers} for r in report.rows]
    plot_results(
        [r.plot_point() for r in report.rows],
        plot,
        title=f"{Path(teacher).name} boomerang family ({cfg.steps} distill steps, {cfg.order}): {domain.name}",
        data_key=report.data["key"] if report.data else None,
    )
    return rows


def _previous(path: Path, cfg: DemoConfig) -> dict[str, Any] | None:
    """The summary of an earlier finished run with the same settings, if any."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("config") != cfg.to_json():
        return None
    return data.get("result")
