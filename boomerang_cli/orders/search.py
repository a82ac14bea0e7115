"""The calibrated orders' searches, pure: each runs over an injected *scorer* (members -> KL).

- ``kl-greedy`` / ``beam`` (:func:`beam_search`): patch one block at a time,
  keeping the ``W`` lowest-KL sets of patched blocks at every depth.
- ``kl-dp`` (:func:`dp_search`): each block scored once from each end, the best
  subset of every size by one knapsack pass over those additive costs.
- ``auto`` (:func:`auto_search`): kl-dp's proposals and the fixed orders'
  members, the lowest KL kept per size.

Nothing here runs a model, so the searches are tested against brute force with
synthetic scorers; :mod:`.kl` supplies the real one. Scores are memoized, so no
member is evaluated twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import BoomerangError
from ..manifest import OrderInfo
from ..member import Member
from ..plan import Plan
from .names import CALIBRATED_ORDERS, FIXED_ORDERS, beam_width, sequential_members

#: members -> KL divergence to the teacher of each, same order
Scorer = Callable[[Sequence[Member]], list[float]]


@dataclass
class SearchResult:
    """The chosen member for every reachable layer count, plus the search trace."""

    method: str
    beam: int | None
    best: dict[int, tuple[Member, float]]  # num_layers -> (member, KL)
    steps: list[dict] = field(default_factory=list)
    evaluated: int = 0
    calibration: dict[str, Any] | None = None  # what the KL was measured on (set by kl.search)
    seconds: float | None = None

    def members(self) -> list[Member]:
        """Chosen members, smallest first (student first, teacher last)."""
        return [self.best[n][0] for n in sorted(self.best)]


class _Memo:
    """Evaluate each distinct member at most once."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.cache: dict[frozenset[int], float] = {}

    def __call__(self, members: Sequence[Member]) -> list[float]:
        todo = [m for m in dict.fromkeys(members) if m.teacher_blocks not in self.cache]
        if todo:
            for m, kl in zip(todo, self.scorer(todo)):
                self.cache[m.teacher_blocks] = float(kl)
        return [self.cache[m.teacher_blocks] for m in members]


def _record(best: dict[int, tuple[Member, float]], member: Member, kl: float) -> None:
    n = member.num_layers
    if n not in best or kl < best[n][1]:
        best[n] = (member, kl)


def beam_search(
    plan: Plan, scorer: Scorer, width: int = 1, on_step: Callable[[int, int], None] | None = None
) -> SearchResult:
    """Patch blocks one at a time, keeping the ``width`` lowest-KL sets at each depth.

    ``on_step(depth, total_depths)`` reports progress. Every block (patchable or
    singleton) is a candidate at each step, so the search ends at the teacher.
    """
    if width < 1:
        raise BoomerangError(f"--beam must be at least 1 (got {width})")
    memo = _Memo(scorer)
    n_blocks = plan.num_student_layers
    start = Member(plan, frozenset())
    best: dict[int, tuple[Member, float]] = {}
    (kl0,) = memo([start])
    _record(best, start, kl0)
    frontier: list[tuple[float, Member]] = [(kl0, start)]
    steps: list[dict] = []
    for depth in range(1, n_blocks + 1):
        children: dict[frozenset[int], Member] = {}
        parent_of: dict[frozenset[int], tuple[Member, int]] = {}
        for _, m in frontier:
            for b in range(n_blocks):
                if b in m.teacher_blocks:
                    continue
                child = Member(plan, m.teacher_blocks | {b})
                if child.teacher_blocks not in children:
                    children[child.teacher_blocks] = child
                    parent_of[child.teacher_blocks] = (m, b)
        cand = list(children.values())
        kls = memo(cand)
        ranked = sorted(zip(kls, cand), key=lambda x: (x[0], sorted(x[1].teacher_blocks)))
        frontier = ranked[:width]
        top_kl, top = frontier[0]
        # Greedy keeps its one nested chain; a beam may use any member it scored.
        for kl, m in ranked if width > 1 else frontier:
            _record(best, m, kl)
        parent, block = parent_of[top.teacher_blocks]
        steps.append(
            {
                "step": depth,
                "block": block,
                "teacher_blocks": sorted(top.teacher_blocks),
                "num_layers": top.num_layers,
                "kl": top_kl,
                "candidates": [
                    {"teacher_blocks": sorted(m.teacher_blocks), "num_layers": m.num_layers, "kl": kl}
                    for kl, m in ranked[: max(width, 1) * 4]
                ]
                if width > 1
                else [
                    {"block": parent_of[m.teacher_blocks][1], "num_layers": m.num_layers, "kl": kl} for kl, m in ranked
                ],
            }
        )
        if on_step is not None:
            on_step(depth, n_blocks)
    method = "kl-greedy" if width == 1 else "beam"
    return SearchResult(method, None if width == 1 else width, best, steps, len(memo.cache))


def kl_greedy(plan: Plan, scorer: Scorer, on_step: Callable[[int, int], None] | None = None) -> SearchResult:
    """The nested greedy chain (a beam of width one)."""
    return beam_search(plan, scorer, 1, on_step)


def dp_subsets(plan: Plan, cost: Sequence[float]) -> dict[int, frozenset[int]]:
    """For every reachable layer count, the blocks to take from the student with the lowest total cost.

    ``cost[b]``: what taking block ``b`` from the student costs (may be negative:
    a distilled singleton can beat the teacher's layer). A block of ``k`` teacher
    layers taken from the student removes ``k - 1`` layers, so this is a
    knapsack over removed layers: one pass over the blocks, exact for additive costs.
    """
    table: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for b in plan.blocks:
        nxt = dict(table)
        for removed, (c, chosen) in table.items():
            key, val = removed + b.size - 1, (c + cost[b.index], chosen + (b.index,))
            if key not in nxt or val < nxt[key]:
                nxt[key] = val
        table = nxt
    return {plan.num_teacher_layers - r: frozenset(chosen) for r, (_, chosen) in table.items()}


def dp_search(
    plan: Plan, scorer: Scorer, rivals: Mapping[str, Sequence[Member]] | None = None, method: str = "kl-dp"
) -> SearchResult:
    """``kl-dp`` (no ``rivals``) or ``auto`` (``rivals``: the fixed orders' members) over ``scorer``.

    ``steps`` holds per layer count every proposal with its source and KL;
    the probes' KLs (each block alone from each side) come first.
    """
    memo = _Memo(scorer)
    n = plan.num_student_layers
    full = frozenset(range(n))
    student, teacher = Member(plan, frozenset()), Member(plan, full)
    near_teacher = [Member(plan, full - {b}) for b in range(n)]
    near_student = [Member(plan, frozenset({b})) for b in range(n)]
    kls = memo([student, teacher] + near_teacher + near_student)
    kl_s, kl_t = kls[0], kls[1]
    costs = {"dp-teacher-side": [k - kl_t for k in kls[2 : 2 + n]], "dp-student-side": [kl_s - k for k in kls[2 + n :]]}
    proposals: dict[int, list[tuple[str, Member]]] = {}
    for source, cost in costs.items():
        for layers, from_student in dp_subsets(plan, cost).items():
            proposals.setdefault(layers, []).append((source, Member(plan, full - from_student)))
    for source, members in (rivals or {}).items():
        for m in members:
            proposals.setdefault(m.num_layers, []).append((source, m))
    flat = [m for layers in sorted(proposals) for _, m in proposals[layers]]
    scores = dict(zip((m.teacher_blocks for m in flat), memo(flat)))
    best: dict[int, tuple[Member, float]] = {}
    _record(best, student, kl_s)
    _record(best, teacher, kl_t)
    steps: list[dict] = [
        {
            "probe": b,
            "kl_teacher_with_block_from_student": kls[2 + b],
            "kl_student_with_block_from_teacher": kls[2 + n + b],
        }
        for b in range(n)
    ]
    for layers in sorted(proposals):
        cands: list[dict[str, Any]] = [
            {"from": src, "teacher_blocks": sorted(m.teacher_blocks), "kl": scores[m.teacher_blocks]}
            for src, m in proposals[layers]
        ]
        for (_, m), c in zip(proposals[layers], cands):
            if not (m.is_student or m.is_teacher):
                _record(best, m, c["kl"])
        steps.append({"num_layers": layers, "candidates": cands})
    return SearchResult(method, None, best, steps, len(memo.cache))


def auto_search(plan: Plan, scorer: Scorer) -> SearchResult:
    """kl-dp's proposals and every member of the fixed orders, the lowest KL kept per size."""
    rivals = {o: [m for m in sequential_members(plan, o) if not (m.is_student or m.is_teacher)] for o in FIXED_ORDERS}
    return dp_search(plan, scorer, rivals, method="auto")


def run_search(
    method: str, plan: Plan, scorer: Scorer, beam: int | None = None, on_step: Callable[[int, int], None] | None = None
) -> SearchResult:
    """The calibrated order ``method`` over ``scorer`` (the one entry point the KL search uses)."""
    if method == "kl-dp":
        return dp_search(plan, scorer)
    if method == "auto":
        return auto_search(plan, scorer)
    if method in ("kl-greedy", "beam"):
        return beam_search(plan, scorer, beam_width(method, beam), on_step)
    raise BoomerangError(f"{method!r} is not a calibrated order; use one of {', '.join(CALIBRATED_ORDERS)}")


def order_info(result: SearchResult) -> OrderInfo:
    """The manifest's record of a search: method, calibration, the member chosen per size and the trace.

    ``steps`` has one entry per reachable layer count (smallest first): the
    blocks taken from the teacher and the member's KL. ``trace`` has one entry
    per search depth: the block patched (greedy) and every candidate's KL, so
    the choice can be checked from the manifest alone.
    """
    calibration = dict(result.calibration or {})
    calibration["evaluated"] = result.evaluated
    if result.seconds is not None:
        calibration["seconds"] = round(result.seconds, 1)
    steps = [
        {"num_layers": n, "teacher_blocks": sorted(m.teacher_blocks), "kl": kl}
        for n, (m, kl) in sorted(result.best.items())
    ]
    return OrderInfo(
        method=result.method, calibration=calibration, beam=result.beam, steps=steps, trace=list(result.steps)
    )


def result_from_order_info(plan: Plan, info: OrderInfo) -> SearchResult:
    """A search recorded in a manifest, back as a result (no member is scored again)."""
    if info.method not in CALIBRATED_ORDERS or not info.steps:
        raise BoomerangError(f"the manifest records no calibrated search (order {info.method!r})")
    best: dict[int, tuple[Member, float]] = {}
    for s in info.steps:
        m = Member.of(plan, s["teacher_blocks"])
        best[m.num_layers] = (m, float(s["kl"]))
    cal = info.calibration or {}
    return SearchResult(
        info.method,
        info.beam,
        best,
        list(info.trace),
        int(cal.get("evaluated", 0)),
        {k: v for k, v in cal.items() if k not in ("evaluated", "seconds")},
        cal.get("seconds"),
    )
