"""Text data for distillation and evaluation: sources, splits, tokenization, packing.

A *source* is what the user passes as ``--data``: a text file or directory
(``.txt``, ``.md``, ``.py``, ...), a ``.jsonl`` file (one JSON object per line,
text under ``--text-field``), a ``.parquet`` file (needs pyarrow), a Hugging
Face dataset id (streamed through ``datasets``, an optional extra), or the
builtin ``stdlib`` corpus (the running Python's standard library sources).

**Split rule.** Every document has a stable *key* (its path relative to the
source, ``path:line`` for a JSONL row, ``path:row`` for a Parquet row,
``id:row`` for a hub row). A document belongs to ``validation`` when
``sha256(key)``'s first 8 bytes, as a big-endian integer, modulo 10000 is
below 200 (2%), else to ``train``. The rule depends on nothing but the key, so
every process, run and machine sees the same split, and a file never moves
between splits when others are added.

A text source with few files (a single file, or a directory of fewer than
``FEW_FILES`` text files) is split *within* its files, so that it still has a
held-out part: a file's documents are its paragraphs (separated by blank
lines), or its lines when it is one paragraph; piece ``i`` has the key
``key#i`` and the same 2% rule applies, and when that holds out none of a
file's pieces, its piece of lowest hash is held out. ``all`` is every document
of both splits.

**Packing.** Each document is tokenized with the model's tokenizer
(``add_special_tokens=True``, so a BOS is added where the model expects one),
followed by EOS, and documents are concatenated into one stream that is cut
into blocks of ``seq_len`` tokens: no padding, and every token is an input
exactly once. A block's labels are the next tokens of the stream (the first
token of the next block for its last position); the label at each document's
EOS is ``-100`` (ignored), because the next document does not follow from it.
Only a final partial block (``pad_last=True``, for evaluation) has padding,
marked in ``mask`` and ignored by every loss.

**BOS at every block** (SPEC section 7). A model whose tokenizer adds a BOS
has only ever seen text behind one, so a block cut from the middle of a
document is put behind one too: the block is the BOS, then ``seq_len - 1``
tokens of the stream. The BOS position predicts nothing (label ``-100``), so
the labels are the same stream tokens as without it, each predicted once with
the context the block gives. A block that starts at a document's own BOS gets
no second one. :func:`block_bos` decides (``--bos auto|always|never``):
``auto`` follows the tokenizer (it adds a BOS when encoding, or says
``add_bos_token``); a config's ``bos_token_id`` alone is no evidence (GPT-2 and
SmolLM2 name one that their tokenizers never add).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .errors import DataError

SPLITS = ("train", "validation", "all")  # "all": every document of the source, both splits
BOS_POLICIES = ("auto", "always", "never")
DEFAULT_BOS = "auto"  # --bos: follow the tokenizer
VALIDATION_PER_10K = 200  # 2% of documents are held out
#: A text source (file or directory) with fewer text files than this is split within its files.
FEW_FILES = 50
IGNORE = -100

#: Suffixes read as one plain-text document per file when a directory is given.
TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".markdown", ".rst", ".tex", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp",
    ".rs", ".go", ".java", ".js", ".ts", ".sh", ".html", ".css", ".toml", ".yaml", ".yml",
    ".ini", ".cfg",
})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
STDLIB = "stdlib"
#: Directory names left out of the stdlib corpus (third-party code and test suites).
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def split_of(key: str) -> str:
    """``"validation"`` for 2% of document keys, chosen by hash, else ``"train"``."""
    return "validation" if _key_hash(key) % 10_000 < VALIDATION_PER_10K else "train"


def _in_split(key: str, split: str) -> bool:
    return split == "all" or split_of(key) == split


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use train, validation or all")


def text_pieces(text: str) -> list[str]:
    """A text file's documents when its source has few files: paragraphs (separated by blank
    lines), or its lines when it is one paragraph."""
    paragraphs = [p for p in re.split(r"\n[ \t\r\f\v]*\n", text) if p.strip()]
    if len(paragraphs) > 1:
        return paragraphs
    return [line for line in text.splitlines() if line.strip()] or paragraphs


def split_pieces(pieces: Sequence[str], key: str, split: str) -> list[str]:
    """The pieces of one file in ``split``: piece ``i`` by the hash of ``key#i`` (the 2% rule), and
    when the rule holds none out, the piece of lowest hash, so a file always has a held-out part."""
    if split == "all":
        return list(pieces)
    hashes = [_key_hash(f"{key}#{i}") for i in range(len(pieces))]
    held = {i for i, h in enumerate(hashes) if h % 10_000 < VALIDATION_PER_10K}
    if not held and pieces:
        held = {min(range(len(pieces)), key=hashes.__getitem__)}
    return [p for i, p in enumerate(pieces) if (i in held) == (split == "validation")]


# -- sources -----------------------------------------------------------------------------


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative key, path) of every stdlib ``.py`` file, sorted by key."""
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                p = Path(dirpath) / name
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def check_text(data: bytes, where: object) -> str:
    """``data`` as text, or a DataError naming ``where``: the one check that data is text, not binary.

    NUL bytes mean binary data (a model, an archive, an image), and bytes that
    are not UTF-8 would be silently replaced; either is refused rather than
    trained or evaluated on.
    """
    if b"\0" in data:
        raise DataError(f"{where}: binary data (NUL bytes), not text; pass text files, .jsonl or .parquet to --data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (undecodable byte at offset {exc.start}); convert it to UTF-8 "
                        "or leave it out of --data") from None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return check_text(data, path)


def _iter_jsonl(path: Path, key_prefix: str, split: str, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not _in_split(f"{key_prefix}:{lineno}", split) or not raw.strip():
                continue
            line = check_text(raw, f"{path}:{lineno}")
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{lineno}: not valid JSON; each line of a .jsonl file must be one object") from None
            yield _field(record, text_field, f"{path}:{lineno}")


def _field(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise DataError(f"{where}: no field {text_field!r}; pass --text-field with the name of the text column")
    value = record[text_field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {text_field!r} is not a string; pass --text-field with the text column")
    return value


def _iter_parquet(path: Path, key_prefix: str, split: str, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow; run: pip install 'boomerang-cli[data]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise DataError(f"{path}: not a readable Parquet file ({exc})".splitlines()[0]) from None
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names[:8])}); "
                        "pass --text-field")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if _in_split(f"{key_prefix}:{row}", split) and isinstance(value, str):
                yield value
            row += 1


def _iter_file(path: Path, key: str, split: str, text_field: str, pieces: bool = False) -> Iterator[str]:
    """A file's documents in ``split``; ``pieces``: a text file is split within itself (few files)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, key, split, text_field)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path, key, split, text_field)
    elif pieces:
        yield from split_pieces(text_pieces(_read_text(path)), key, split)
    elif _in_split(key, split):
        yield _read_text(path)


def _dir_files(root: Path) -> list[tuple[str, Path]]:
    known = TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in known:
                out.append((p.relative_to(root).as_posix(), p))
    return sorted(out)


def _iter_hub(source: str, split: str, text_field: str) -> Iterator[str]:
    """A hub dataset ``name[:config][@hub_split]``, streamed; our split by row hash."""
    name, _, hub_split = source.removeprefix("hf:").partition("@")
    name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source}: Hugging Face datasets need the datasets package; run: pip install 'boomerang-cli[data]'"
        ) from None
    try:
        ds = datasets.load_dataset(name, config or None, split=hub_split or "train", streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as exc:  # datasets/hub raise many kinds (offline, not found, gated)
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise DataError(
            f"{source}: cannot stream this dataset ({msg}); check the id and the network, or pass local files"
        ) from None
    if first is None:
        return
    row = 0
    for record in _chain_one(first, rows):
        if _in_split(f"{name}:{config}:{row}", split):
            yield _field(record, text_field, f"{source} row {row}")
        row += 1


def _chain_one(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _looks_like_path(source: str) -> bool:
    suffix = Path(source).suffix.lower()
    return (source.startswith((".", "/", "~")) or os.sep in source.replace("/", "", 1)
            or suffix in TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES)


def public_source(source: str) -> str:
    """How a card names a data source: local files by name only (cards get published), others as given."""
    if source == STDLIB or source.startswith("hf:") or not Path(source).expanduser().exists():
        return f"`{source}`"
    return f"a local `{Path(source).expanduser().resolve().name}`"


def public_sources(sources: Sequence[str], split: str | None = None) -> str:
    """``public_source`` of several sources, with the split when given."""
    names = ", ".join(public_source(s) for s in sources)
    return f"{names} ({split} split)" if split else names


def check_source(source: str) -> None:
    """Fail early, with the fix, on a source that cannot be read (hub sources are checked on use)."""
    if source == STDLIB or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_path(source):
            raise DataError(f"{source}: no such file or directory; pass files, a directory, "
                            "a hub dataset id or 'stdlib' to --data")
        return
    if path.is_dir() and not _dir_files(path):
        raise DataError(f"{source}: no text, .jsonl or .parquet files in this directory")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{source}: empty file; pass a file with text in it")
    for p in ([path] if path.is_file() else [p for _, p in _dir_files(path)]):
        if p.suffix.lower() not in PARQUET_SUFFIXES:
            _sniff(p)


def _sniff(path: Path, size: int = 8192) -> None:
    """The start of a file is text (:func:`check_text`): a binary file fails before a run, not midway."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:  # incremental: a multi-byte character cut at the end of the sample is fine
        ok = b"\0" not in head and codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < size) is not None
    except UnicodeDecodeError:
        ok = False
    if not ok:
        check_text(head, path)


def load_documents(source: str, split: str = "train", text_field: str = "text") -> Iterator[str]:
    """The documents of one source in one split, in a fixed order; empty (blank) documents are left out."""
    return (text for text in _documents(source, split, text_field) if text.strip())


def _documents(source: str, split: str, text_field: str) -> Iterator[str]:
    _check_split(split)
    check_source(source)
    if source == STDLIB:
        for key, path in stdlib_files():
            if _in_split(key, split):
                yield _read_text(path)
        return
    path = Path(source).expanduser()
    if path.is_file():
        yield from _iter_file(path, path.name, split, text_field, pieces=True)
    elif path.is_dir():
        files = _dir_files(path)
        few = sum(p.suffix.lower() in TEXT_SUFFIXES for _, p in files) < FEW_FILES
        for key, p in files:
            yield from _iter_file(p, key, split, text_field, pieces=few)
    else:
        yield from _iter_hub(source, split, text_field)


def load_all_documents(sources: Sequence[str], split: str = "train", text_field: str = "text") -> Iterator[str]:
    """The documents of several sources, one after the other."""
    for source in sources:
        yield from load_documents(source, split, text_field)


# -- tokenization and packing -------------------------------------------------------------


def encode_document(tokenizer: Any, text: str, eos_id: int) -> list[int]:
    """A document's tokens with the model's own special tokens, then EOS."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids or ids[-1] != eos_id:
        ids.append(eos_id)
    return ids


def eos_id_of(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no EOS token, which packing needs to separate documents")
    return int(eos)


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
    return int(bos) if tokenizer_adds_bos(tokenizer) else None


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

    ``documents()`` is called once per pass over the data; with ``repeat`` the
    stream starts another pass when one ends (training), else the last partial
    block is padded (``pad_last``) or dropped. ``position`` after any block says
    exactly where the next block starts, so a resumed run sees the same blocks.
    """

    def __init__(
        self,
        documents: Callable[[], Iterable[str]],
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
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.position = position or StreamPosition()
        self.blocks_emitted = 0

    def _segments(self) -> Iterator[_Segment]:
        epoch, skip, offset = self.position.epoch, self.position.doc, self.position.offset
        while True:
            n_docs = 0
            for i, text in enumerate(self.documents()):
                n_docs += 1
                if i < skip:
                    continue
                tokens = encode_document(self.tokenizer, text, self.eos_id)
                start = offset if i == skip else 0
                if start < len(tokens):
                    yield _Segment(epoch, i, tokens, start)
            if n_docs == 0:
                raise DataError(f"{self.describe} has no documents (blank ones are left out); check --data "
                                "and the split")
            if skip >= n_docs:
                raise DataError(f"{self.describe} has {n_docs} documents, fewer than the checkpoint "
                                "had read; resume with the same --data")
            if not self.repeat:
                return
            epoch, skip, offset = epoch + 1, 0, 0

    def __iter__(self) -> Iterator[Block]:
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
                    raise DataError(f"{self.describe} has only {have} tokens; a block needs "
                                    f"{room + 1} (--seq-len {T}{' with BOS' if prefix else ''}, plus one); "
                                    "add data or lower --seq-len")
                return
            ids: list[int] = []
            ends: list[bool] = []
            for seg in buf:
                part = seg.tokens[seg.start:seg.start + room + 1 - len(ids)]
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
            inputs[:p + n] = torch.tensor(prefix + ids[:n], dtype=torch.long)
            mask[:p + n] = True
            nxt = torch.tensor(ids[1:n + 1], dtype=torch.long)
            labels[p:p + len(nxt)] = nxt
            boundary = torch.tensor(ends[:len(nxt)], dtype=torch.bool)
            labels[p:p + len(nxt)][boundary] = IGNORE
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
    stream = BlockStream(lambda: load_all_documents(srcs, split, text_field), tokenizer, seq_len,
                         pad_last=pad_last, describe=f"{split} split of {', '.join(srcs)}", bos_id=bos_id)
    for i, block in enumerate(stream):
        if max_blocks is not None and i >= max_blocks:
            return
        yield block


def collate(blocks: Sequence[Block]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack blocks into ``(input_ids, labels, mask)`` batches."""
    return (torch.stack([b.input_ids for b in blocks]), torch.stack([b.labels for b in blocks]),
            torch.stack([b.mask for b in blocks]))

