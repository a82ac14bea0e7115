"""One global batch: this process's share forward and backward, and the held-out evaluation pass.

Loss terms are sums over tokens divided by counts over the whole global batch,
so a run's losses do not depend on how the batch is split across processes
and micro-steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from ..data import IGNORE, Block, collate
from ..member import Member
from ..models import attention_mask
from . import fsdp
from .model import Teacher


def forward_backward(
    model: Any,
    teacher: Teacher,
    acc: Any,
    ids: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int,
    grad_accum: int,
    need_teacher: bool,
    member: Member | None = None,
) -> torch.Tensor:
    """Forward and backward of this process's share of one global batch ``(ids, labels, mask)``.

    Returns ``[loss, ce, kl, cosine]`` of the whole global batch (summed over
    processes); gradients are left in the parameters for the optimizer step.
    ``member``: the step trains that member instead of the student (``--mix``).
    """
    rank, world = acc.process_index, acc.num_processes
    device = acc.device
    ce_denom, tok_denom = int((labels != IGNORE).sum()), int(mask.sum())
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    per_rank = batch_size * grad_accum
    for m in range(grad_accum):
        lo = rank * per_rank + m * batch_size
        x, y, msk = (t[lo : lo + batch_size].to(device) for t in (ids, labels, mask))
        sync = m == grad_accum - 1
        with contextlib.nullcontext() if sync else acc.no_sync(model):
            out = _micro_batch(model, teacher, acc, x, y, msk, ce_denom, tok_denom, need_teacher, member)
            # DDP/FSDP average gradients over processes; our terms are already
            # global means split into per-process sums, so undo the average.
            acc.backward(out["loss"] * world)
        totals += _terms(out)
        del out
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals


def _micro_batch(
    model: Any,
    teacher: Teacher,
    acc: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    msk: torch.Tensor,
    ce_denom: int,
    tok_denom: int,
    need_teacher: bool,
    member: Member | None = None,
) -> dict[str, torch.Tensor]:
    """Teacher forward (if a term needs it), then the student's forward and loss, on one micro-batch."""
    attn = attention_mask(msk)
    t_out = None
    if need_teacher:
        with acc.autocast():
            t_out = teacher(x, attn)
    with fsdp.teacher_head(teacher, model):  # a sharded teacher's head, gathered for KL
        extra = {"member": member} if member is not None else {}  # the student's call unchanged
        return model(
            x,
            y,
            msk,
            attn,
            t_out.final if t_out else None,
            t_out.aligned if t_out else [],
            ce_denom,
            tok_denom,
            **extra,
        )


def _terms(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([out[k].detach().double() for k in ("loss", "ce", "kl", "cosine")])


def evaluate(
    model: Any, teacher: Teacher, acc: Any, blocks: list[Block], batch_size: int, need_teacher: bool
) -> dict[str, float]:
    """Loss terms on held-out blocks, each process scoring its share (collective)."""
    rank, world = acc.process_index, acc.num_processes
    ids, labels, mask = collate(blocks)
    ce_denom, tok_denom = int((labels != IGNORE).sum()), int(mask.sum())
    mine = list(range(rank, len(blocks), world))
    n_real = len(mine)
    mine += [0] * (math.ceil(len(blocks) / world) - n_real)  # equal work per rank: masked-out fillers
    keep = torch.arange(len(mine)) < n_real
    totals = torch.zeros(4, dtype=torch.float64, device=acc.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(mine), batch_size):
            sel = torch.tensor(mine[s : s + batch_size])
            x = ids[sel].to(acc.device)
            msk = (mask[sel] & keep[s : s + batch_size].unsqueeze(1)).to(acc.device)
            y = torch.where(msk, labels[sel].to(acc.device), torch.full_like(x, IGNORE))
            totals += _terms(_micro_batch(model, teacher, acc, x, y, msk, ce_denom, tok_denom, need_teacher))
    if was_training:
        model.train()
    if world > 1:
        torch.distributed.all_reduce(totals)
    loss, ce, kl, cos = (float(v) for v in totals)
    return {
        "loss": loss,
        "ce": ce,
        "kl": kl,
        "cosine": cos,
        "perplexity": math.exp(min(ce, 50.0)),
        "eval_tokens": tok_denom,
    }
