"""Markdown tables for docs/results.md from what `boomerang demo --json` / `boomerang eval --json` wrote.

    python bench/results_table.py demo demo/demo.json          # family + both baselines per depth
    python bench/results_table.py orders orders.json            # every order's members per depth
    python bench/results_table.py plot RUN.json OUT.png TITLE    # redraw a run (orders: by depth, no baselines)
    python bench/results_table.py equal-size demo/demo.json [prose]  # each model against ShortGPT at equal saved size
    python bench/results_table.py sweep OUT/scores.jsonl [LABEL=ORDER=demo.json ...]  # the recipe sweep

The numbers in docs/results.md are pasted from this script's output, never typed.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from typing import Any


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 1000 else f"{x:.2f}"


def _rows(path: str, domain: str = "code") -> list[dict[str, Any]]:
    data = json.load(open(path))
    data = data.get("result", data)
    if "rows" in data:  # demo --json: the code domain's rows, or another domain's
        return data["domains"][domain] if domain != "code" else data["rows"]
    return [
        {
            "name": r["name"],
            "kind": r["kind"],
            "method": r.get("method"),
            "num_layers": r["num_layers"],
            "num_params": r["num_params"],
            "ppl": (r.get("perplexity") or {}).get("ppl"),
            "selection": r.get("selection"),
        }
        for r in data["results"]
    ]


def demo_table(path: str) -> str:
    rows = _rows(path)
    by: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in rows:
        key = r.get("method") if r["kind"] == "baseline" else r["kind"]
        by[r["num_layers"]].setdefault(key, []).append(r)
    depth = max(r["num_layers"] for r in rows if r["kind"] == "teacher")
    out = [
        "| layers | model | params | perplexity | ShortGPT | plan-prune | beats both |",
        "|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for n in sorted(by):
        for kind in ("student", "member", "teacher"):
            for r in sorted(by[n].get(kind, []), key=lambda r: r["num_params"]):
                # At the teacher's depth "pruning" removes nothing: no baseline (older runs recorded one).
                sg = (by[n].get("shortgpt") or [{}])[0].get("ppl") if n < depth else None
                pp = (by[n].get("plan-prune") or [{}])[0].get("ppl") if n < depth else None
                beats = "" if kind == "teacher" or sg is None else ("yes" if r["ppl"] < min(sg, pp) else "no")
                out.append(
                    f"| {n} | {r['name']} | {r['num_params'] / 1e6:.1f}M | {_fmt(r['ppl'])} | {_fmt(sg)} | "
                    f"{_fmt(pp)} | {beats} |"
                )
    return "\n".join(out)


def orders_table(path: str) -> str:
    rows = _rows(path)
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] == "order"))
    by: dict[int, dict[str, float]] = defaultdict(dict)
    ends = {}
    for r in rows:
        if r["kind"] == "order":
            by[r["num_layers"]][r["method"]] = r["ppl"]
        elif r["kind"] in ("student", "teacher"):
            ends[r["kind"]] = r
        elif r["kind"] == "baseline" and r.get("method") == "shortgpt":
            by[r["num_layers"]]["ShortGPT"] = r["ppl"]
    depth = ends["teacher"]["num_layers"] if "teacher" in ends else None
    if depth in by:  # "pruning" to the teacher's depth removes nothing (older runs recorded it)
        by[depth].pop("ShortGPT", None)
    cols = methods + (["ShortGPT"] if any("ShortGPT" in v for v in by.values()) else [])
    out = ["| layers | " + " | ".join(cols) + " | best order |", "|---:|" + "---:|" * len(cols) + "---|"]
    s, t = ends.get("student"), ends.get("teacher")
    if s:
        out.append(
            f"| {s['num_layers']} (student) | "
            + " | ".join(_fmt(s["ppl"]) if c in methods else "" for c in cols)
            + " | |"
        )
    for n in sorted(by):
        cells = by[n]
        if not any(m in cells for m in methods):
            continue
        have = {m: cells[m] for m in methods if m in cells}
        best = min(have, key=have.__getitem__) if have else ""
        out.append(f"| {n} | " + " | ".join(_fmt(cells.get(c)) for c in cols) + f" | {best} |")
    if t:
        out.append(
            f"| {t['num_layers']} (teacher) | "
            + " | ".join(_fmt(t["ppl"]) if c in methods else "" for c in cols)
            + " | |"
        )
    return "\n".join(out)


def plot(path: str, png: str, title: str) -> None:
    """The run's points through boomerang's own plot; baselines at the teacher's depth (the teacher
    itself, recorded by older runs) dropped; an order comparison is drawn by depth without baselines."""
    from boomerang_cli.evaluate.plot import plot_results

    rows = _rows(path)
    depth = max(r["num_layers"] for r in rows if r["kind"] == "teacher")
    orders = any(r["kind"] == "order" for r in rows)
    keep = [dict(r, tasks={}) for r in rows if not (r["kind"] == "baseline" and (orders or r["num_layers"] >= depth))]
    plot_results(keep, png, title=title, data_key="stdlib:validation", by_layers=orders)


def equal_size_table(path: str, domain: str = "code") -> str:
    from boomerang_cli.evaluate.score import score_family

    rows = _rows(path, domain)
    sc = score_family(rows)
    by_name = {r["name"]: r for r in rows}
    out = [
        "| layers | model | params | tied | perplexity | ShortGPT at equal size | ratio | wins |",
        "|---:|---|---:|:---:|---:|---:|---:|:---:|",
    ]
    for v in sc.per_size:
        tied = by_name[v.name].get("tied")
        out.append(
            f"| {v.num_layers} | {v.name} | {v.num_params / 1e6:.1f}M | {'' if tied is None else 'yes' if tied else 'no'} "
            f"| {_fmt(v.ppl)} | {_fmt(v.baseline_ppl)}{'' if v.exact else ' (interpolated)'} | "
            f"{v.ppl / v.baseline_ppl:.3f} | {'yes' if v.wins else 'no'} |"
        )
    t = next(r for r in rows if r["kind"] == "teacher")
    out.append(f"| {t['num_layers']} | teacher | {t['num_params'] / 1e6:.1f}M | | {_fmt(t['ppl'])} | | | |")
    out.append("")
    out.append(
        f"Score: geometric mean ratio {sc.geomean_ratio:.3f}, wins {sc.wins} of {sc.sizes}, "
        f"perplexity increases along the family {sc.increases}"
        + (f" ({'; '.join(sc.increase_detail)})" if sc.increases else "")
        + f", every size within [student, teacher]: {'yes' if sc.within_range else 'no'}."
    )
    return "\n".join(out)


def sweep_table(path: str, *runs: str) -> str:
    """bench/recipe_score.py's rows, then whole runs given as ``LABEL=ORDER=demo.json`` scored the same way."""
    from boomerang_cli.evaluate.score import score_family

    out = [
        "| setting | order | student ppl | geomean ratio vs ShortGPT | wins | increases | sizes within ends |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    rows = [json.loads(line) for line in open(path)]
    for run in runs:
        label, order, demo = run.split("=", 2)
        sc, fam = score_family(_rows(demo)), _rows(demo)
        rows.append(
            {
                "name": label,
                "order": order,
                "geomean_ratio": sc.geomean_ratio,
                "wins": sc.wins,
                "sizes": sc.sizes,
                "increases": sc.increases,
                "within_range": sc.within_range,
                "student_ppl": next(r["ppl"] for r in fam if r["kind"] == "student"),
            }
        )
    for r in rows:
        out.append(
            f"| {r['name']} | {r['order']} | {_fmt(r['student_ppl'])} | {r['geomean_ratio']:.3f} | "
            f"{r['wins']} of {r['sizes']} | {r['increases']} | {'yes' if r['within_range'] else 'no'} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    what, path = sys.argv[1], sys.argv[2]
    tables = {"demo": demo_table, "orders": orders_table, "equal-size": equal_size_table, "sweep": sweep_table}
    if what == "plot":
        plot(path, sys.argv[3], sys.argv[4])
    else:
        print(tables[what](path, *sys.argv[3:]))
