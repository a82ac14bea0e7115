"""Tokenization and packing: documents into fixed-length blocks, BOS at every block (SPEC section 7).

See the package docstring for the packing and BOS rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

if TYPE_CHECKING:
    import torch

from ..errors import DataError
from .sources import load_all_documents

BOS_POLICIES = ("auto", "always", "never")
DEFAULT_BOS = "auto"  # --bos: follow the tokenizer
IGNORE = -100  # label of a position no loss scores


def tokenize(tokenizer: Any, text: str, **kwargs: Any) -> Any:
    """The tokenizer's encoding of ``text`` with the model's own special tokens, which a span of a file
    (:class:`~.sources.TextSpan`) gets only where the file itself starts."""
    return tokenizer(str(text), add_special_tokens=getattr(text, "starts", True), **kwargs)


def encode_document(tokenizer: Any, text: str, eos_id: int) -> list[int]:
    """A document's tokens (:func:`tokenize`), then EOS where the document (or the file a span is
    of) ends."""
    ids = list(tokenize(tokenizer, text)["input_ids"])
    if getattr(text, "ends", True) and (not ids or ids[-1] != eos_id):
        ids.append(eos_id)
    return ids


def eos_id_of(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token, which packing needs to separate documents")
    return int(eos)


def pad_id_of(tokenizer: Any) -> int:
    """The token padding positions hold (masked, never scored): the tokenizer's pad, else its EOS."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else eos_id_of(tokenizer)


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether this tokenizer puts its BOS in front of a text (so the model expects one)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    if getattr(tokenizer, "add_bos_token", None) is True:
        return True
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def check_bos_policy(policy: str) -> None:
    if policy not in BOS_POLICIES:
        raise DataError(f"unknown --bos {policy!r}; use auto (follow the tokenizer), always or never")


def block_bos(tokenizer: Any, policy: str = DEFAULT_BOS) -> int | None:
    """The token every packed block starts with under ``policy``; None: blocks start mid-stream.

    ``auto`` follows :func:`tokenizer_adds_bos`; ``always`` needs a BOS token;
    ``never`` reproduces packing without it (how schema-1 results were measured).
    """
    check_bos_policy(policy)
    if policy == "never":
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if policy == "always":
        if bos is None:
            raise DataError("--bos always: the tokenizer has no BOS token; use --bos auto or never")
        return int(bos)
    return int(bos) if bos is not None and tokenizer_adds_bos(tokenizer) else None


@dataclass
class Block:
    """One packed sequence: inputs, next-token labels (``-100``: ignored) and a padding mask."""

    input_ids: torch.Tensor  # (seq_len,) long
    labels: torch.Tensor  # (seq_len,) long
    mask: torch.Tensor  # (seq_len,) bool, False on padding


@dataclass
class StreamPosition:
    """Where the next block starts: document ``doc`` of pass ``epoch``, token ``offset`` in it."""

    epoch: int = 0
    doc: int = 0
    offset: int = 0

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "doc": self.doc, "offset": self.offset}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StreamPosition":
        return cls(int(data["epoch"]), int(data["doc"]), int(data["offset"]))


@dataclass
class _Segment:
    epoch: int
    doc: int
    tokens: list[int]
    start: int  # first token not yet emitted as an input


class BlockStream:
    """Packed blocks from documents, resumable at any block boundary.

    ``documents(epoch)`` is called once per pass over the data; with ``repeat`` the
    stream starts another pass when one ends (training), else the last partial
    block is padded (``pad_last``) or dropped. ``position`` after any block says
    exactly where the next block starts, so a resumed run sees the same blocks.
    """

    def __init__(
        self,
        documents: Callable[[int], Iterable[str]],
        tokenizer: Any,
        seq_len: int,
        *,
        repeat: bool = False,
        pad_last: bool = False,
        position: StreamPosition | None = None,
        describe: str = "the data",
        bos_id: int | None = None,
    ) -> None:
        """``bos_id``: the token each block starts with (:func:`block_bos`), None for plain packing."""
        if seq_len < 1:
            raise DataError(f"--seq-len must be at least 1 (got {seq_len})")
        if bos_id is not None and seq_len < 2:
            raise DataError(f"--seq-len must be at least 2 when blocks start with BOS (got {seq_len})")
        self.documents, self.tokenizer, self.seq_len, self.bos_id = documents, tokenizer, seq_len, bos_id
        self.repeat, self.pad_last, self.describe = repeat, pad_last, describe
        self.eos_id = eos_id_of(tokenizer)
        self.pad_id = pad_id_of(tokenizer)
        self.position = position or StreamPosition()
        self.blocks_emitted = 0

    def _segments(self) -> Iterator[_Segment]:
        epoch, skip, offset = self.position.epoch, self.position.doc, self.position.offset
        while True:
            n_docs = 0
            for i, text in enumerate(self.documents(epoch)):
                n_docs += 1
                if i < skip:
                    continue
                tokens = encode_document(self.tokenizer, text, self.eos_id)
                start = offset if i == skip else 0
                if start < len(tokens):
                    yield _Segment(epoch, i, tokens, start)
            if n_docs == 0:
                raise DataError(
                    f"{self.describe} has no documents (blank ones are left out); check --data and the split"
                )
            if skip >= n_docs:
                raise DataError(
                    f"{self.describe} has {n_docs} documents, fewer than the checkpoint "
                    "had read; resume with the same --data"
                )
            if not self.repeat:
                return
            epoch, skip, offset = epoch + 1, 0, 0

    def __iter__(self) -> Iterator[Block]:
        import torch  # here, not at import: flags read DEFAULT_BOS without torch (instant --help)

        T = self.seq_len
        buf: list[_Segment] = []
        have = 0  # tokens available in buf from each segment's start
        segs = self._segments()
        exhausted = False
        while True:
            while have < T + 1 and not exhausted:
                seg = next(segs, None)
                if seg is None:
                    exhausted = True
                    break
                buf.append(seg)
                have += len(seg.tokens) - seg.start
            if have == 0:
                return
            head = buf[0].tokens[buf[0].start]
            prefix = [self.bos_id] if self.bos_id is not None and head != self.bos_id else []
            room = T - len(prefix)  # stream tokens this block takes as inputs
            if have < room + 1 and not self.pad_last:
                if self.blocks_emitted == 0:
                    raise DataError(
                        f"{self.describe} has only {have} tokens; a block needs "
                        f"{room + 1} (--seq-len {T}{' with BOS' if prefix else ''}, plus one); "
                        "add data or lower --seq-len"
                    )
                return
            ids: list[int] = []
            ends: list[bool] = []
            for seg in buf:
                part = seg.tokens[seg.start : seg.start + room + 1 - len(ids)]
                ids.extend(part)
                last = len(seg.tokens) - 1
                ends.extend(seg.start + j == last for j in range(len(part)))
                if len(ids) == room + 1:
                    break
            n = min(len(ids), room)  # stream inputs in this block
            p = len(prefix)
            inputs = torch.full((T,), self.pad_id, dtype=torch.long)
            labels = torch.full((T,), IGNORE, dtype=torch.long)  # the BOS position predicts nothing
            mask = torch.zeros(T, dtype=torch.bool)
            inputs[: p + n] = torch.tensor(prefix + ids[:n], dtype=torch.long)
            mask[: p + n] = True
            nxt = torch.tensor(ids[1 : n + 1], dtype=torch.long)
            labels[p : p + len(nxt)] = nxt
            boundary = torch.tensor(ends[: len(nxt)], dtype=torch.bool)
            labels[p : p + len(nxt)][boundary] = IGNORE
            # Advance by the n inputs emitted.
            todo = n
            while todo:
                seg = buf[0]
                take = min(todo, len(seg.tokens) - seg.start)
                seg.start += take
                todo -= take
                have -= take
                if seg.start == len(seg.tokens):
                    buf.pop(0)
            if buf:
                self.position = StreamPosition(buf[0].epoch, buf[0].doc, buf[0].start)
            else:
                nxt_seg = next(segs, None)
                if nxt_seg is None:
                    exhausted = True
                    self.position = StreamPosition(self.position.epoch + 1, 0, 0)
                else:
                    buf.append(nxt_seg)
                    have += len(nxt_seg.tokens) - nxt_seg.start
                    self.position = StreamPosition(nxt_seg.epoch, nxt_seg.doc, nxt_seg.start)
            self.blocks_emitted += 1
            yield Block(inputs, labels, mask)
            if n < room:
                return


def iter_blocks(
    sources: str | Sequence[str],
    split: str,
    tokenizer: Any,
    seq_len: int,
    *,
    text_field: str = "text",
    pad_last: bool = True,
    max_blocks: int | None = None,
    bos_id: int | None = None,
) -> Iterator[Block]:
    """Packed blocks of ``seq_len`` tokens from ``sources`` in ``split`` (one pass).

    For evaluation: ``pad_last`` keeps the final partial block (padding masked),
    so every token of the split is scored once.
    """
    srcs = [sources] if isinstance(sources, str) else list(sources)
    stream = BlockStream(
        lambda _epoch: load_all_documents(srcs, split, text_field),
        tokenizer,
        seq_len,
        pad_last=pad_last,
        describe=f"{split} split of {', '.join(srcs)}",
        bos_id=bos_id,
    )
    for i, block in enumerate(stream):
        if max_blocks is not None and i >= max_blocks:
            return
        yield block


def collate(blocks: Sequence[Block]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack blocks into ``(input_ids, labels, mask)`` batches."""
    import torch

    return (
        torch.stack([b.input_ids for b in blocks]),
        torch.stack([b.labels for b in blocks]),
        torch.stack([b.mask for b in blocks]),
    )
