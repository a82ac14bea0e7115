"""Training-free layer-pruning baselines, evaluated beside the members (SPEC section 5).

- **ShortGPT** (Men et al., 2024): a layer's *block influence* is
  ``BI_i = 1 - E_tokens[cos(x_i, x_{i+1})]`` where ``x_i`` is its input and
  ``x_{i+1}`` its output, measured on calibration data. A layer that barely
  changes its input matters little; to prune the teacher to ``n`` layers, drop
  the ``L - n`` layers of lowest influence.
- **plan-prune**: the teacher cut to the layers a member is *made of*, all with
  the teacher's own weights. For each block the member takes from the teacher,
  all of its layers; for each block it takes from the student, the teacher layer
  the student layer was initialized from (``kept[b]``). It is the member without
  distillation: for the student it is the plan's ``kept`` layers (what
  ``init-student`` writes), for the teacher the teacher. Same layer count as the
  member, so the gap between the two is what distillation bought.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import BoomerangError
from ..member import Member
from ..models import attention_mask
from ..forward.perplexity import EvalData
from ..forward.trunk import LayerRunner, Stack

METHODS = ("shortgpt", "plan-prune")


def block_influence(
    runner: LayerRunner,
    data: EvalData,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> list[float]:
    """``1 - mean cos(input, output)`` of every decoder layer over the non-padding tokens of ``data``."""
    n = runner.num_layers
    sums = torch.zeros(n, dtype=torch.float64)
    count = 0
    for ids, _labels, mask in data.batches(batch_size):
        am = attention_mask(mask)
        cap = runner.capture(ids, am)
        real = mask.to(runner.device)
        count += int(real.sum())
        h = cap.embedded
        for i in range(n):
            out = runner.layer(i, h, cap)
            cos = F.cosine_similarity(h.float(), out.float(), dim=-1)  # [B, T]
            sums[i] += float((1.0 - cos)[real].double().sum())
            h = out
        if on_batch is not None:
            on_batch()
    if count == 0:
        raise BoomerangError("no calibration tokens to measure block influence on; add data")
    return [float(s / count) for s in sums]


def shortgpt_layers(influence: Sequence[float], num_layers: int) -> list[int]:
    """The ``num_layers`` layers kept when the ones of lowest influence are dropped (ties: earlier first)."""
    total = len(influence)
    if not 1 <= num_layers <= total:
        raise BoomerangError(f"cannot prune a {total}-layer model to {num_layers} layers")
    order = sorted(range(total), key=lambda i: (influence[i], i))
    dropped = set(order[: total - num_layers])
    return [i for i in range(total) if i not in dropped]


def plan_prune_layers(member: Member) -> list[int]:
    """Teacher layers of ``member`` with every student layer replaced by the teacher layer it came from."""
    out: list[int] = []
    for b in member.plan.blocks:
        if b.index in member.teacher_blocks:
            out.extend(b.teacher_layers)
        else:
            out.append(b.start)  # == plan.kept[b.index]
    return out


@dataclass
class Baseline:
    """One pruned teacher to evaluate: its method, layers and what it stands beside."""

    name: str
    method: str
    teacher_layers: list[int]
    selection: dict[str, Any] = field(default_factory=dict)  # how the layers were chosen

    @property
    def num_layers(self) -> int:
        return len(self.teacher_layers)

    def stack(self) -> Stack:
        return Stack.of_layers("teacher", self.teacher_layers)


def baseline_name(method: str, num_layers: int) -> str:
    return f"{method}-{num_layers:02d}L"


def plan_baselines(
    methods: Sequence[str],
    members: Sequence[Member],
    influence: Sequence[float] | None,
    calibration: dict[str, Any] | None = None,
) -> list[Baseline]:
    """Baselines at each member's layer count below the teacher's, one per method and count.

    A member as deep as the teacher (first-last with the trailing singletons still
    the student's) gets none: pruning nothing is the teacher itself, not a baseline.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BoomerangError(f"unknown baseline method {unknown[0]!r}; use one of {', '.join(METHODS)}")
    out: list[Baseline] = []
    seen: set[str] = set()
    for member in sorted(members, key=lambda m: m.num_layers):
        if member.is_teacher or member.num_layers >= member.plan.num_teacher_layers:
            continue
        n = member.num_layers
        for method in methods:
            name = baseline_name(method, n)
            if name in seen:
                continue
            seen.add(name)
            if method == "shortgpt":
                if influence is None:
                    raise ValueError("shortgpt baselines need block influence scores")
                sel = {"block_influence": [round(x, 6) for x in influence], **(calibration or {})}
                out.append(Baseline(name, method, shortgpt_layers(influence, n), sel))
            else:
                out.append(Baseline(name, method, plan_prune_layers(member), {"member": member.name}))
    return out
