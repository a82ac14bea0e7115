"""What a perplexity is taken over: the scored text (its UTF-8 bytes and words) and lm-eval's rolling windows.

Token perplexity depends on the tokenizer; bits per byte and word perplexity do
not, and are what lm-evaluation-harness reports (its ``loglikelihood_rolling``
tasks: ``bits_per_byte = NLL / (bytes * ln 2)`` over ``len(doc.encode())``
bytes, ``word_perplexity = exp(NLL / words)`` over ``len(re.split(r"\\s+", doc))``
words). :class:`TextCount` counts the text a set of scored tokens covers the
same way. :func:`rolling_blocks` cuts one document into lm-eval's windows
(``utils.get_rolling_token_windows`` with ``context_len=1``, made disjoint), as
blocks the rest of evaluation scores like any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from .blocks import IGNORE, Block, tokenize  # torch-free until a block is built: flags read WINDOWS without it

WINDOWS = ("packed", "rolling")
DEFAULT_WINDOW = "packed"
_WORD_SPLIT = re.compile(r"\s+")


@dataclass
class TextCount:
    """UTF-8 bytes and whitespace words of the text whose tokens were scored."""

    bytes: int = 0
    words: int = 0

    def add(self, text: str) -> None:
        if text:
            self.bytes += len(text.encode("utf-8"))
            self.words += len(_WORD_SPLIT.split(text))


def check_window(window: str) -> None:
    from ..errors import DataError

    if window not in WINDOWS:
        raise DataError(
            f"unknown --window {window!r}; use packed (blocks of --seq-len over the token stream) "
            "or rolling (lm-eval's loglikelihood_rolling windows, one document at a time)"
        )


def covered_text(tokenizer: Any, text: str, tokens: int) -> str:
    """The prefix of ``text`` that its first ``tokens`` tokens (as packing encodes it, special tokens
    included) stand for: up to the end of the last of them."""
    if tokens <= 0:
        return ""
    try:
        offsets = tokenize(tokenizer, text, return_offsets_mapping=True)["offset_mapping"][:tokens]
    except (NotImplementedError, KeyError, TypeError, ValueError):  # a slow tokenizer has no offsets
        ids = list(tokenize(tokenizer, text)["input_ids"])[:tokens]
        return str(text)[: len(tokenizer.decode(ids, skip_special_tokens=True))]
    return str(text)[: max((int(end) for _, end in offsets), default=0)]


def prefix_token(tokenizer: Any) -> int:
    """lm-eval's prefix token (``HFLM.prefix_token_id``): what the first token of a document is
    predicted from, the BOS where the tokenizer has one, else the EOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos if bos is not None else tokenizer.eos_token_id)


def document_tokens(tokenizer: Any, text: str) -> tuple[list[int], int]:
    """A document's tokens as lm-eval's ``tok_encode`` gives them, less a leading BOS equal to the prefix
    token (the BOS is context, never a prediction: SPEC section 7; lm-eval scores it, see docs/eval.md),
    and how many leading tokens were left out (0 or 1)."""
    ids = list(tokenize(tokenizer, text)["input_ids"])
    if ids and ids[0] == getattr(tokenizer, "bos_token_id", None) == prefix_token(tokenizer):
        return ids[1:], 1
    return ids, 0


def _window(inputs: list[int], targets: list[int], seq_len: int, pad_id: int) -> Block:
    """One window: ``inputs`` (at most ``seq_len``), the last ``len(targets)`` positions scored."""
    import torch

    n, k = len(inputs), len(targets)
    ids = torch.full((seq_len,), pad_id, dtype=torch.long)
    labels = torch.full((seq_len,), IGNORE, dtype=torch.long)
    mask = torch.zeros(seq_len, dtype=torch.bool)
    ids[:n] = torch.tensor(inputs, dtype=torch.long)
    mask[:n] = True
    labels[n - k : n] = torch.tensor(targets, dtype=torch.long)
    return Block(ids, labels, mask)


def rolling_blocks(tokens: list[int], prefix: int, seq_len: int, pad_id: int) -> Iterable[Block]:
    """lm-eval's rolling windows over one document: the first predicts its first ``seq_len`` tokens from
    the prefix token on; each next one predicts the following ``seq_len`` tokens (fewer at the end) with
    the window's full ``seq_len`` tokens of context before them (more context for a short last window)."""
    if not tokens:
        return
    first = min(seq_len, len(tokens))
    yield _window([prefix] + tokens[: first - 1], tokens[:first], seq_len, pad_id)
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, seq_len)
        end = done + n
        yield _window(tokens[end - seq_len - 1 : end - 1], tokens[end - n : end], seq_len, pad_id)
        done = end
