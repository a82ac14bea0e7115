"""Perplexity of many stacks at once: through the shared trunk when it checks out, else one by one.

The trunk (:mod:`boomerang_cli.forward.trunk`) is checked on the first batch against one member
built as a standalone model; if that check fails, or the architecture cannot
be run layer by layer, every model is evaluated on its own and the result
says ``"trunk": false`` with the reason.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import UnsupportedArchitectureError
from ..models import attention_mask
from ..progress import NULL, Progress
from .options import TrunkInfo
from ..forward.perplexity import NLL, EvalData, batch_nll, model_logits, model_nll, relative_difference
from ..forward.trunk import LayerRunner, Stack, TrunkEvaluator

#: Largest relative NLL difference between the trunk and a standalone member on the check batch.
TRUNK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
TRUNK_TOLERANCE_LOW_PRECISION = 1e-2


class TrunkMismatch(Exception):
    """The shared trunk disagreed with a standalone member: do not trust it for this model."""


def _check_key(stacks: Mapping[str, Stack]) -> str:
    """The stack the trunk is checked on: one mixing sources (head and embeddings apart if any), smallest."""
    return min(
        stacks, key=lambda k: (not stacks[k].mixed, stacks[k].embed_from == stacks[k].head_from, len(stacks[k].layers))
    )


def trunk_perplexities(
    stacks: Mapping[str, Stack],
    runners: Mapping[str, LayerRunner],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    tolerance: float,
    progress: Progress = NULL,
) -> tuple[dict[str, NLL], TrunkInfo]:
    """Perplexity of every stack through the prefix tree, checked on the first block.

    The check builds one member (mixing sources, smallest) as a standalone model
    and compares its NLL on the first block with the trunk's; a mismatch beyond
    ``tolerance`` raises :class:`TrunkMismatch`.
    """
    ev = TrunkEvaluator(runners, stacks)
    check_key = _check_key(stacks)
    results = {k: NLL() for k in stacks}
    nb = data.num_batches(batch_size)
    task = progress.task("perplexity (shared trunk)", nb * (ev.layer_passes + len(stacks)), unit="layers")
    check: dict[str, Any] = {}
    for i, (ids, labels, mask) in enumerate(data.batches(batch_size)):
        am = attention_mask(mask)
        batch: dict[str, tuple[float, int]] = {}
        first: list[tuple[float, int]] = []

        def on_leaf(key: str, logits: torch.Tensor) -> None:
            batch[key] = batch_nll(logits, labels)
            if i == 0 and key == check_key:
                first.append(batch_nll(logits[:1], labels[:1]))
            task.advance(1)

        ev.run(ids, am, on_leaf, on_layer=lambda: task.advance(1))
        if i == 0:  # the check: the first block through the standalone model
            model = build(stacks[check_key])
            ref = batch_nll(model_logits(model, ids[:1], mask[:1]), labels[:1])
            del model
            diff = relative_difference(ref[0], first[0][0])
            check = {"member": check_key, "relative_difference": diff, "tolerance": tolerance}
            if not diff <= tolerance:
                raise TrunkMismatch(
                    f"shared trunk disagrees with standalone {check_key} (relative NLL difference "
                    f"{diff:.2e} > {tolerance:.0e})"
                )
        for key, (total, n) in batch.items():
            results[key].add(total, n)
    progress.finish(task)
    return results, TrunkInfo(True, None, ev.layer_passes, ev.flat_passes, check)


def separate_perplexities(
    stacks: Mapping[str, Stack],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    progress: Progress = NULL,
) -> dict[str, NLL]:
    """Perplexity of every stack as its own model, one after the other (nothing shared)."""
    nb = data.num_batches(batch_size)
    task = progress.task("perplexity (member by member)", nb * len(stacks), unit="batches")
    out: dict[str, NLL] = {}
    for key, stack in stacks.items():
        task.update(description=f"perplexity of {key}")
        model = build(stack)
        out[key] = model_nll(model, data, batch_size, on_batch=lambda: task.advance(1))
        del model
    progress.finish(task)
    return out


def stack_perplexities(
    stacks: Mapping[str, Stack],
    runners: Mapping[str, LayerRunner],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    *,
    trunk: bool,
    dtype: torch.dtype,
    progress: Progress = NULL,
) -> tuple[dict[str, NLL], TrunkInfo]:
    """Shared trunk when asked and it works for this architecture, else member by member (said so)."""
    reason = "disabled (--no-trunk)"
    if trunk:
        tol = TRUNK_TOLERANCE.get(dtype, TRUNK_TOLERANCE_LOW_PRECISION)
        try:
            return trunk_perplexities(stacks, runners, data, batch_size, build, tol, progress)
        except (TrunkMismatch, UnsupportedArchitectureError) as exc:
            reason = str(exc)
    flat = sum(len(s.layers) for s in stacks.values())
    results = separate_perplexities(stacks, data, batch_size, build, progress)
    return results, TrunkInfo(False, reason, None, flat, None)
