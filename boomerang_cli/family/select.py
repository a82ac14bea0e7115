"""Which members a family can have and which ``--sizes``/``--num``/``--all`` picks (SPEC section 4).

Sizes are saved sizes: every candidate carries the parameter count of the
directory ``family`` would write (tied or not), and a family spans
[student, teacher].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..errors import BoomerangError
from ..member import Member
from ..orders.names import CALIBRATED_ORDERS, check_order, sequential_members
from ..orders.search import SearchResult
from ..pair import Pair
from ..units import format_params, parse_count


@dataclass(frozen=True)
class SizeTarget:
    """One ``--sizes`` entry: the text as written and the parameter count it means."""

    label: str
    params: int


def parse_size_targets(text: str) -> list[SizeTarget]:
    """``"2B,3.5M,500K"`` -> targets (decimal K/M/B/T suffixes, as model names use)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise BoomerangError("--sizes is empty; write sizes like --sizes 2B,3B,5B")
    out: list[SizeTarget] = []
    for part in parts:
        value = parse_count(part) if part else None
        if value is None:
            raise BoomerangError(f"cannot read size {part!r} in --sizes; write parameter counts like 2B,350M,500K")
        if value <= 0:
            raise BoomerangError(f"size {part!r} in --sizes is not a positive parameter count")
        out.append(SizeTarget(part, value))
    return out


def parse_sizes(text: str) -> list[int]:
    """``"2B,3.5M,500K"`` -> ``[2_000_000_000, 3_500_000, 500_000]``."""
    return [t.params for t in parse_size_targets(text)]


@dataclass(frozen=True)
class Candidate:
    """One achievable member of an order, with its size as saved."""

    member: Member
    num_params: int
    tied: bool
    step: int  # position in the order: 0 = student

    @property
    def name(self) -> str:
        return self.member.name


def achievable(pair: Pair, order: str, search: SearchResult | None = None) -> list[Candidate]:
    """Student, every member of ``order`` and the teacher, smallest first (SPEC section 4).

    A calibrated order's members are those its ``search`` chose, one per layer count.
    """
    check_order(order)
    return order_candidates(pair, order, search)


def order_candidates(pair: Pair, order: str, search: SearchResult | None = None) -> list[Candidate]:
    """:func:`achievable` for an ``order`` already checked."""
    if order in CALIBRATED_ORDERS:
        if search is None or search.method != order:
            raise BoomerangError(f"--order {order} chooses members from calibration data; run its search first")
        # The ends are always the student and the teacher; a member as deep as the
        # student (a singleton block patched) may sit beside it if the search chose it.
        ends = Member(pair.plan, frozenset()), Member(pair.plan, frozenset(range(pair.plan.num_student_layers)))
        members = [ends[0]] + [m for m in search.members() if m not in ends] + [ends[1]]
    else:
        members = sequential_members(pair.plan, order)
    out = []
    for step, m in enumerate(members):
        comp = m.composition(pair.models)
        out.append(Candidate(m, comp.num_params, comp.tied, step))
    return out


def candidates(pair: Pair, order: str, search: SearchResult | None = None) -> list[Candidate]:
    """The members ``family`` can write: those strictly between student and teacher."""
    return [c for c in achievable(pair, order, search) if not (c.member.is_student or c.member.is_teacher)]


@dataclass
class Pick:
    """A chosen member and the ``--sizes`` targets that chose it (empty for --num/--all)."""

    candidate: Candidate
    targets: list[SizeTarget] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.candidate.name


def check_selection_args(
    sizes: str | None, num: int | None, all_members: bool, dry_run: bool
) -> list[SizeTarget] | None:
    """Exactly one of --sizes/--num/--all (none is fine for --dry-run); sizes parsed early."""
    given = [n for n, v in (("--sizes", sizes is not None), ("--num", num is not None), ("--all", all_members)) if v]
    if len(given) > 1:
        raise BoomerangError(f"{' and '.join(given)} exclude each other; choose members one way")
    if not given and not dry_run:
        raise BoomerangError("choose members with --sizes 2B,3B, --num N or --all (or look first with --dry-run)")
    if num is not None and num < 1:
        raise BoomerangError(f"--num {num}: ask for at least one member")
    return parse_size_targets(sizes) if sizes is not None else None


def select(
    cands: Sequence[Candidate],
    *,
    sizes: Sequence[SizeTarget] | None = None,
    num: int | None = None,
    all_members: bool = False,
    student_params: int,
    teacher_params: int,
) -> list[Pick]:
    """Members for ``--sizes`` (closest count, within the family's range), ``--num`` or ``--all``.

    Targets landing on one member give one pick with all of them, written once.
    """
    if not cands and (sizes or num or all_members):
        raise BoomerangError("this plan and order give no member between student and teacher; try the other --order")
    if sizes is not None:
        # Sizes are saved sizes, and a family spans [student, teacher]: a member that
        # outgrows the teacher (untied: a second embedding matrix) is never picked.
        lo, hi = sorted((student_params, teacher_params))
        fitting = [c for c in cands if lo <= c.num_params <= hi]
        bigger = [c for c in cands if c.num_params > hi]
        hint = (
            f"; {len(bigger)} member(s) are larger than the teacher because they are saved untied, "
            "distill the student with --freeze-embeddings to keep them tied"
            if bigger
            else ""
        )
        picks: dict[str, Pick] = {}
        for t in sizes:
            if not lo <= t.params <= hi:
                raise BoomerangError(
                    f"size {t.label} ({t.params:,}) is outside this family's range {format_params(lo)}.."
                    f"{format_params(hi)} (student {student_params:,} .. teacher {teacher_params:,}); "
                    f"ask for sizes in between{hint}"
                )
            if not fitting:
                raise BoomerangError(
                    f"no member of this family lies between the student and the teacher in "
                    f"size{hint or '; try another --order'}"
                )
            best = min(fitting, key=lambda c: (abs(c.num_params - t.params), c.num_params))
            picks.setdefault(best.name, Pick(best)).targets.append(t)
        return sorted(picks.values(), key=lambda p: p.candidate.step)
    if num is not None:
        m = len(cands)
        if num > m:
            raise BoomerangError(
                f"--num {num} but this order has only {m} member(s) between student and teacher; use --num {m} or --all"
            )
        # Evenly spaced along the order: member round(i*(M+1)/(N+1)) for i = 1..N (distinct).
        idx = [(2 * i * (m + 1) + num + 1) // (2 * (num + 1)) - 1 for i in range(1, num + 1)]
        return [Pick(cands[i]) for i in idx]
    if all_members:
        return [Pick(c) for c in cands]
    return []
