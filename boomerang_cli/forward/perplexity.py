"""Perplexity: mean next-token negative log-likelihood over a fixed set of token blocks.

The blocks come from :mod:`boomerang_cli.data` (packed, labels already shifted,
``-100`` where nothing is predicted: document ends, padding and a block's
inserted BOS, see ``--bos``), so every model
of a comparison is scored on exactly the same tokens. Log-softmax runs in fp32
in row chunks, whatever the model's dtype, so a large vocabulary never needs a
second full-size copy of the logits.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..data import DEFAULT_BOS, IGNORE, Block, BlockStream, block_bos, collate, mixed_documents
from ..data.blocks import pad_id_of
from ..data.windows import (
    DEFAULT_WINDOW,
    TextCount,
    check_window,
    covered_text,
    document_tokens,
    prefix_token,
    rolling_blocks,
)
from ..errors import DataError
from ..models import attention_mask

#: Rows of logits turned into fp32 log-probabilities at once (bounds the extra memory).
CHUNK_ROWS = 1024  # token rows per softmax chunk: bounds the fp32 vocab-sized temporaries


@dataclass
class NLL:
    """A running sum of token NLLs (nats) and the number of tokens scored."""

    total: float = 0.0
    tokens: int = 0

    def add(self, total: float, tokens: int) -> None:
        self.total += float(total)
        self.tokens += int(tokens)

    @property
    def nll(self) -> float:
        return self.total / self.tokens if self.tokens else math.nan

    @property
    def ppl(self) -> float:
        return _exp(self.nll)

    def units(self, text: TextCount) -> dict[str, Any]:
        """Tokenizer-free units over the scored text, as lm-eval reports them: bits per byte, byte and
        word perplexity (None where the text has no bytes or words)."""
        bpb = self.total / (text.bytes * math.log(2)) if text.bytes else None
        word = self.total / text.words if text.words else None
        return {
            "bytes": text.bytes,
            "words": text.words,
            "bits_per_byte": bpb,
            "byte_perplexity": None if bpb is None else _exp(bpb * math.log(2)),
            "word_perplexity": None if word is None else _exp(word),
        }

    def to_json(self, **extra: Any) -> dict[str, Any]:
        return {"nll": self.nll, "ppl": self.ppl, "tokens": self.tokens, **extra}


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def batch_nll(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> tuple[float, int]:
    """Summed NLL of ``labels`` under ``logits`` (``[B, T, V]``, labels ``[B, T]``; ``-100`` ignored)."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    lab = labels.reshape(-1).to(flat.device)
    total = torch.zeros((), dtype=torch.float64, device=flat.device)
    for i in range(0, flat.shape[0], chunk_rows):
        part = lab[i : i + chunk_rows]
        if bool((part != IGNORE).any()):
            total += F.cross_entropy(
                flat[i : i + chunk_rows].float(), part, ignore_index=IGNORE, reduction="sum"
            ).double()
    return float(total), int((lab != IGNORE).sum())


@dataclass
class EvalData:
    """The token blocks every model is scored on, and what they are."""

    input_ids: torch.Tensor  # [N, T] long
    labels: torch.Tensor  # [N, T] long, -100 = not scored
    mask: torch.Tensor  # [N, T] bool, False on padding
    key: str  # how the manifest names this data, e.g. "stdlib:validation"
    sources: list[str] = field(default_factory=list)
    split: str = "validation"
    seq_len: int = 0
    bos: bool = False  # every block starts with BOS (data.block_bos); rolling: the prefix token is the BOS
    window: str = DEFAULT_WINDOW  # packed | rolling (data.windows)
    text: TextCount = field(default_factory=TextCount)  # bytes and words of the scored text

    @property
    def num_blocks(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Tokens scored (labels that are not ignored)."""
        return int((self.labels != IGNORE).sum())

    def fingerprint(self) -> str:
        """Identity of the exact tokens, so two runs can tell they scored the same text."""
        h = hashlib.sha256()
        for t in (self.input_ids, self.labels):
            h.update(t.to(torch.int64).contiguous().numpy().tobytes())
        return "sha256:" + h.hexdigest()[:16]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for i in range(0, self.num_blocks, batch_size):
            yield self.input_ids[i : i + batch_size], self.labels[i : i + batch_size], self.mask[i : i + batch_size]

    def num_batches(self, batch_size: int) -> int:
        return -(-self.num_blocks // batch_size)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sources": list(self.sources),
            "split": self.split,
            "seq_len": self.seq_len,
            "bos": self.bos,
            "window": self.window,
            "blocks": self.num_blocks,
            "tokens": self.num_tokens,
            "bytes": self.text.bytes,
            "words": self.text.words,
            "fingerprint": self.fingerprint(),
        }


def data_key(sources: Sequence[str], split: str) -> str:
    """``stdlib:validation``, ``corpus/+notes.jsonl:train``: the key metrics are stored under."""
    return f"{'+'.join(sources)}:{split}"


def _recorded(documents: Iterable[str], seen: list[str]) -> Iterator[str]:
    for text in documents:
        seen.append(text)
        yield text


def _packed(
    docs: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int, bos_id: int | None, describe: str
) -> tuple[list[Block], TextCount]:
    """The first blocks of the packed stream, and the text their labels cover: every document the
    stream passed whole, and the prefix of the one it stopped in."""
    seen: list[str] = []
    stream = BlockStream(
        lambda _epoch: _recorded(docs, seen), tokenizer, seq_len, pad_last=True, describe=describe, bos_id=bos_id
    )
    blocks = list(itertools.islice(stream, -(-max_tokens // seq_len)))
    pos, count = stream.position, TextCount()
    whole = len(seen) if pos.epoch > 0 else pos.doc
    for text in seen[:whole]:
        count.add(text)
    if pos.epoch == 0 and pos.offset > 0:  # inputs [0, offset) of this document: labels up to token offset
        count.add(covered_text(tokenizer, seen[pos.doc], pos.offset + 1))
    return blocks, count


def _rolling(docs: Iterable[str], tokenizer: Any, seq_len: int, max_tokens: int) -> tuple[list[Block], TextCount]:
    """lm-eval's rolling windows over each document until ``max_tokens`` tokens are scored (the last
    document cut there)."""
    prefix, count, left = prefix_token(tokenizer), TextCount(), max_tokens
    blocks: list[Block] = []
    pad_id = pad_id_of(tokenizer)
    for text in docs:
        tokens, skipped = document_tokens(tokenizer, text)
        if len(tokens) > left:
            tokens = tokens[:left]
            count.add(covered_text(tokenizer, text, left + skipped))
        else:
            count.add(text)
        blocks.extend(rolling_blocks(tokens, prefix, seq_len, pad_id))
        left -= len(tokens)
        if left <= 0:
            break
    return blocks, count


def load_eval_data(
    sources: Sequence[str],
    split: str,
    tokenizer: Any,
    seq_len: int,
    max_tokens: int,
    text_field: str = "text",
    bos: str = DEFAULT_BOS,
    window: str = DEFAULT_WINDOW,
    weights: Sequence[float] | None = None,
) -> EvalData:
    """The first ``max_tokens`` tokens of ``split`` of ``sources``, in blocks of ``seq_len``.

    ``packed``: whole blocks of the packed stream are taken (the last one may be
    padded when the split runs out), so the count is rounded up to a multiple of
    ``seq_len``; ``bos`` is the ``--bos`` policy (:func:`boomerang_cli.data.block_bos`).
    ``rolling``: lm-eval's windows, document by document, ``max_tokens`` scored tokens.
    ``weights``: the sources interleaved in those proportions (:func:`~boomerang_cli.data.mixed_documents`,
    how calibration reads a student's mixed training text), else one after the other.
    """
    if max_tokens < 1:
        raise DataError(f"--max-tokens must be at least 1 (got {max_tokens})")
    if not sources:
        raise DataError("no evaluation data; pass --data (files, a directory, a hub dataset or stdlib)")
    check_window(window)
    key = data_key(sources, split)
    docs = mixed_documents(list(sources), split, text_field, weights=weights)
    if window == "rolling":
        blocks, count = _rolling(docs, tokenizer, seq_len, max_tokens)
        bos_flag = prefix_token(tokenizer) == getattr(tokenizer, "bos_token_id", None)
    else:
        bos_id = block_bos(tokenizer, bos)
        blocks, count = _packed(docs, tokenizer, seq_len, max_tokens, bos_id, f"{split} split of {', '.join(sources)}")
        bos_flag = bos_id is not None
    if not blocks:
        raise DataError(f"{key}: no tokens to evaluate on; check --data and --split")
    ids, labels, mask = collate(blocks)
    data = EvalData(ids, labels, mask, key, list(sources), split, seq_len, bos_flag, window, count)
    if data.num_tokens == 0:
        raise DataError(f"{key}: the blocks hold no token to predict; add data or raise --max-tokens")
    return data


def model_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    am = attention_mask(mask)
    with torch.no_grad():
        return model(
            input_ids=ids.to(device), attention_mask=None if am is None else am.to(device), use_cache=False
        ).logits


def model_nll(
    model: Any,
    data: EvalData,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> NLL:
    """Perplexity of one ``PreTrainedModel`` on ``data`` (its own forward, no sharing)."""
    out = NLL()
    for ids, labels, mask in data.batches(batch_size):
        logits = model_logits(model, ids, mask)
        out.add(*batch_nll(logits, labels))
        del logits
        if on_batch is not None:
            on_batch()
    return out


def relative_difference(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|), 0 for two zeros (how trunk and per-member results are compared)."""
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale else 0.0
