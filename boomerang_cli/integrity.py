"""Integrity of written members: per-file checksums and sizes recorded in the manifest, checked on reuse.

``family`` records them; a rerun verifies members before keeping them; ``eval``
refuses to record results for a member whose directory is not the one the
manifest describes (sizes by default, checksums with ``--verify``).

Two kinds of checksum: ``sha256:<hex>`` of the whole file (config, tokenizer,
card; the weights of families written before) and, for weight files,
``sha256-tensors:<hex>`` (``tensors.tree_digest``): sha256 over the sha256 of
the header and of each tensor's bytes, in file order. The second lets
``family`` hash each source tensor once for the whole family instead of
reading every member back; verifying either reads the file once.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any, Mapping

from .atomic import file_version
from .errors import BoomerangError
from .manifest import MemberEntry
from .tensors import CHUNK_BYTES, TENSORS_DIGEST, range_digest, read_header, tree_digest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()  # by chunks: hashlib.file_digest needs Python 3.11
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tensors_digest(path: Path) -> str | None:
    """A safetensors file's ``sha256-tensors:`` digest, or None when its layout is not one the
    writer makes (tensors contiguous from the header to the end of the file)."""
    path = Path(path)
    try:
        entries, _ = read_header(path)  # validated: every tensor within the file
    except BoomerangError:
        return None
    with open(path, "rb") as f:
        prefix = f.read(8)
        header = f.read(struct.unpack("<Q", prefix)[0])
    spans = sorted((e.begin, e.end) for e in entries.values())
    pos = len(prefix) + len(header)
    for begin, end in spans:  # contiguous, covering the data region exactly: no byte left out
        if begin != pos:
            return None
        pos = end
    if pos != path.stat().st_size:
        return None
    buf = memoryview(bytearray(CHUNK_BYTES))
    return tree_digest(prefix + header, [range_digest(path, b, e - b, buf) for b, e in spans])


def digest_like(path: Path, recorded: str) -> str | None:
    """``path``'s checksum in the kind ``recorded`` is (whole-file sha256, or per tensor)."""
    return tensors_digest(path) if recorded.startswith(TENSORS_DIGEST) else sha256_file(path)


def checksums(directory: Path, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """``sha256`` of every file of a member directory, by name; files in ``known`` (hashed
    as they were written) are not read again."""
    known = known or {}
    return {p.name: known.get(p.name) or sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}


def file_sizes(directory: Path) -> dict[str, int]:
    """Bytes of every file of a member directory, by name (recorded beside the checksums)."""
    return {p.name: p.stat().st_size for p in sorted(Path(directory).iterdir()) if p.is_file()}


def member_problem(family_dir: Path, entry: MemberEntry, full: bool = False) -> str | None:
    """Why a member's directory does not match its manifest entry, or None when it does.

    The directory must lie inside the family (no ``../`` path, no symlink out of
    it) and hold every recorded file; by default sizes are compared (cheap), with
    ``full`` every checksum too.
    """
    if not entry.path:
        return "it was never written (no path in the manifest)"
    root = Path(family_dir).resolve()
    d = Path(family_dir) / entry.path
    real = d.resolve()
    if d.is_symlink() or root not in real.parents:
        return f"its directory {entry.path} is a link or path outside the family directory"
    if not d.is_dir():
        return f"its directory {d} is missing"
    if not entry.files:
        return "the manifest records none of its files"
    for name, digest in entry.files.items():
        p = d / name
        if not p.is_file():
            return f"{p} is missing"
        if p.is_symlink() and real not in p.resolve().parents:
            return f"{p} is a link out of the member directory"
        size = entry.sizes.get(name)
        if size is not None and p.stat().st_size != size:
            return f"{p} has {p.stat().st_size} bytes, the manifest says {size}"
        if full and digest_like(p, digest) != digest:
            return f"{p} does not match its recorded checksum"
    return None


def verify_member(directory: Path, entry: MemberEntry) -> bool:
    """Complete and unchanged: every recorded file exists with its recorded checksum."""
    if not entry.files or not Path(directory).is_dir():
        return False
    for name, digest in entry.files.items():
        p = Path(directory) / name
        if not p.is_file() or digest_like(p, digest) != digest:
            return False
    return True


#: The files whose content is a model's identity: its weights and what maps them (config, index).
_IDENTITY_FILES = ("config.json", "model.safetensors.index.json")
_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """``path``'s checksum (per tensor for a writer-layout safetensors file, else whole-file),
    hashed once per file version (size, mtime) in this process."""
    key = file_version(path)
    if key not in _DIGESTS:
        _DIGESTS[key] = (tensors_digest(path) if str(path).endswith(".safetensors") else None) or sha256_file(path)
    return _DIGESTS[key]


def files_identity(files: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Name -> size, mtime and digest of each of ``files`` (what :func:`files_problem` checks)."""
    out: dict[str, dict[str, Any]] = {}
    for name, p in sorted(files.items()):
        st = os.stat(p)
        out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": file_digest(p)}
    return out


def _model_files(directory: Path | str | None) -> dict[str, Path]:
    if directory is None or not Path(directory).is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(Path(directory).iterdir())
        if p.is_file() and (p.name.endswith(".safetensors") or p.name in _IDENTITY_FILES)
    }


def model_identity(directory: Path | str | None) -> dict[str, dict[str, Any]]:
    """A model directory's identity by content: file name -> size, mtime and digest of its
    weights, config and index. Empty for what is not a local directory."""
    return files_identity(_model_files(directory))


def files_problem(files: Mapping[str, Path], recorded: Mapping[str, Any]) -> str | None:
    """Why ``files`` are not the ones ``recorded`` (:func:`files_identity`) describes, or None.

    Cheap when nothing changed: a file whose size and mtime are the recorded
    ones is taken as recorded; any other is hashed and its digest compared.
    """
    if not isinstance(recorded, Mapping):
        return "its recorded identity is not an object"
    if set(files) != set(recorded):
        return f"its files differ ({', '.join(sorted(set(files) ^ set(recorded)))})"
    for name, rec in recorded.items():
        p = files[name]
        st = os.stat(p)
        if not isinstance(rec, Mapping) or not isinstance(rec.get("digest"), str):
            return f"the record of {name} is not an object with a digest"
        if (st.st_size, st.st_mtime_ns) == (rec.get("size"), rec.get("mtime_ns")):
            _DIGESTS.setdefault(file_version(p), rec["digest"])  # unchanged: its digest need not be read again
            continue
        if st.st_size != rec.get("size") or file_digest(p) != rec["digest"]:
            return f"{p} differs in content"
    return None


def identity_problem(directory: Path | str | None, recorded: Mapping[str, Any]) -> str | None:
    """Why ``directory`` is not the model ``recorded`` (:func:`model_identity`) describes, or None."""
    return files_problem(_model_files(directory), recorded)
