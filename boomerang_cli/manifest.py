"""The family manifest (``family.json``): a stable, versioned description of a family.

CI pipelines read this file, so its shape changes only with ``SCHEMA_VERSION``
(documented in docs/manifest.md, JSON Schema in docs/manifest.schema.json).
Paths of members are relative to the manifest's directory so a family can be
moved or uploaded as a whole.

Schema 2 keys each perplexity result by how it was measured
(:func:`perplexity_key`), so results of other settings sit beside each other;
schema 3 records carry bits per byte and word perplexity, and records measured
under the old split rule are keyed apart. Older files are read and migrated
(:func:`migrate_metrics`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, jsonio
from .errors import BoomerangError, PlanError
from .plan import Plan
from .atomic import atomic_write_text
from .data.sources import SPLIT_RULE, split_rule_changed

FORMAT = "boomerang-family"
SCHEMA_VERSION = 3
#: 1: perplexity keyed by data alone; 2: records without bits per byte, under split rule 1; both migrated on read
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "family.json"


def perplexity_key(entry: dict[str, Any]) -> str:
    """What identifies a perplexity measurement: data source and split, block length, tokens scored,
    BOS policy and dtype, e.g. ``stdlib:validation|seq_len=512|tokens=32640|bos=false|dtype=float32``,
    then ``|window=rolling`` for lm-eval's windows and ``|split_rule=1`` for a record of a text source
    measured when few-file sources were cut into paragraphs (:func:`migrate_metrics`).

    Two results under one key were measured the same way and may be compared;
    a measurement with other settings gets another key, beside the old one.
    """
    bos = entry.get("bos")
    key = (
        f"{entry.get('data')}|seq_len={entry.get('seq_len')}|tokens={entry.get('tokens')}"
        f"|bos={'true' if bos else 'false'}|dtype={entry.get('dtype')}"
    )
    if entry.get("window", "packed") != "packed":
        key += f"|window={entry.get('window')}"
    if entry.get("split_rule", SPLIT_RULE) != SPLIT_RULE:
        key += f"|split_rule={entry.get('split_rule')}"
    return key


def _rule_unchanged(data_key: Any) -> bool:
    """Whether every source of a record's data key (``a+b:split``) split the same way under rules 1 and 2."""
    if not isinstance(data_key, str) or ":" not in data_key:
        return False
    return not split_rule_changed(data_key.rsplit(":", 1)[0].split("+"))


def migrate_metrics(metrics: Any, version: int) -> Any:
    """Perplexity records of schema ``version`` (1 or 2) re-keyed by :func:`perplexity_key`.

    Schema 1 kept one perplexity per data key (``stdlib:validation``); those blocks
    never had a BOS put in front (``bos: false``). Schemas 1 and 2 were measured
    under split rule 1, which cut a text source of fewer than 50 files into
    paragraphs: a record whose data may have been such a source gets
    ``split_rule: 1`` (and its own key), so it is never compared with, or
    replaced by, a measurement on whole files.
    """
    if not isinstance(metrics, dict) or not isinstance(metrics.get("perplexity"), dict):
        return metrics
    out: dict[str, Any] = {}
    for key, entry in metrics["perplexity"].items():
        if not isinstance(entry, dict):
            continue
        if version == 1:
            entry = {"data": key, "bos": False, **entry}
        if "split_rule" not in entry:
            entry = {**entry, "split_rule": SPLIT_RULE if _rule_unchanged(entry.get("data")) else 1}
        out[perplexity_key(entry)] = entry
    return {**metrics, "perplexity": out}


def _migrate(data: dict[str, Any], version: int) -> dict[str, Any]:
    data = dict(data)
    for role in ("teacher", "student"):
        if isinstance(data.get(role), dict):
            data[role] = {**data[role], "metrics": migrate_metrics(data[role].get("metrics", {}), version)}
    for group in ("members", "baselines"):
        if isinstance(data.get(group), list):
            data[group] = [
                {**e, "metrics": migrate_metrics(e.get("metrics", {}), version)} if isinstance(e, dict) else e
                for e in data[group]
            ]
    data["schema_version"] = SCHEMA_VERSION
    return data


_SIMPLE: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "Any": object,
}


def _fits(value: Any, annotation: str) -> bool:
    """``value`` has the type a field's annotation (a string, e.g. ``dict[str, int] | None``) names."""
    alts = annotation.split(" | ")  # no field nests a union inside brackets
    if len(alts) > 1:
        return any(value is None if a == "None" else _fits(value, a) for a in alts)
    a = annotation.strip()
    if a in _SIMPLE:
        return isinstance(value, _SIMPLE[a]) and not (a in ("int", "float") and isinstance(value, bool))
    if a.startswith("list["):
        return isinstance(value, list) and all(_fits(v, a[5:-1]) for v in value)
    if a.startswith("dict["):
        inner = a[5:-1].split(",", 1)[1].strip()
        return isinstance(value, dict) and all(isinstance(k, str) and _fits(v, inner) for k, v in value.items())
    return True  # not a JSON type (e.g. Plan): built and checked by its own class


def _typed(owner: str, name: str, value: Any, annotation: str) -> Any:
    if not _fits(value, annotation):
        raise TypeError(f"{owner}.{name} should be {annotation}, not {json.dumps(value)[:40]}")
    return value


def _known(cls: type, data: dict[str, Any]) -> Any:
    """Build ``cls`` from ``data``, ignoring fields a newer boomerang added (docs/manifest.md:
    readers ignore unknown fields within one schema version); every known field is type-checked,
    so a wrongly typed manifest fails when read, before anything is written."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} entry is not an object")
    kinds = {f.name: str(f.type) for f in fields(cls)}
    return cls(**{k: _typed(cls.__name__, k, v, kinds[k]) for k, v in data.items() if k in kinds})


@dataclass
class ModelEntry:
    """The teacher or the student of a family."""

    ref: str
    path: str
    fingerprint: str | None
    num_layers: int
    num_params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    #: file name -> size, mtime_ns and digest (integrity.model_identity): what reuse and eval verify
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemberEntry:
    """One interpolated member: where it is, what it is made of, how it scored."""

    name: str
    path: str | None  # relative to the manifest; None for members not written
    num_params: int
    num_layers: int
    teacher_blocks: list[int]
    layers: list[list[Any]]  # [["student", 0], ["teacher", 2], ...] one per member layer
    embed_from: str
    head_from: str
    tied: bool
    targets: list[str] = field(default_factory=list)  # the --sizes that picked it
    files: dict[str, str] = field(default_factory=dict)  # file name -> "sha256:<hex>" | "sha256-tensors:<hex>"
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> bytes (eval's cheap check)
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaselineEntry:
    """A training-free pruning baseline evaluated beside the members."""

    name: str
    method: str  # "shortgpt" | "plan-prune" | ...
    num_layers: int
    num_params: int
    teacher_layers: list[int]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class OrderInfo:
    """How the members' blocks were chosen."""

    method: str  # last-first | first-last | kl-greedy | beam | kl-dp | auto
    calibration: dict[str, Any] | None = None  # data reference, samples, seq_len
    beam: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # per size: blocks, KL
    trace: list[dict[str, Any]] = field(default_factory=list)  # per search depth: block, candidates' KL


#: Top-level manifest fields read as they are (type-checked); the others are built from objects.
_TOP_LEVEL = ("forced", "forced_reasons", "dtype", "plan_source", "complete")


@dataclass
class FamilyManifest:
    teacher: ModelEntry
    student: ModelEntry
    plan: Plan
    order: OrderInfo
    members: list[MemberEntry]
    baselines: list[BaselineEntry] = field(default_factory=list)
    forced: bool = False  # built with --force despite a failed pair check
    forced_reasons: list[str] = field(default_factory=list)  # the checks --force overrode
    dtype: str | None = None  # members saved as this dtype (bf16/fp16/fp32...); None = as stored
    plan_source: str | None = None  # boomerang.json | student_config.json | --keep
    complete: bool = True  # False while `family` is still writing (or was interrupted)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    tool_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def member(self, name: str) -> MemberEntry:
        for m in self.members:
            if m.name == name:
                return m
        raise BoomerangError(f"no member {name!r} in this family; members: {', '.join(m.name for m in self.members)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "created": self.created,
            "teacher": asdict(self.teacher),
            "student": asdict(self.student),
            "plan": self.plan.to_json(),
            "order": asdict(self.order),
            "forced": self.forced,
            "forced_reasons": list(self.forced_reasons),
            "dtype": self.dtype,
            "plan_source": self.plan_source,
            "complete": self.complete,
            "members": [asdict(m) for m in self.members],
            "baselines": [asdict(b) for b in self.baselines],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "manifest") -> "FamilyManifest":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BoomerangError(f'{source}: not a boomerang family manifest (no "format": "{FORMAT}")')
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise BoomerangError(
                f"{source}: manifest schema version {version} but this boomerang reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild the family with `boomerang family` "
                f"(or use boomerang {data.get('tool_version', '?')})"
            )
        if version != SCHEMA_VERSION:
            data = _migrate(data, version)
            version = SCHEMA_VERSION
        try:
            return cls(
                teacher=_known(ModelEntry, data["teacher"]),
                student=_known(ModelEntry, data["student"]),
                plan=Plan.from_json(data["plan"]),
                order=_known(OrderInfo, data["order"]),
                members=[_known(MemberEntry, m) for m in data["members"]],
                baselines=[_known(BaselineEntry, b) for b in data.get("baselines", [])],
                **{
                    k: _typed("manifest", k, data[k], str(f.type))
                    for f in fields(cls)
                    for k in [f.name]
                    if k in data and k in _TOP_LEVEL
                },
                created=_typed("manifest", "created", data["created"], "str"),
                tool_version=_typed("manifest", "tool_version", data["tool_version"], "str"),
                schema_version=version,
            )
        except PlanError as exc:
            raise BoomerangError(f"{source}: invalid plan ({exc}); rebuild it with `boomerang family`") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BoomerangError(f"{source}: malformed manifest ({exc}); rebuild it with `boomerang family`") from None

    @classmethod
    def read(cls, path: Path) -> "FamilyManifest":
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BoomerangError(f"{path}: no such manifest; run `boomerang family` first") from None
        except ValueError as exc:
            raise BoomerangError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))

    def write(self, path: Path) -> None:
        """Atomically (re)write the manifest, e.g. after ``eval`` added metrics."""
        atomic_write_text(Path(path), jsonio.dumps(self.to_json(), indent=2) + "\n")
