"""Decoding one batch of requests for one member: prefill, then a token a step, with a KV cache.

Each row has its own sampling (greedy at temperature 0, else temperature and
top-p with its own seeded generator) and its own end (EOS, ``max_tokens``, or
its callback saying stop, e.g. at a stop string). Prompts of different
lengths are left-padded with an attention mask and per-row positions; a row
that ends leaves the batch (its cache rows are dropped), so a short request
never waits for a long one's tokens to be computed. A single unpadded row
runs exactly the steps ``generate(do_sample=False)`` runs, so its greedy
tokens are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

#: Called with each new token id; returns False when the row is done (a stop string was seen).
OnToken = Callable[[int], bool]


@dataclass
class Sampling:
    """How one request picks its tokens."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.temperature <= 0:
            return None
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


@dataclass
class Row:
    """One request inside a batch: its prompt, sampling, callback, and (filled in) why it ended."""

    ids: Sequence[int]
    sampling: Sampling
    on_token: OnToken
    finish_reason: str | None = None
    generated: int = 0
    _gen: torch.Generator | None = field(default=None, repr=False)


def pick(logits: torch.Tensor, sampling: Sampling, gen: torch.Generator | None) -> int:
    """The next token for one row: argmax at temperature 0, else a top-p sample."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < sampling.top_p  # always keeps the top token
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def _prefill_inputs(rows: Sequence[Row], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r.ids) :] = torch.tensor(list(r.ids), dtype=torch.long)
        mask[i, width - len(r.ids) :] = 1
    return ids.to(device), mask.to(device)


def _cache_arg(model: Any) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.25 (``past_key_values``,
    deprecated there, before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, cache_arg: str
) -> torch.Tensor:
    """Last-position logits; no mask passed when nothing is padding (the same path ``generate`` takes)."""
    out = model(
        input_ids=ids,
        attention_mask=None if bool(mask.all()) else mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
        **{cache_arg: cache},
    )
    return out.logits[:, -1, :]


def _step(rows: list[Row], logits: torch.Tensor, eos: set[int]) -> list[int]:
    """Pick each live row's token, report it, and mark the rows that end; returns the tokens."""
    greedy = logits.argmax(dim=-1).tolist()  # every greedy row in one step (one device sync)
    tokens = []
    for i, r in enumerate(rows):
        tok = greedy[i] if r.sampling.temperature <= 0 else pick(logits[i], r.sampling, r._gen)
        tokens.append(tok)
        r.generated += 1
        if tok in eos or not r.on_token(tok):  # EOS is never shown; a stop string ends the row too
            r.finish_reason = "stop"
        elif r.generated >= r.sampling.max_tokens:
            r.finish_reason = "length"
    return tokens


def run_batch(model: Any, rows: Sequence[Row], pad_id: int, eos: set[int]) -> None:
    """Decode every row to its end; each row's ``finish_reason`` says why it ended."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    for r in rows:
        r._gen = r.sampling.generator(device)
    live = [r for r in rows if r.sampling.max_tokens > 0]
    for r in rows:
        if r.sampling.max_tokens <= 0:
            r.finish_reason = "length"
    if not live:
        return
    ids, mask = _prefill_inputs(live, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    arg = _cache_arg(model)
    with torch.inference_mode():
        logits = _forward(model, ids, mask, positions, cache, arg)
        while True:
            tokens = _step(live, logits, eos)
            keep = [i for i, r in enumerate(live) if r.finish_reason is None]
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                live = [live[i] for i in keep]
                tokens = [tokens[i] for i in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
            logits = _forward(model, step_ids, mask, positions, cache, arg)
