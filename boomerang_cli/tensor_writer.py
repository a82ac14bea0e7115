"""Streaming sharded safetensors writing.

The writer lays out each shard's header from shapes alone and then streams
tensor bytes straight from the source files (``os.copy_file_range`` when no
dtype change is needed), hashing each source tensor once per family
(:class:`TensorDigests`). Every output directory is written under a temporary
name and renamed into place (:mod:`.atomic`), so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from .atomic import file_version
from .errors import BoomerangError
from .tensors import (
    CHUNK_BYTES,
    DTYPE_NAMES,
    DTYPES,
    INDEX_FILE,
    SINGLE_FILE,
    ModelWeights,
    TensorInfo,
    range_digest,
    read_chunks,
    tree_digest,
)


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: ``source``'s ``src_name`` saved as ``name``."""

    name: str
    source: ModelWeights
    src_name: str
    dtype: torch.dtype | None = None  # convert to this dtype, else keep as stored

    @property
    def info(self) -> TensorInfo:
        return self.source.info(self.src_name)

    @property
    def out_dtype(self) -> str:
        return DTYPE_NAMES[self.dtype] if self.dtype is not None else self.info.dtype

    @property
    def out_nbytes(self) -> int:
        if self.dtype is None:
            return self.info.nbytes
        return self.info.numel * torch.empty(0, dtype=self.dtype).element_size()


@dataclass
class WriteResult:
    files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    num_params: int = 0
    digests: dict[str, str] = field(default_factory=dict)  # weight file -> digest, when asked (TensorDigests)


class _HashingWriter:
    """Passes writes through to ``out`` and hashes them: a converted tensor's digest as written."""

    def __init__(self, out) -> None:
        self.out, self.sha = out, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.out.write(data)


class TensorDigests:
    """Each source tensor's digest as saved, computed once per family and reused by every member.

    Keyed by the source range and its file's version (size, mtime) and the
    saved dtype: a tensor shared by thirteen members is hashed once, not thirteen times.
    """

    def __init__(self) -> None:
        self._known: dict[tuple, bytes] = {}
        self._buf = memoryview(bytearray(CHUNK_BYTES))

    @staticmethod
    def key(it: "OutTensor") -> tuple:
        return (file_version(it.info.file), it.info.begin, it.info.nbytes, it.out_dtype)

    def source(self, it: "OutTensor") -> bytes:
        """The digest of a tensor copied unchanged (read from its source once)."""
        k = self.key(it)
        if k not in self._known:
            self._known[k] = range_digest(it.info.file, it.info.begin, it.info.nbytes, self._buf)
        return self._known[k]

    def converted(self, it: "OutTensor", dtype: torch.dtype, out) -> bytes:
        """Write ``it`` converted to ``dtype`` (``it.dtype``, set) to ``out``; its digest from the bytes as written (or known)."""
        k = self.key(it)
        known = self._known.get(k)
        if known is not None:
            _convert_range(it.info, dtype, out)
            return known
        w = _HashingWriter(out)
        _convert_range(it.info, dtype, w)
        self._known[k] = w.sha.digest()
        return self._known[k]


def _shard(items: Sequence[OutTensor], max_shard_size: int) -> list[list[OutTensor]]:
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for it in items:
        if shards[-1] and size + it.out_nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(it)
        size += it.out_nbytes
    return shards


def _copy_range(src: Path, begin: int, n: int, out) -> None:
    with open(src, "rb") as f:
        if hasattr(os, "copy_file_range"):
            off_in, off_out = begin, out.tell()
            remaining = n
            try:
                while remaining:
                    done = os.copy_file_range(f.fileno(), out.fileno(), remaining, off_in, off_out)
                    if done == 0:
                        break
                    off_in += done
                    off_out += done
                    remaining -= done
                out.seek(off_out)
                if remaining == 0:
                    return
                begin, n = off_in, remaining
            except OSError:
                out.seek(off_out)
                begin, n = off_in, remaining
        f.seek(begin)
        while n:
            chunk = f.read(min(n, 64 << 20))
            if not chunk:
                raise BoomerangError(f"{src}: file ended early while copying weights")
            out.write(chunk)
            n -= len(chunk)


def _convert_range(info: TensorInfo, dtype: torch.dtype, out, chunk_bytes: int = CHUNK_BYTES) -> None:
    """Write ``info``'s tensor converted to ``dtype``, a slice of elements at a time.

    Conversion is element-wise on the flat row-major data, so slicing costs no
    correctness and caps the extra memory at ``chunk_bytes`` whatever the tensor size.
    """
    size = torch.empty(0, dtype=DTYPES[info.dtype]).element_size()
    for t in read_chunks(info, dtype, max(1, chunk_bytes // size)):
        out.write(t.view(torch.uint8).numpy().data)


def write_safetensors(
    directory: Path,
    items: Sequence[OutTensor],
    max_shard_size: int = 5 * 10**9,
    on_tensor: Callable[[int], None] | None = None,
    digests: TensorDigests | None = None,
) -> WriteResult:
    """Stream ``items`` into ``directory`` as (sharded) safetensors plus index.

    Peak memory is one 16 MB slice of a tensor when a dtype conversion is asked
    for, and a few pages otherwise. ``on_tensor(nbytes)`` is called after each tensor (progress).
    ``digests``: each weight file's ``sha256-tensors:`` digest goes into
    ``result.digests``, from its header and the per-tensor digests (each source
    tensor hashed once per ``TensorDigests``), so the copy stays kernel-side and
    no file is read back.
    """
    names = [it.name for it in items]
    if len(set(names)) != len(names):
        raise BoomerangError("internal: duplicate tensor names in output")
    shards = _shard(items, max_shard_size)
    n = len(shards)
    result = WriteResult()
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        fname = SINGLE_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        off = 0
        for it in shard:
            header[it.name] = {
                "dtype": it.out_dtype,
                "shape": list(it.info.shape),
                "data_offsets": [off, off + it.out_nbytes],
            }
            off += it.out_nbytes
        hbytes = json.dumps(header, separators=(",", ":")).encode()
        hbytes += b" " * (-len(hbytes) % 8)
        tensor_digests: list[bytes] = []
        with open(directory / fname, "wb") as out:
            out.write(struct.pack("<Q", len(hbytes)))
            out.write(hbytes)
            for it in shard:
                info = it.info
                if it.dtype is not None and DTYPES[info.dtype] != it.dtype:
                    if digests is not None:
                        tensor_digests.append(digests.converted(it, it.dtype, out))
                    else:
                        _convert_range(info, it.dtype, out)
                else:
                    _copy_range(info.file, info.begin, info.nbytes, out)
                    if digests is not None:
                        tensor_digests.append(digests.source(it))
                weight_map[it.name] = fname
                result.num_params += info.numel
                result.total_bytes += it.out_nbytes
                if on_tensor is not None:
                    on_tensor(it.out_nbytes)
        if digests is not None:
            result.digests[fname] = tree_digest(struct.pack("<Q", len(hbytes)) + hbytes, tensor_digests)
        result.files.append(fname)
    if n > 1:
        index = {"metadata": {"total_size": result.total_bytes}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        result.files.append(INDEX_FILE)
    return result
