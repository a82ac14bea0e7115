"""How a member is described: its blocks as ranges, its model card, its dry-run summary."""

from __future__ import annotations

from typing import Any, Iterable

from .. import __version__
from ..compose import Composition, model_card
from ..data import public_sources
from ..manifest import OrderInfo
from ..member import Member
from ..orders.names import CALIBRATED_ORDERS
from ..pair import Pair
from .select import Candidate


def _ranges(xs: Iterable[int]) -> str:
    """``[0,1,2,5,7,8]`` -> ``"0-2,5,7-8"``."""
    xs = sorted(xs)
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out) or "-"


def describe_blocks(member: Member) -> tuple[str, str]:
    """Block indices taken from the teacher and from the student, as ranges."""
    n = member.plan.num_student_layers
    t = [b for b in range(n) if b in member.teacher_blocks]
    s = [b for b in range(n) if b not in member.teacher_blocks]
    return _ranges(t), _ranges(s)


def member_card(pair: Pair, cand: Candidate, comp: Composition, order: OrderInfo) -> str:
    m = cand.member
    how = f"{order.method} order, step {cand.step}"
    if order.method in CALIBRATED_ORDERS:
        kl = next((s["kl"] for s in order.steps if s.get("num_layers") == m.num_layers), None)
        cal = order.calibration or {}
        data = public_sources(cal["data"], cal.get("split")) if cal.get("data") else "calibration data"
        how = (
            f"{order.method} order{f' (beam {order.beam})' if order.beam else ''}, blocks chosen by KL to the "
            f"teacher on {data}" + (f": KL {kl:.4f}" if kl is not None else "")
        )
    rows = ["| block | teacher layers | taken from | member layers |", "|---:|---|---|---|"]
    pos = 0
    for b in pair.plan.blocks:
        src = m.source(b.index)
        width = b.size if src == "teacher" else 1
        layers = f"{b.start}" if b.size == 1 else f"{b.start}-{b.end - 1}"
        mine = f"{pos}" if width == 1 else f"{pos}-{pos + width - 1}"
        rows.append(f"| {b.index} | {layers} | {src} | {mine} |")
        pos += width
    tied = "tied" if comp.tied else "untied (both tensors saved)"
    body = (
        f"Built by `boomerang family` (boomerang {__version__}) with no training, from teacher "
        f"{pair.teacher_ref.public_name} and student {pair.student_ref.public_name} (boomerang distillation, "
        f"{how}).\n\n"
        f"- layers: {m.num_layers} (teacher {pair.plan.num_teacher_layers}, student {pair.plan.num_student_layers})\n"
        f"- parameters: {comp.num_params:,}\n"
        f"- embeddings from the {m.embed_from}; final norm and LM head from the {m.head_from}; "
        f"embeddings and head {tied}\n\n" + "\n".join(rows)
    )
    meta = pair.teacher_ref.card_metadata()
    hub = meta["base_models"] + ([pair.student_ref.hub_id] if pair.student_ref.hub_id else [])  # Hub ids only
    return model_card(f"{m.name}: boomerang family member", hub, body, license=meta["license"])


def member_summary(c: Candidate) -> dict[str, Any]:
    t, s = describe_blocks(c.member)
    return {
        "name": c.name,
        "num_layers": c.member.num_layers,
        "num_params": c.num_params,
        "teacher_blocks": t,
        "student_blocks": s,
        "embed_from": c.member.embed_from,
        "head_from": c.member.head_from,
        "tied": c.tied,
        "step": c.step,
    }
