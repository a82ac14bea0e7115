"""Parameters against perplexity (and task scores), members beside teacher, student and baselines."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Sequence

from ..errors import BoomerangError

#: Marker and colour per kind of row; baselines get one style per method.
STYLES: dict[str, dict[str, Any]] = {
    "member": dict(color="tab:blue", marker="o"),
    "student": dict(color="tab:green", marker="s", markersize=9),
    "teacher": dict(color="tab:red", marker="*", markersize=13),
    "model": dict(color="tab:purple", marker="D"),
    "shortgpt": dict(color="tab:orange", marker="v", linestyle="--"),
    "plan-prune": dict(color="tab:gray", marker="^", linestyle=":"),
}
#: --compare-orders: one line per order, student to teacher.
ORDER_STYLES: dict[str, dict[str, Any]] = {
    "last-first": dict(color="tab:cyan", marker="<"),
    "first-last": dict(color="tab:olive", marker=">"),
    "kl-greedy": dict(color="tab:pink", marker="P"),
    "beam": dict(color="tab:brown", marker="X"),
}


def require_matplotlib() -> None:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise BoomerangError("--plot needs matplotlib; run: pip install 'boomerang-cli[eval]'") from None


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _series(rows: Sequence[dict[str, Any]], value: Any) -> dict[str, list[tuple[float, float, str]]]:
    """Points by series: the family line (student, members, teacher), each compared order, each
    baseline method, plain models."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    ends: list[tuple[float, float, str]] = []
    for r in rows:
        y = value(r)
        if y is None:
            continue
        kind = r["kind"]
        if kind in ("baseline", "order"):
            series = (r.get("method") or kind) if kind == "baseline" else f"order:{r.get('method')}"
        else:
            series = "family" if kind in {"member", "student", "teacher"} else kind
        point = (float(r["num_params"]), float(y), r["name"])
        out.setdefault(series, []).append(point)
        if kind in ("student", "teacher"):
            ends.append(point)
    depth = {r["name"]: r.get("num_layers", 0) for r in rows}
    teachers = {r["name"] for r in rows if r["kind"] == "teacher"}
    for name, pts in out.items():
        if name.startswith("order:"):
            pts.extend(ends)  # every order runs from the student to the teacher
        if name == "family" or name.startswith("order:"):
            # Along the family: student, members by depth, teacher last. Members that store an
            # untied head can outgrow the teacher, so sorting by parameters would run through it.
            pts.sort(key=lambda p: (depth.get(p[2], 0), p[2] in teachers, p[0]))
        else:
            pts.sort()
    return out


def _panel(ax: Any, rows: Sequence[dict[str, Any]], value: Any, ylabel: str, label_points: bool) -> bool:
    series = _series(rows, value)
    if not series:
        return False
    compared = any(name.startswith("order:") for name in series)
    for name, pts in series.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if name == "family":
            # Beside compared orders, the family's own members are points on its order's line.
            ax.plot(
                xs,
                ys,
                label="members (this family)",
                **STYLES["member"],
                **({"linestyle": "none", "markerfacecolor": "none", "markersize": 10} if compared else {}),
            )
        elif name.startswith("order:"):
            order = name.split(":", 1)[1]
            ax.plot(
                xs, ys, label=f"{order} order", linestyle="-", alpha=0.85, **ORDER_STYLES.get(order, dict(marker="o"))
            )
        else:
            style = dict(STYLES.get(name, STYLES["model"]))
            ls = style.pop("linestyle", "none" if name == "model" else "-")
            ax.plot(xs, ys, label=name if name != "model" else "models", linestyle=ls, **style)
    for r in rows:  # highlight the ends of the family
        y = value(r)
        if y is not None and r["kind"] in ("student", "teacher"):
            ax.plot([r["num_params"]], [y], linestyle="none", label=r["kind"], **STYLES[r["kind"]])
    if label_points:
        for r in rows:
            y = value(r)
            if y is not None and r["kind"] not in ("baseline", "order"):
                ax.annotate(
                    r["name"], (r["num_params"], y), textcoords="offset points", xytext=(4, 4), fontsize=7, alpha=0.8
                )
    ax.set_xlabel("parameters")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(_formatter())
    ax.legend(fontsize=8, loc="best")
    return True


def _formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: _human(x))


def plot_results(
    rows: Sequence[dict[str, Any]],
    path: Path,
    *,
    title: str,
    data_key: str | None,
    tasks: Sequence[str] = (),
    by_layers: bool = False,
    metric_label: str = "perplexity",
) -> Path:
    """Draw ``rows`` (dicts with name, kind, method, num_params, ppl, tasks) into a PNG file; ``ppl``
    holds the value of the chosen ``--metric``, named on the axis by ``metric_label``.

    Perplexity goes on a log axis when it spans more than a factor of 20 (pruned
    baselines are often orders of magnitude off); task scores, when there are
    any, get a second panel with one line per task (its primary metric).
    """
    require_matplotlib()
    if by_layers:  # comparing orders: members of one depth differ in size (untied heads), so depth is the axis
        rows = [dict(r, num_params=r["num_layers"]) for r in rows]
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BoomerangError(f"--plot {path}: write a .png file")
    has_tasks = bool(tasks) and any(r.get("tasks") for r in rows)
    ncols = 2 if has_tasks else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.5 * ncols, 5.5), squeeze=False)
    ok = _panel(
        axes[0][0],
        rows,
        lambda r: r.get("ppl"),
        f"{metric_label} ({data_key})" if data_key else metric_label,
        label_points=sum(r["kind"] not in ("baseline", "order") for r in rows) <= 24,
    )
    ppls = [r["ppl"] for r in rows if r.get("ppl")]
    if ok and max(ppls) / min(ppls) > 20:  # pruned baselines can be orders of magnitude off
        axes[0][0].set_yscale("log")
        axes[0][0].yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        axes[0][0].yaxis.set_minor_formatter(FuncFormatter(lambda y, _pos: ""))
    elif not ok:
        axes[0][0].text(0.5, 0.5, "no perplexity measured", ha="center", va="center", transform=axes[0][0].transAxes)
    if has_tasks:
        ax = axes[0][1]
        for i, task in enumerate(tasks):

            def score(r: dict[str, Any], task: str = task) -> float | None:
                value = r.get("tasks", {}).get(task)
                return value[1] if value else None

            series = _series(rows, score)
            color = f"C{i % 10}"
            for name, pts in series.items():
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                base = STYLES.get(name, STYLES["member"]) if name != "family" else STYLES["member"]
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    marker=base.get("marker", "o"),
                    linestyle=base.get("linestyle", "-") if name != "family" else "-",
                    label=f"{task} ({'members' if name == 'family' else name})",
                )
        ax.set_xlabel("parameters")
        ax.set_ylabel("task score (primary metric)")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(_formatter())
        ax.legend(fontsize=7, loc="best")
    if by_layers:
        for ax in axes[0]:
            ax.set_xlabel("decoder layers")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:.0f}"))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
