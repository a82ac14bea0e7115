"""What a calibrated search costs (members scored, the progress bar's total), and when a search recorded
in a manifest is reused instead of run again (docs/orders.md, "Cost")."""

from __future__ import annotations

from math import comb

from ..manifest import OrderInfo
from ..plan import Plan
from .names import FIXED_ORDERS, sequential_members


def greedy_cost(num_blocks: int) -> int:
    """Members kl-greedy evaluates: B + (B-1) + ... + 1, plus the student."""
    return num_blocks * (num_blocks + 1) // 2 + 1


def dp_cost(num_blocks: int, rivals: int = 0) -> int:
    """Members kl-dp scores at most: student, teacher, two probes per block, two proposals per size
    (sizes <= blocks + 1), plus ``rivals`` members of fixed orders for auto."""
    return 2 + 2 * num_blocks + 2 * (num_blocks + 1) + rivals


def order_cost(plan: Plan, method: str, width: int = 1) -> int:
    """Members a search scores at most (the progress bar's total)."""
    if method in ("kl-dp", "auto"):
        rivals = sum(len(sequential_members(plan, o)) for o in FIXED_ORDERS) if method == "auto" else 0
        return dp_cost(plan.num_student_layers, rivals)
    return search_cost(plan.num_student_layers, width)


def search_cost(num_blocks: int, width: int) -> int:
    """Members a beam search scores at most: the student, then at each depth ``d`` the distinct children
    of the beam, at most ``min(C(B, d), width * (B - d + 1))`` (greedy: exactly ``B(B+1)/2 + 1``)."""
    total, frontier = 1, 1
    for d in range(1, num_blocks + 1):
        children = min(comb(num_blocks, d), frontier * (num_blocks - d + 1))
        total += children
        frontier = min(width, children)
    return total


def reusable(recorded: OrderInfo, method: str, width: int) -> bool:
    """The reuse rule: a manifest's recorded search is the one ``method`` at beam ``width`` would run
    (the caller adds what else must match: calibration, teacher, student, plan)."""
    return recorded.method == method and bool(recorded.steps) and (recorded.beam or 1) == width
