"""Lazy safetensors reading: headers, dtypes, one tensor's bytes on demand.

Like mergekit's lazy loader, nothing here holds a whole model: the reader parses
each file's header and reads one tensor's bytes on demand with ``pread`` (no
mmap, so untouched weights never count towards resident memory). Writing is
:mod:`.tensor_writer`; the ``sha256-tensors:`` digest it records and
:mod:`.integrity` verifies is defined here, below both.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .atomic import file_version
from .errors import BoomerangError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: How ``--dtype`` (and the manifest's ``dtype``) spell a dtype.
DTYPE_FLAGS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: Bytes converted at a time wherever a tensor changes dtype: bounds the extra memory whatever its size.
CHUNK_BYTES = 16 << 20


def parse_dtype(name: str) -> torch.dtype:
    """``bf16``/``bfloat16``/``float32``... to a torch dtype."""
    aliases = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "f32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "f16": torch.float16,
        "half": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    try:
        return aliases[name.lower()]
    except KeyError:
        raise BoomerangError(f"unknown dtype {name!r}; use one of bf16, fp16, fp32") from None


def dtype_flag(dtype: torch.dtype | None) -> str | None:
    """The name ``--dtype`` gives ``dtype`` (None: as stored)."""
    return DTYPE_FLAGS.get(dtype, str(dtype)) if dtype is not None else None


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int  # absolute byte offset in ``file``
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _broken(path: Path, what: str) -> BoomerangError:
    return BoomerangError(f"{path}: not a valid safetensors file ({what}); re-download or rebuild the model")


DTYPE_SIZES = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse one safetensors file's header into :class:`TensorInfo` entries, validated.

    The one check every reader passes (``ModelWeights``, so ``arch`` and ``models.load_model``):
    a header cut off, not UTF-8 or JSON, a bad entry or dtype, a shape whose size is not its
    byte range, tensors overlapping, leaving holes or past the end: one line naming the file.
    """
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise _broken(path, "truncated header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise _broken(path, f"header size {n}")
        text = f.read(n)
        size = os.fstat(f.fileno()).st_size
    if len(text) != n:
        raise _broken(path, f"the file ends inside its {n}-byte header")
    try:
        header = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise _broken(path, "header is not UTF-8") from None
    except ValueError:
        raise _broken(path, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _broken(path, "header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    out = {name: _entry(path, name, e, 8 + n, size) for name, e in header.items()}
    pos, prev = 8 + n, None  # the tensors tile the data region exactly, as the format requires
    for e in sorted(out.values(), key=lambda e: (e.begin, e.end)):
        if e.begin != pos:
            raise _broken(
                path,
                f"{e.name} overlaps {prev}"
                if e.begin < pos
                else f"bytes {pos - 8 - n} to {e.begin - 8 - n} of its data belong to no tensor",
            )
        pos, prev = e.end, e.name
    if pos != size:
        raise _broken(path, f"{size - pos} bytes after its last tensor belong to no tensor")
    return out, meta


def _entry(path: Path, name: str, e: object, base: int, size: int) -> TensorInfo:
    """One header entry: well-formed, a known dtype, inside the file, its shape's size its byte range."""
    try:
        dtype, shape, (lo, hi) = e["dtype"], tuple(e["shape"]), e["data_offsets"]  # type: ignore[index]
        ok = (
            isinstance(dtype, str)
            and isinstance(lo, int)
            and isinstance(hi, int)
            and 0 <= lo <= hi
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        )
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise _broken(path, f"bad header entry for {name}")
    if dtype not in DTYPE_SIZES:
        raise _broken(path, f"{name} has dtype {dtype!r}, not one of {', '.join(DTYPE_SIZES)}")
    if base + hi > size:
        raise _broken(path, f"truncated: {name} ends at byte {base + hi} of a {size}-byte file")
    if math.prod(shape) * DTYPE_SIZES[dtype] != hi - lo:
        raise _broken(
            path,
            f"{name} is {list(shape)} {dtype}, {math.prod(shape) * DTYPE_SIZES[dtype]} bytes, "
            f"but its data_offsets span {hi - lo}",
        )
    return TensorInfo(name, dtype, shape, path, base + lo, base + hi)


class ModelWeights:
    """All tensors of an HF model directory (single file or sharded), read lazily."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.entries: dict[str, TensorInfo] = {}
        index = self.directory / INDEX_FILE
        if index.exists():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise BoomerangError(
                    f'{index}: not a valid safetensors index (no "weight_map" of file names); '
                    "re-download or rebuild the model"
                ) from None
        elif (self.directory / SINGLE_FILE).exists():
            files = [SINGLE_FILE]
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if not files:
            raise BoomerangError(f"{self.directory}: no safetensors weights found")
        for name in files:
            entries, _ = read_header(self.directory / name)
            self.entries.update(entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> TensorInfo:
        return self.entries[name]

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, read with ``pread`` into fresh memory (no mmap)."""
        info = self.entries[name]
        buf = bytearray(info.nbytes)
        with open(info.file, "rb") as f:
            f.seek(info.begin)
            f.readinto(buf)
        t = torch.frombuffer(buf, dtype=DTYPES[info.dtype]) if buf else torch.empty(0, dtype=DTYPES[info.dtype])
        t = t.reshape(info.shape)
        return t.to(dtype) if dtype is not None and t.dtype != dtype else t

    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())


#: A safetensors file's digest that needs no second pass over the family: sha256 over the
#: sha256 of its header (length prefix included) and of each tensor's bytes, in file order.
TENSORS_DIGEST = "sha256-tensors:"


def tree_digest(header: bytes, tensor_digests: Sequence[bytes]) -> str:
    """Combine a file's header and per-tensor sha256 digests into its ``sha256-tensors:`` digest."""
    top = hashlib.sha256(hashlib.sha256(header).digest())
    for d in tensor_digests:
        top.update(d)
    return TENSORS_DIGEST + top.hexdigest()


def range_digest(path: Path, begin: int, n: int, buf: memoryview) -> bytes:
    """sha256 of ``n`` bytes of ``path`` from ``begin``, read through ``buf``."""
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        f.seek(begin)
        while n:
            got = f.readinto(buf[: min(n, len(buf))])
            if not got:
                raise BoomerangError(f"{path}: file ended early while hashing weights")
            sha.update(buf[:got])
            n -= got
    return sha.digest()


def read_chunks(info: TensorInfo, dtype: torch.dtype | None, elements: int) -> Iterator[torch.Tensor]:
    """``info``'s values ``elements`` at a time (flat, row-major), converted to ``dtype`` if given."""
    src = DTYPES[info.dtype]
    size = torch.empty(0, dtype=src).element_size()
    with open(info.file, "rb") as f:
        for start in range(0, info.numel, elements):
            buf = bytearray(min(elements, info.numel - start) * size)
            f.seek(info.begin + start * size)
            if f.readinto(buf) != len(buf):
                raise BoomerangError(f"{info.file}: file ended early while reading {info.name}")
            t = torch.frombuffer(buf, dtype=src)
            yield t.to(dtype) if dtype is not None and dtype != src else t


_SAME: dict[tuple, bool] = {}


def same_values(a: TensorInfo, b: TensorInfo, dtype: torch.dtype | None = None, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """Whether two stored tensors hold identical values as they would be saved (``dtype``, else as stored).

    This decides tying by content (a member whose embedding and head are the
    same numbers is saved tied, whichever model each was read from). Reads both
    a slice at a time; results are memoized per file version (size, mtime).
    """
    if a.shape != b.shape or (dtype is None and a.dtype != b.dtype):
        return False
    if (a.file, a.begin) == (b.file, b.begin):
        return True

    key = (a, file_version(a.file), b, file_version(b.file), dtype)
    if key not in _SAME:
        elements = max(1, chunk_bytes // 4)
        # Bytes, not values: as saved, the two must be one tensor (NaN and -0.0 included).
        _SAME[key] = all(
            torch.equal(x.view(torch.uint8), y.view(torch.uint8))
            for x, y in zip(read_chunks(a, dtype, elements), read_chunks(b, dtype, elements))
        )
    return _SAME[key]
