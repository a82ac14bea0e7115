"""Member files assembled from the converted tensors, the export manifest, and the command's entry point."""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import __version__
from ..arch import ModelInfo
from ..atomic import atomic_dir, atomic_write_text, check_output_dir
from ..compose import Composition
from ..errors import BoomerangError
from ..guard import check_disjoint, lock_if
from ..progress import NULL, Progress
from ..tensor_writer import _copy_range
from .convert import TensorCache, TensorSpec, tensor_specs
from .gguf_arch import FORMATS, _ggml, check_exportable, check_type, gguf_arch, require_gguf
from .metadata import family_metadata, write_metadata
from .request import DEFAULT_FORMAT, DEFAULT_TYPE, ExportRequest

EXPORT_FORMAT = "boomerang-export"
EXPORT_SCHEMA_VERSION = 1
EXPORT_MANIFEST = "export.json"


def write_gguf(
    path: Path,
    comp: Composition,
    specs: Sequence[TensorSpec],
    cache: TensorCache,
    metadata: Callable[[Any], None],
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """One member's GGUF: header, metadata and tensor infos by ``GGUFWriter``, then the cached
    tensor bytes streamed after them at GGUF's alignment."""
    import gguf

    kind, _ = gguf_arch(comp.config.get_text_config())
    converted = [cache.get(s) for s in specs]
    writer = gguf.GGUFWriter(str(path), kind)
    try:
        metadata(writer)
        for s, c in zip(specs, converted):
            writer.add_tensor_info(s.gguf_name, s.shape, np.dtype(np.float32), c.nbytes, raw_dtype=_ggml(s.ggml_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None  # opened by write_header_to_file
        out = writer.fout[0]
        writer.write_padding(out, out.tell())
        for c in converted:
            out.flush()
            _copy_range(cache.path, c.offset, c.nbytes, out)
            writer.write_padding(out, c.nbytes)
            if on_bytes is not None:
                on_bytes(c.nbytes)
    finally:
        writer.close()


def modelfile(gguf_name: str) -> str:
    """Ollama's Modelfile: the GGUF carries the chat template and stop tokens itself."""
    return f"FROM ./{gguf_name}\n"


@dataclass
class ExportedFile:
    name: str
    kind: str  # member | teacher | student
    path: str  # relative to the export directory
    type: str
    size: int
    sha256: str
    num_layers: int
    num_params: int
    tied: bool
    tensor_types: dict[str, int]
    modelfile: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExportResult:
    family: str  # absolute path of family.json
    output: Path
    type: str
    files: list[ExportedFile]
    unique_tensors: int  # conversions done
    tensor_references: int  # tensors written over all files
    seconds: dict[str, float]
    tokenizer: str
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "schema_version": EXPORT_SCHEMA_VERSION,
            "tool_version": __version__,
            "created": self.created,
            "family": self.family,
            "file_format": "gguf",
            "type": self.type,
            "tokenizer": self.tokenizer,
            "conversions": {
                "unique_tensors": self.unique_tensors,
                "tensor_references": self.tensor_references,
                "seconds": round(self.seconds.get("convert", 0.0), 3),
            },
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "files": [f.to_json() for f in self.files],
        }


def plan_export(
    family: Path | str, members: Sequence[str] | None, type_name: str
) -> tuple[Path, Any, dict[str, ModelInfo], list[tuple[str, Composition, list[TensorSpec]]]]:
    """Check everything before writing: the manifest, its models, every selected member's GGUF mapping."""
    from ..family.open import check_family_models, load_family_models, member_of, read_complete_manifest, select_names

    require_gguf()
    type_name = check_type(type_name)
    mpath, manifest = read_complete_manifest(family)
    models = load_family_models(manifest, mpath.parent)
    gguf_arch(models["teacher"].config.get_text_config())
    check_family_models(manifest, models)
    work = []
    for name in select_names(manifest, members):
        comp = member_of(manifest, name).composition(models)
        check_exportable(comp, name)
        work.append((name, comp, tensor_specs(comp, type_name)))
    return mpath, manifest, models, work


def export_family(
    family: Path | str,
    output: Path | str,
    type_name: str = DEFAULT_TYPE,
    members: Sequence[str] | None = None,
    *,
    file_format: str = DEFAULT_FORMAT,
    overwrite: bool = False,
    modelfiles: bool = True,
    progress: Progress = NULL,
) -> ExportResult:
    """Write one ``<name>.gguf`` per selected member (and its Ollama ``<name>.Modelfile``) plus
    ``export.json`` into ``output``, atomically; each unique source tensor is converted once."""
    if file_format not in FORMATS:
        raise BoomerangError(f"unknown --format {file_format!r}; use {', '.join(FORMATS)}")
    type_name = check_type(type_name)
    output = Path(output).expanduser()
    check_output_dir(output, overwrite)
    t0 = time.perf_counter()
    mpath, manifest, models, work = plan_export(family, members, type_name)
    check_disjoint(output, {"family": mpath.parent, **{role: info.path for role, info in models.items()}})
    teacher = manifest.teacher
    meta = family_metadata(mpath.parent.resolve().name, teacher.ref, models["teacher"])
    seconds = {"plan": time.perf_counter() - t0}
    files: list[ExportedFile] = []
    unique = {s.key for _, _, specs in work for s in specs}
    with atomic_dir(output, overwrite) as tmp:
        cache = TensorCache(tmp / ".tensors.tmp")
        try:
            convert = progress.task("convert tensors", len(unique), "tensors")
            for _, _, specs in work:  # each unique tensor once, in the order the files need them
                for s in specs:
                    if s.key not in cache.entries:
                        cache.get(s)
                        convert.advance(1)
            progress.finish(convert)
            cache.references = 0
            seconds["convert"] = cache.seconds
            t1 = time.perf_counter()
            total = sum(cache.entries[s.key].nbytes for _, _, specs in work for s in specs)
            task = progress.task("write gguf", total, "B")
            for name, comp, specs in work:
                task.update(description=f"write {name}")
                fname = f"{name}.gguf"
                write_gguf(
                    tmp / fname,
                    comp,
                    specs,
                    cache,
                    functools.partial(write_metadata, comp=comp, name=name, requested=type_name, meta=meta),
                    task.advance,
                )
                mfile = None
                if modelfiles:
                    mfile = f"{name}.Modelfile"
                    (tmp / mfile).write_text(modelfile(fname))
                files.append(_record(tmp / fname, name, comp, specs, type_name, mfile))
            progress.finish(task)
        finally:
            cache.close()
            os.unlink(cache.path)
        seconds["write"] = time.perf_counter() - t1
        seconds["total"] = time.perf_counter() - t0
        result = ExportResult(
            str(mpath.resolve()),
            output,
            type_name,
            files,
            cache.conversions,
            cache.references,
            seconds,
            meta.tokenizer_source,
        )
        atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def family_target(family: str | Path | None) -> Path:
    """FAMILY as given, else the last ``boomerang family`` recorded here."""
    from ..state import last

    if family is not None:
        return Path(family).expanduser()
    recorded = last("family")
    if recorded is None:
        raise BoomerangError(
            "no FAMILY given and no `boomerang family` recorded here; pass a family.json or its directory"
        )
    return Path(recorded)


def run_export(req: ExportRequest, progress: Progress = NULL) -> ExportResult:
    """``boomerang export`` as one call: the member list checked, then the family (as given, else the
    last one built here) exported into ``output``, one writer per output."""
    if req.members is not None and not list(req.members):
        raise BoomerangError("--members is empty; name members like --members member-18L,teacher")
    with lock_if(req.output):
        return export_family(
            family_target(req.family),
            req.output,
            req.type_name,
            list(req.members) if req.members is not None else None,
            file_format=req.file_format,
            overwrite=req.overwrite,
            modelfiles=req.modelfiles,
            progress=progress,
        )


def _record(
    path: Path, name: str, comp: Composition, specs: Sequence[TensorSpec], type_name: str, mfile: str | None
) -> ExportedFile:
    from ..integrity import sha256_file

    counts: dict[str, int] = {}
    for s in specs:
        counts[s.ggml_type.lower()] = counts.get(s.ggml_type.lower(), 0) + 1
    kind = name if name in ("teacher", "student") else "member"
    return ExportedFile(
        name,
        kind,
        path.name,
        type_name,
        path.stat().st_size,
        sha256_file(path),
        comp.config.get_text_config().num_hidden_layers,
        comp.num_params,
        comp.tied,
        dict(sorted(counts.items())),
        mfile,
    )
