"""One number for a family, judged as a user would: against free pruning at equal saved size.

SPEC section 6: the baseline a member must beat is ShortGPT (the teacher with its
lowest block-influence layers removed, no training) with the same parameter
count as saved. Where no ShortGPT model has exactly a member's count (untied
members carry a second embedding), its perplexity is interpolated in log space
between the two nearest ShortGPT sizes, the teacher being ShortGPT's largest.

``FamilyScore`` is what docs/results.md ranks recipes and orders by:

- ``geomean_ratio``: geometric mean over the family's sizes (student and members)
  of perplexity / ShortGPT's at equal parameter count (lower is better; < 1 wins);
- ``wins`` of ``sizes``: where the family's model has the lower perplexity;
- ``increases``: perplexity increases along the family (student, members by depth, teacher).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

#: rows are dicts with ``kind`` (student | member | teacher | baseline), ``method`` (baselines),
#: ``num_params``, ``num_layers`` and ``ppl`` (None when not measured)
Row = Mapping[str, Any]


def family_order(rows: Sequence[Row]) -> list[Row]:
    """Student, members by depth (then size), teacher last: the order a family grows in."""
    rank = {"student": 0, "member": 1, "teacher": 2}
    return sorted(
        (r for r in rows if r["kind"] in rank and r.get("ppl") is not None),
        key=lambda r: (rank[r["kind"]], r["num_layers"], r["num_params"]),
    )


def baseline_curve(rows: Sequence[Row], method: str = "shortgpt") -> list[tuple[int, float]]:
    """``(num_params, ppl)`` of ``method``'s models plus the teacher (pruning nothing), by size."""
    points = {
        r["num_params"]: r["ppl"]
        for r in rows
        if r.get("ppl") is not None and r["kind"] == "baseline" and r.get("method") == method
    }
    for r in rows:
        if r["kind"] == "teacher" and r.get("ppl") is not None:
            points[r["num_params"]] = r["ppl"]
    return sorted(points.items())


def at_size(curve: Sequence[tuple[int, float]], params: int) -> float | None:
    """The curve's perplexity at ``params``: exact, log-interpolated between neighbours, or the
    nearest end's (a member smaller than every point, or larger than the teacher, is held to it)."""
    if not curve:
        return None
    if params <= curve[0][0]:
        return curve[0][1]
    for (p0, y0), (p1, y1) in zip(curve, curve[1:]):
        if params <= p1:
            w = (params - p0) / (p1 - p0)
            return y1 if w == 1 else math.exp((1 - w) * math.log(y0) + w * math.log(y1))
    return curve[-1][1]


@dataclass
class SizeVerdict:
    name: str
    num_layers: int
    num_params: int
    ppl: float
    baseline_ppl: float
    exact: bool  # a baseline model of exactly this parameter count exists

    @property
    def wins(self) -> bool:
        return self.ppl < self.baseline_ppl


@dataclass
class FamilyScore:
    method: str
    geomean_ratio: float | None
    wins: int
    sizes: int
    increases: int
    increase_detail: list[str] = field(default_factory=list)
    per_size: list[SizeVerdict] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # members whose saved size is not in [student, teacher]

    @property
    def within_range(self) -> bool:
        return not self.outside

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["within_range"] = self.within_range
        for v, s in zip(d["per_size"], self.per_size):
            v["wins"] = s.wins
        return d


def score_family(rows: Sequence[Row], method: str = "shortgpt") -> FamilyScore:
    """Judge ``rows`` (one family plus its baselines) against ``method`` at equal saved size."""
    fam = family_order(rows)
    increases = [
        f"{a['name']} {a['ppl']:.4g} -> {b['name']} {b['ppl']:.4g}" for a, b in zip(fam, fam[1:]) if b["ppl"] > a["ppl"]
    ]
    curve = baseline_curve(rows, method)
    exact = {p for p, _ in curve}
    verdicts = []
    for r in fam:
        if r["kind"] == "teacher":
            continue
        base = at_size(curve, r["num_params"])
        if base is not None:
            verdicts.append(
                SizeVerdict(r["name"], r["num_layers"], r["num_params"], r["ppl"], base, r["num_params"] in exact)
            )
    ratio = math.exp(sum(math.log(v.ppl / v.baseline_ppl) for v in verdicts) / len(verdicts)) if verdicts else None
    ends = [r["num_params"] for r in fam if r["kind"] in ("student", "teacher")]
    outside = [
        f"{r['name']} ({r['num_params']:,})"
        for r in fam
        if len(ends) == 2 and not min(ends) <= r["num_params"] <= max(ends)
    ]
    return FamilyScore(
        method, ratio, sum(v.wins for v in verdicts), len(verdicts), len(increases), increases, verdicts, outside
    )
