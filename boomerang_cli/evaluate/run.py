"""``boomerang eval`` end to end, as one call: the flags' rules, the targets, one writer, evaluate, plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import BoomerangError
from .options import EvalOptions, EvalReport


def eval_targets(targets: Sequence[str]) -> tuple[str, Any]:
    """``("family", path)`` for one manifest (or the last family built here), else ``("models", refs)``."""
    from ..manifest import MANIFEST_NAME
    from ..state import last

    if not targets:
        recorded = last("family")
        if recorded is None:
            raise BoomerangError(
                "no TARGET given and no `boomerang family` recorded here; pass a family.json (or its "
                "directory) or model references"
            )
        return "family", Path(recorded)
    manifests = [
        t
        for t in targets
        if (Path(t).expanduser().is_file() and t.endswith(".json")) or (Path(t).expanduser() / MANIFEST_NAME).is_file()
    ]
    if manifests:
        if len(targets) > 1:
            raise BoomerangError(
                f"{manifests[0]} is a family manifest; evaluate one family at a time, or give only model references"
            )
        return "family", Path(manifests[0]).expanduser()
    return "models", list(targets)


@dataclass
class EvalRequest:
    """What ``eval`` is asked, as given: ``options`` holds the measurement, the rest what and where.

    ``baselines`` may name ``prune`` (every pruning method); ``compare_orders`` and ``members`` are
    comma-separated (None: not given; given empty: refused). ``targets`` empty: the last family built here.
    """

    targets: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # EvalOptions fields but the ones below
    dtype: str = "fp32"
    tasks: str | None = None
    baselines: list[str] = field(default_factory=list)
    compare_orders: str | None = None
    members: str | None = None
    output: Path | None = None  # results JSON of plain models
    plot: Path | None = None


def baseline_methods(names: Sequence[str]) -> list[str]:
    """``--baseline`` values as methods: ``prune`` is every one of them."""
    from .baselines import METHODS

    methods: list[str] = []
    for b in names:
        if b == "prune":
            methods.extend(METHODS)
        elif b in METHODS:
            methods.append(b)
        else:
            raise BoomerangError(f"unknown --baseline {b!r}; use prune, {' or '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def run_eval(req: EvalRequest, progress: Any = None) -> EvalReport:
    """Check every flag, then evaluate the family or the models (one writer per output) and plot."""
    from ..family.open import manifest_file
    from ..guard import lock_if
    from ..progress import NULL
    from .family import evaluate_family
    from .plain import evaluate_models
    from .results import DEFAULT_RESULTS

    from ..tensors import parse_dtype
    from .lmeval import parse_tasks

    methods = baseline_methods(req.baselines)
    order_list = _split(req.compare_orders) if req.compare_orders else []
    if req.compare_orders is not None and not order_list:
        raise BoomerangError("--compare-orders is empty; name orders like --compare-orders last-first,kl-greedy")
    opts = EvalOptions(
        **req.options,
        dtype=parse_dtype(req.dtype),
        tasks=parse_tasks(req.tasks),
        baselines=methods,
        compare_orders=list(dict.fromkeys(order_list)),
        plot=req.plot,
    )
    opts.check()
    if opts.task_dir is not None and not opts.tasks:
        raise BoomerangError("--task-dir adds task files; name the tasks to run with --tasks")
    if req.plot is not None:
        from .plot import require_matplotlib

        if req.plot.suffix.lower() != ".png":
            raise BoomerangError(f"--plot {req.plot}: write a .png file")
        require_matplotlib()  # before minutes of evaluation, not after
    kind, target = eval_targets(req.targets)
    if kind == "models" and req.members:
        raise BoomerangError("--members selects members of a family; give a family manifest")
    if kind == "models" and opts.compare_orders:
        raise BoomerangError(
            "--compare-orders builds members of a family's teacher and student; give a family manifest"
        )
    if kind == "family" and req.output is not None:
        raise BoomerangError("a family's results go into its manifest; -o is for plain model references")
    member_list = _split(req.members) if req.members else None
    if kind == "family" and req.members is not None and not member_list:
        raise BoomerangError("--members is empty; name members like --members member-18L,teacher")
    progress = NULL if progress is None else progress
    # One writer per output: the family's directory (its manifest gets the results) or the results file.
    with lock_if(manifest_file(target).parent if kind == "family" else req.output or Path(DEFAULT_RESULTS)):
        if kind == "family":
            report = evaluate_family(target, opts, member_list, progress=progress)
        else:
            report = evaluate_models(target, opts, req.output, progress=progress)
        if req.plot is not None:
            _plot(report, req.plot, opts.metric)
    return report


def _split(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _plot(report: EvalReport, path: Path, metric: str) -> None:
    from .options import METRIC_LABELS
    from .plot import plot_results

    title = (
        f"family {Path(report.target).parent.name}" if report.kind == "family" else "models"
    ) + f" ({report.dtype})"
    if report.orders:
        title += ": patch orders compared"
    plot_results(
        [r.plot_point(metric) for r in report.rows],
        path,
        title=title,
        data_key=report.data["key"] if report.data else None,
        tasks=report.tasks,
        by_layers=bool(report.orders),
        metric_label=METRIC_LABELS[metric],
    )
