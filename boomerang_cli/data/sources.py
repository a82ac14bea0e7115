"""Data sources and the split rule: what ``--data`` names, read as documents of ``train`` or ``validation``.

See the package docstring for the split rule: rows and stdlib files by key hash, a text file's tail held out.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import DataError

SPLITS = ("train", "validation", "all")  # "all": every document of the source, both splits
VALIDATION_PER_10K = 200  # 2% of documents (of a text file's characters) are held out
#: What ``train``/``validation`` mean for a source's documents, recorded with results and checkpoints:
#: 1 cut text sources of fewer than 50 files into paragraphs (manifest schema <= 2); 2 keeps every file whole
#: and holds out the tail of each text file. Rows and the stdlib corpus split the same way under both.
SPLIT_RULE = 2

#: Suffixes read as one plain-text document per file when a directory is given.
TEXT_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".markdown",
        ".rst",
        ".tex",
        ".py",
        ".pyi",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".rs",
        ".go",
        ".java",
        ".js",
        ".ts",
        ".sh",
        ".html",
        ".css",
        ".toml",
        ".yaml",
        ".yml",
        ".ini",
        ".cfg",
    }
)
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
STDLIB = "stdlib"
#: The stdlib's English: each file's docstrings as one document (the file's key, so the code's split),
#: and each of pydoc's help topics (``pydoc_data/topics.py``, keyed by topic) as one.
STDLIB_DOCS = "stdlib-docs"
BUILTIN_SOURCES = (STDLIB, STDLIB_DOCS)
PYDOC_TOPICS = "pydoc_data/topics.py"
#: Directory names left out of the stdlib corpus (third-party code and test suites).
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def is_builtin(source: str) -> bool:
    """A corpus of the running Python (``stdlib``, ``stdlib-docs``), not a path or a hub id."""
    return source in BUILTIN_SOURCES


def split_rule_changed(sources: Sequence[str]) -> bool:
    """Whether split rule 1 may have read ``sources`` otherwise than rule 2: any source that is not the
    stdlib corpus, a JSONL/Parquet file of rows or an ``hf:`` dataset (a text path, or a hub id that
    could name a local directory), so records and checkpoints of rule 1 are not mixed with rule 2's."""
    rows = tuple(JSONL_SUFFIXES | PARQUET_SUFFIXES)
    return not all(is_builtin(s) or s.startswith("hf:") or s.lower().endswith(rows) for s in sources)


class TextSpan(str):
    """A contiguous part of one document (a text file's train head or held-out tail).

    It is still text (a ``str``); ``starts``/``ends`` say whether it begins or ends the
    file, so packing puts the tokenizer's BOS only where the file starts and an EOS
    only where it ends, never where the file has none.
    """

    starts: bool
    ends: bool

    def __new__(cls, text: str, starts: bool, ends: bool) -> "TextSpan":
        span = super().__new__(cls, text)
        span.starts, span.ends = starts, ends
        return span


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def split_of(key: str) -> str:
    """``"validation"`` for 2% of document keys, chosen by hash, else ``"train"``."""
    return "validation" if _key_hash(key) % 10_000 < VALIDATION_PER_10K else "train"


def _in_split(key: str, split: str) -> bool:
    return split == "all" or split_of(key) == split


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use train, validation or all")


def holdout_start(text: str) -> int:
    """Where a text file's held-out tail starts: at the start of the line that holds the point 2% of its
    characters (trailing whitespace not counted) before its end, or after the last space when the text
    is one line; ``len(text)`` (nothing held out) when neither boundary exists."""
    body = len(text.rstrip())
    if body < 2:
        return len(text)
    pos = body - max(1, -(-body * VALIDATION_PER_10K // 10_000))
    cut = text.rfind("\n", 0, pos) + 1
    if cut == 0:
        cut = max(text.rfind(" ", 0, pos), text.rfind("\t", 0, pos)) + 1
    return cut if cut > 0 else len(text)


def split_text(text: str, split: str) -> TextSpan | None:
    """One text file's part in ``split``: all of it, its head (train) or its held-out tail (validation);
    None when that part is empty. ``train + validation`` is the file's text, both contiguous."""
    if split == "all":
        return TextSpan(text, True, True)
    cut = holdout_start(text)
    part = TextSpan(text[:cut], True, cut == len(text)) if split == "train" else TextSpan(text[cut:], cut == 0, True)
    return part if part else None


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


def docstrings(text: str) -> str:
    """A Python file's docstrings (module, classes, functions, in source order), a blank line apart;
    empty when it has none or does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return ""
    nodes = [
        n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return "\n\n".join(d for d in (ast.get_docstring(n) for n in nodes) if d)


def _stdlib_docs(split: str) -> Iterator[str]:
    """``stdlib-docs``: each stdlib file's docstrings, then pydoc's help topics, one document each."""
    for key, path in stdlib_files():
        if key != PYDOC_TOPICS and _in_split(key, split):
            yield docstrings(_read_text(path))
    topics = stdlib_root() / PYDOC_TOPICS
    if not topics.is_file():
        return
    for node in ast.walk(ast.parse(_read_text(topics))):
        for k, v in zip(node.keys, node.values) if isinstance(node, ast.Dict) else ():
            name, text = getattr(k, "value", None), getattr(v, "value", None)
            if isinstance(name, str) and isinstance(text, str) and _in_split(f"{PYDOC_TOPICS}:{name}", split):
                yield text


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
        raise DataError(
            f"{where}: not UTF-8 text (undecodable byte at offset {exc.start}); convert it to UTF-8 "
            "or leave it out of --data"
        ) from None


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
                raise DataError(
                    f"{path}:{lineno}: not valid JSON; each line of a .jsonl file must be one object"
                ) from None
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
        raise DataError(
            f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names[:8])}); pass --text-field"
        )
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if _in_split(f"{key_prefix}:{row}", split) and isinstance(value, str):
                yield value
            row += 1


def _is_rows(path: Path) -> bool:
    """A file of rows (JSONL, Parquet), each a document; any other file is one text document."""
    return path.suffix.lower() in JSONL_SUFFIXES | PARQUET_SUFFIXES


def _iter_file(path: Path, key: str, split: str, text_field: str) -> Iterator[str]:
    """A file's documents in ``split``: JSONL/Parquet rows by key hash, a text file's span (split_text)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, key, split, text_field)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path, key, split, text_field)
    else:
        part = split_text(_read_text(path), split)
        if part is not None:
            yield part


def dir_files(root: Path) -> list[tuple[str, Path]]:
    """The data files of directory ``root`` as the loader reads them: (relative posix path, path), sorted."""
    return _dir_files(root)


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
    return (
        source.startswith((".", "/", "~"))
        or os.sep in source.replace("/", "", 1)
        or suffix in TEXT_SUFFIXES | JSONL_SUFFIXES | PARQUET_SUFFIXES
    )


def public_source(source: str) -> str:
    """How a card names a data source: local files by name only (cards get published), others as given."""
    if is_builtin(source) or source.startswith("hf:") or not Path(source).expanduser().exists():
        return f"`{source}`"
    return f"a local `{Path(source).expanduser().resolve().name}`"


def public_sources(sources: Sequence[str], split: str | None = None) -> str:
    """``public_source`` of several sources, with the split when given."""
    names = ", ".join(public_source(s) for s in sources)
    return f"{names} ({split} split)" if split else names


def check_source(source: str) -> None:
    """Fail early, with the fix, on a source that cannot be read (hub sources are checked on use)."""
    if is_builtin(source) or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_path(source):
            raise DataError(
                f"{source}: no such file or directory; pass files, a directory, a hub dataset id or 'stdlib' to --data"
            )
        return
    if path.is_dir() and not _dir_files(path):
        raise DataError(f"{source}: no text, .jsonl or .parquet files in this directory")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{source}: empty file; pass a file with text in it")
    for p in [path] if path.is_file() else [p for _, p in _dir_files(path)]:
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
        ok = (
            b"\0" not in head
            and codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < size) is not None
        )
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
    if source == STDLIB_DOCS:
        yield from _stdlib_docs(split)
        return
    path = Path(source).expanduser()
    if not (path.is_file() or path.is_dir()):
        yield from _iter_hub(source, split, text_field)
        return
    files = [(path.name, path)] if path.is_file() else _dir_files(path)
    held = False
    for key, p in files:
        for doc in _iter_file(p, key, split, text_field):
            held = held or not _is_rows(p)
            yield doc
    if split == "validation" and not held and not any(_is_rows(p) for _, p in files):
        raise DataError(
            f"{source}: too short to hold out a validation part (its last 2% must start at a "
            "line or word boundary); pass --split all to use all of it, or add text"
        )


def load_all_documents(sources: Sequence[str], split: str = "train", text_field: str = "text") -> Iterator[str]:
    """The documents of several sources, one after the other."""
    for source in sources:
        yield from load_documents(source, split, text_field)
