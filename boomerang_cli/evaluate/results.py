"""Where ``eval``'s results go: merged into a family's manifest, or into a results JSON for plain models.

A perplexity measured another way (other data, block length, BOS, dtype) goes
beside the old one, never over it (``manifest.perplexity_key``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import __version__, jsonio
from ..errors import BoomerangError
from ..guard import check_written_file
from ..data import SPLIT_RULE
from ..manifest import BaselineEntry, FamilyManifest, migrate_metrics, perplexity_key
from ..atomic import atomic_write_text
from .options import Row, now
from ..forward.perplexity import NLL, EvalData

RESULTS_FORMAT = "boomerang-eval"
#: 2: perplexity keyed by manifest.perplexity_key; 3: records carry bits per byte and word perplexity, and
#: those measured under split rule 1 are keyed apart (manifest.migrate_metrics_v2). Older ones are migrated.
RESULTS_VERSION = 3
DEFAULT_RESULTS = "eval-results.json"


def perplexity_entry(nll: NLL, data: EvalData, dtype: torch.dtype, trunk: bool, stamp: str) -> dict[str, Any]:
    """A perplexity result with every setting that identifies it (``manifest.perplexity_key``)."""
    return nll.to_json(
        data=data.key,
        seq_len=data.seq_len,
        bos=data.bos,
        window=data.window,
        split_rule=SPLIT_RULE,
        **nll.units(data.text),
        blocks=data.num_blocks,
        data_fingerprint=data.fingerprint(),
        trunk=trunk,
        dtype=str(dtype).removeprefix("torch."),
        evaluated=stamp,
    )


def _merge(metrics: dict[str, Any], row: Row) -> dict[str, Any]:
    """Fresh results added to old ones: a perplexity measured another way goes beside, not over."""
    out = dict(metrics)
    if row.perplexity is not None:
        out["perplexity"] = {**out.get("perplexity", {}), perplexity_key(row.perplexity): row.perplexity}
    if row.tasks:
        out["tasks"] = {**out.get("tasks", {}), **row.tasks}
    return out


def write_family(path: Path, rows: Mapping[str, Row]) -> None:
    """Merge fresh results into the manifest as it is now on disk, atomically."""
    manifest = FamilyManifest.read(path)
    for row in rows.values():
        if row.kind == "teacher":
            manifest.teacher.metrics = _merge(manifest.teacher.metrics, row)
        elif row.kind == "student":
            manifest.student.metrics = _merge(manifest.student.metrics, row)
        elif row.kind == "member":
            member = manifest.member(row.name)
            member.metrics = _merge(member.metrics, row)
        elif row.kind == "order":
            continue  # members of other orders are not part of this family: reported, not recorded
        else:
            old = next((b for b in manifest.baselines if b.name == row.name), None)
            same = old is not None and old.teacher_layers == row.teacher_layers and old.method == row.method
            metrics = _merge(old.metrics if same and old is not None else {}, row)
            if row.selection:
                metrics["selection"] = row.selection
            entry = BaselineEntry(
                row.name, row.method or "", row.num_layers, row.num_params, list(row.teacher_layers or []), metrics
            )
            manifest.baselines = [b for b in manifest.baselines if b.name != row.name] + [entry]
    manifest.baselines.sort(key=lambda b: (b.num_layers, b.method, b.name))
    manifest.write(path)


def check_results_output(path: Path, inputs: Sequence[tuple[str, Any]] = ()) -> None:
    """Refuse a results file ``eval`` could not write, before minutes of evaluation, not after."""
    path = Path(path)
    check_written_file(path, inputs, "-o")  # no input overlapped, no FIFO read (it would hang)
    if path.is_dir():
        raise BoomerangError(f"-o {path} is a directory; give a results .json file")
    read_results(path)  # an existing file must be a results file this run can merge into
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise BoomerangError(f"-o {path}: cannot write there ({p} is not a writable directory); choose another -o")


def read_results(path: Path) -> dict[str, Any]:
    """A results JSON written by ``eval`` for plain models (empty when there is none yet)."""
    path = Path(path)
    if not path.exists():
        return {"format": RESULTS_FORMAT, "schema_version": RESULTS_VERSION, "models": []}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise BoomerangError(f"{path}: not valid JSON ({exc}); pass another --output") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise BoomerangError(f"{path}: not a boomerang eval results file; pass another --output")
    _check_shape(path, data)
    version = data.get("schema_version")
    if version in (1, 2):  # re-keyed by how each record was measured (manifest.migrate_metrics)
        data["models"] = [
            {**e, "metrics": migrate_metrics(e.get("metrics", {}), version)} if isinstance(e, dict) else e
            for e in data.get("models", [])
        ]
        data["schema_version"] = RESULTS_VERSION
    if data.get("schema_version") != RESULTS_VERSION:
        raise BoomerangError(
            f"{path}: results schema version {data.get('schema_version')} but this boomerang "
            f"writes {RESULTS_VERSION}; pass another --output"
        )
    return data


def _check_shape(path: Path, data: dict[str, Any]) -> None:
    """The parts of a results file a merge reads: models a list of objects with a ``ref`` and
    object ``metrics`` (and ``perplexity``); anything else is one line, not a traceback."""

    def bad(what: str, should: str, value: Any) -> BoomerangError:
        return BoomerangError(
            f"{path}: {what} should be {should}, not {type(value).__name__}; fix it or pass another --output"
        )

    models = data.get("models", [])
    if not isinstance(models, list):
        raise bad("models", "a list", models)
    for i, entry in enumerate(models):
        if not isinstance(entry, dict):
            raise bad(f"models[{i}]", "an object", entry)
        if not isinstance(entry.get("ref"), str):
            raise bad(f"models[{i}].ref", "a string", entry.get("ref"))
        metrics = entry.get("metrics", {})
        if not isinstance(metrics, dict):
            raise bad(f"models[{i}].metrics", "an object", metrics)
        if not isinstance(metrics.get("perplexity", {}), dict):
            raise bad(f"models[{i}].metrics.perplexity", "an object", metrics["perplexity"])


def write_results(path: Path, rows: Sequence[Row], refs: Sequence[Any]) -> None:
    data = read_results(path)
    entries = {e["ref"]: e for e in data.get("models", []) if isinstance(e, dict) and "ref" in e}
    for row, ref in zip(rows, refs):
        old = entries.get(row.name, {})
        entries[row.name] = {
            "ref": row.name,
            "path": str(ref.path),
            "num_params": row.num_params,
            "num_layers": row.num_layers,
            "metrics": _merge(old.get("metrics", {}), row),
        }
    data.update(
        format=RESULTS_FORMAT,
        schema_version=RESULTS_VERSION,
        tool_version=__version__,
        updated=now(),
        models=sorted(entries.values(), key=lambda e: (e["num_params"], e["ref"])),
    )
    atomic_write_text(path, jsonio.dumps(data, indent=2) + "\n")
