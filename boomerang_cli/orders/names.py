"""Order names, their flag checks, and the two fixed orders (SPEC section 4), which need no search.

No torch: flags, their defaults and ``--help`` read these.
"""

from __future__ import annotations

from ..errors import BoomerangError
from ..member import Member
from ..plan import Plan

#: The fixed orders, which :func:`sequential_members` walks (the reference code's).
FIXED_ORDERS = ("last-first", "first-last")
#: The orders searched on calibration data (:mod:`.search`, scored by :mod:`.kl`).
CALIBRATED_ORDERS = ("kl-greedy", "beam", "kl-dp", "auto")
#: Every ``--order``: the fixed ones and the searched ones.
ALL_ORDERS = FIXED_ORDERS + CALIBRATED_ORDERS
DEFAULT_BEAM = 4  # --order beam without --beam
DEFAULT_ORDER = "last-first"  # family --order: the paper's (SPEC section 4)


def check_order(order: str, flag: str = "--order") -> None:
    if order not in ALL_ORDERS:
        raise BoomerangError(f"unknown {flag} {order!r}; use one of {', '.join(ALL_ORDERS)}")


def check_beam(beam: int | None) -> None:
    if beam is not None and beam < 1:
        raise BoomerangError(f"--beam must be at least 1 (got {beam})")


def beam_width(method: str, beam: int | None) -> int:
    """The beam a calibrated order searches with: ``beam`` (default 4) for beam, else 1."""
    return (beam if beam is not None else DEFAULT_BEAM) if method == "beam" else 1


def sequential(plan: Plan, order: str, k: int) -> Member:
    """Member ``k`` of a fixed order (SPEC section 4), reproducing the reference code.

    last-first: the last ``k`` patchable blocks and every block after the first of
    them come from the teacher; first-last: the first ``k`` and every block before
    the last of them.
    """
    patchable = [b.index for b in plan.patchable_blocks]
    if not 0 <= k <= len(patchable):
        raise BoomerangError(f"member {k} does not exist; the plan has {len(patchable)} patchable blocks")
    if k == 0:
        return Member(plan, frozenset())
    n = plan.num_student_layers
    if order == "last-first":
        first = patchable[-k]
        return Member(plan, frozenset(range(first, n)))
    if order == "first-last":
        last = patchable[k - 1]
        return Member(plan, frozenset(range(0, last + 1)))
    raise BoomerangError(f"unknown order {order!r}; use one of {', '.join(FIXED_ORDERS)}")


def sequential_members(plan: Plan, order: str) -> list[Member]:
    """Student, every member of ``order``, and the teacher, smallest first, without repeats."""
    out: list[Member] = []
    for k in range(len(plan.patchable_blocks) + 1):
        m = sequential(plan, order, k)
        if m not in out:
            out.append(m)
    teacher = Member(plan, frozenset(range(plan.num_student_layers)))
    if teacher not in out:
        out.append(teacher)
    return out
