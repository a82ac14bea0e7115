"""The calibration scorer behind ``--order kl-greedy`` and ``--order beam``.

KL(teacher || member) of the next-token distributions, averaged over the
calibration tokens. The teacher's log-probabilities are computed once; every
batch of candidate members is then evaluated in memory through the shared
trunk of :mod:`boomerang_cli.evaluate.trunk` (candidates of one search step
differ in a single block, so they share most of their layers), nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .arch import ModelInfo
from .evaluate.perplexity import EvalData, attention_mask, load_eval_data, model_logits
from .evaluate.runner import load_model, load_tokenizer
from .evaluate.trunk import LayerRunner, Stack, TrunkEvaluator
from .member import Member
from .progress import NULL, Progress

ROWS_PER_CHUNK = 1024  # token rows per softmax chunk: bounds the fp32 vocab-sized temporaries


@dataclass(frozen=True)
class CalibrationSpec:
    """Which text calibrates the order, recorded in the manifest."""

    sources: tuple[str, ...]
    samples: int = 64
    seq_len: int = 128
    split: str = "train"
    text_field: str = "text"

    def to_json(self) -> dict[str, Any]:
        return {"data": list(self.sources), "split": self.split, "samples": self.samples,
                "seq_len": self.seq_len}


def token_kl(teacher_logprobs: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum over unmasked tokens of KL(p_teacher || p_member), and the token count."""
    t = teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1])
    s = logits.reshape(-1, logits.shape[-1])
    keep = mask.reshape(-1).bool()
    total = torch.zeros((), dtype=torch.float64)
    for i in range(0, t.shape[0], ROWS_PER_CHUNK):
        rows = keep[i:i + ROWS_PER_CHUNK]
        if not rows.any():
            continue
        tl = t[i:i + ROWS_PER_CHUNK][rows].float()
        sl = F.log_softmax(s[i:i + ROWS_PER_CHUNK][rows].float(), dim=-1)
        total += (tl.exp() * (tl - sl)).sum().double()
    return float(total), int(keep.sum())


class KLScorer:
    """Members -> mean token KL to the teacher on the calibration data."""

    def __init__(
        self,
        models: Mapping[str, ModelInfo],
        spec: CalibrationSpec,
        *,
        batch_size: int = 8,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: Progress = NULL,
    ) -> None:
        self.progress = progress
        self.batch_size = batch_size
        device = torch.device(device)
        tokenizer = load_tokenizer(models["teacher"].path)
        self.data: EvalData = load_eval_data(list(spec.sources), spec.split, tokenizer, spec.seq_len,
                                             spec.samples * spec.seq_len, spec.text_field)
        loaded = {role: load_model(info, dtype, device) for role, info in models.items()}
        self.runners = {role: LayerRunner(m, models[role].arch.layers_path) for role, m in loaded.items()}
        # A position counts when it is real input (mask) and predicts something.
        self.masks = [mask & (labels != -100) for _, labels, mask in self.data.batches(batch_size)]
        self.teacher_logprobs = []
        for ids, _, mask in self.data.batches(batch_size):
            logits = model_logits(loaded["teacher"], ids, mask)
            self.teacher_logprobs.append(F.log_softmax(logits.float(), dim=-1))
            del logits
        self.evaluated = 0

    def __call__(self, members: Sequence[Member]) -> list[float]:
        stacks = {str(i): Stack.of_member(m) for i, m in enumerate(members)}
        ev = TrunkEvaluator(self.runners, stacks)
        sums = {k: 0.0 for k in stacks}
        count = 0
        task = self.progress.task(f"calibration KL of {len(members)} members", self.data.num_batches(self.batch_size), unit="batches")
        for b, (ids, _, mask) in enumerate(self.data.batches(self.batch_size)):
            keep = self.masks[b]

            def on_leaf(key: str, logits: torch.Tensor) -> None:
                total, _ = token_kl(self.teacher_logprobs[b], logits, keep)
                sums[key] += total

            ev.run(ids, attention_mask(mask), on_leaf)
            count += int(keep.sum())
            task.advance(1)
        self.progress.finish(task)
        self.evaluated += len(members)
        return [sums[str(i)] / max(count, 1) for i in range(len(members))]
