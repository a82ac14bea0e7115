"""The members a server holds: every size of a family built over one :class:`TensorPool`.

``open_members`` takes a family (its directory or ``family.json``) or a single
model directory, finds the teacher and student the manifest records, checks
them (fingerprints), and builds each chosen member in memory with
:func:`weights.build_model`. A member's layer sources are the manifest's own
(``family.open.member_of``), so a served member computes what its saved
directory computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..arch import ModelInfo, max_positions
from ..compose import Stack, compose
from ..errors import BoomerangError
from ..family.open import (
    check_family_models,
    load_family_models,
    manifest_file,
    member_of,
    read_complete_manifest,
    select_names,
)
from ..manifest import MANIFEST_NAME, FamilyManifest
from ..models import load_tokenizer
from .weights import TensorPool, build_model


@dataclass
class ServedMember:
    """One size the server answers for: its model (over shared tensors), tokenizer and records."""

    name: str
    model: Any
    tokenizer: Any
    num_layers: int
    num_params: int
    saved_bytes: int | None
    max_positions: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    eos: set[int] = field(default_factory=set)

    def card(self) -> dict[str, Any]:
        """This member's entry in ``GET /v1/models`` (the OpenAI fields, then ours)."""
        return {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "boomerang",
            "layers": self.num_layers,
            "parameters": self.num_params,
            "saved_bytes": self.saved_bytes,
            "max_positions": self.max_positions,
            "perplexity": dict(self.metrics.get("perplexity") or {}),
        }


@dataclass
class Served:
    """Everything a server holds: the members in family order (smallest first) and the shared pool."""

    members: dict[str, ServedMember]
    pool: TensorPool
    source: Path

    def names(self) -> list[str]:
        return list(self.members)


def end_tokens(model: Any, path: Path, tokenizer: Any) -> set[int]:
    """The tokens that end a completion: the saved generation config's EOS (what ``generate`` stops
    at for the member's directory), else the model config's, else the tokenizer's."""
    from transformers import GenerationConfig

    if (Path(path) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def _is_family(path: Path) -> bool:
    return path.name == MANIFEST_NAME or (path.is_dir() and (path / MANIFEST_NAME).exists())


def _records(manifest: FamilyManifest, name: str, models: dict[str, ModelInfo]) -> tuple[dict[str, Any], int | None]:
    """A member's manifest metrics and saved weight bytes."""
    if name in ("teacher", "student"):
        entry = manifest.teacher if name == "teacher" else manifest.student
        return dict(entry.metrics), models[name].weights.total_bytes()
    e = manifest.member(name)
    weights = sum(v for k, v in e.sizes.items() if k.endswith(".safetensors"))
    return dict(e.metrics), weights or None


def require_source(ref: Path | str) -> tuple[Path, str]:
    """Where ``ref`` is (a path, else a model reference: builtin, hub id, GGUF) and the name a single
    model is served as; refused at once when there is nothing (before a port is taken)."""
    from ..errors import ModelNotFoundError
    from ..refs import resolve

    path = Path(ref).expanduser()
    if path.exists():
        return path, path.name
    try:
        return resolve(str(ref)).path, str(ref)
    except ModelNotFoundError as exc:
        raise BoomerangError(
            f"no such family or model: {exc}; pass a family directory, its family.json, "
            "a model directory or a model reference"
        ) from None


def open_members(
    path: Path | str,
    names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> Served:
    """Every chosen member of the family (or the one model) at ``path``, built over one pool."""
    path, single_name = require_source(path)
    pool = TensorPool(dtype, torch.device(device))
    if not _is_family(path):
        return _open_single(path, single_name, names, pool, trust_remote_code)
    mpath, manifest = read_complete_manifest(path)
    models = load_family_models(manifest, mpath.parent)
    check_family_models(manifest, models)
    tokenizer = load_tokenizer(
        models["teacher"].path, trust_remote_code, why="serving turns text into tokens with the teacher's tokenizer"
    )
    out: dict[str, ServedMember] = {}
    for name in select_names(manifest, names):
        member = member_of(manifest, name)
        comp = member.composition(models)
        metrics, saved = _records(manifest, name, models)
        model = build_model(comp, pool, trust_remote_code)
        gen_from = models["student"].path if name == "student" else models["teacher"].path
        out[name] = ServedMember(
            name,
            model,
            tokenizer,
            member.num_layers,
            comp.num_params,
            saved,
            max_positions(comp.config),
            metrics,
            end_tokens(model, gen_from, tokenizer),
        )
    return Served(out, pool, manifest_file(mpath))


def _open_single(
    path: Path, name: str, names: Sequence[str] | None, pool: TensorPool, trust_remote_code: bool
) -> Served:
    """A plain model served as one member, named after its directory (or the reference given)."""
    from ..refs import resolve

    info = ModelInfo.load(resolve(str(path)).path, trust_remote_code)
    if names and list(names) != [name]:
        raise BoomerangError(f"{path} is one model, {name!r}; --members can only name it")
    n = info.arch.num_layers
    stack = Stack.whole("teacher", n)
    comp = compose({"teacher": info}, stack.layers, "teacher", "teacher")
    tokenizer = load_tokenizer(info.path, trust_remote_code, why="serving needs the model's tokenizer")
    model = build_model(comp, pool, trust_remote_code)
    member = ServedMember(
        name,
        model,
        tokenizer,
        n,
        comp.num_params,
        info.weights.total_bytes(),
        max_positions(comp.config),
        {},
        end_tokens(model, info.path, tokenizer),
    )
    return Served({name: member}, pool, path)


def perplexity_keys(served: Served) -> list[str]:
    """Every perplexity key any served member has a finite record under, sorted."""
    keys = {
        k
        for m in served.members.values()
        for k, v in (m.metrics.get("perplexity") or {}).items()
        if isinstance(v, dict) and isinstance(v.get("ppl"), (int, float))
    }
    return sorted(keys)


class AutoChoiceError(BoomerangError):
    """``model: "auto"`` could not choose; ``field`` is the request field to change."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def pick_auto(served: Served, max_perplexity: float, key: str | None = None) -> str:
    """``model: "auto"``: the smallest member (fewest parameters) whose perplexity recorded under
    ``key`` is at most ``max_perplexity``. Without ``key``, the one key every record uses, if only one."""
    keys = perplexity_keys(served)
    if key is None:
        if len(keys) != 1:
            found = "; ".join(keys) if keys else "none (run `boomerang eval` on the family first)"
            raise AutoChoiceError(
                f"name the perplexity record to judge by in perplexity_key; recorded: {found}", "perplexity_key"
            )
        key = keys[0]
    elif key not in keys:
        raise AutoChoiceError(
            f"no member has a perplexity recorded under {key!r}; recorded: {'; '.join(keys) or 'none'}",
            "perplexity_key",
        )
    scored = [
        (m.metrics["perplexity"][key]["ppl"], m)
        for m in served.members.values()
        if isinstance((m.metrics.get("perplexity") or {}).get(key, {}).get("ppl"), (int, float))
    ]
    within = [m for ppl, m in scored if ppl <= max_perplexity]
    if not within:
        ppl, best = min(scored, key=lambda s: s[0])
        raise AutoChoiceError(
            f"no member has perplexity <= {max_perplexity:g} under {key!r}; the lowest is {best.name} at {ppl:.4g}",
            "max_perplexity",
        )
    return min(within, key=lambda m: (m.num_params, m.num_layers)).name
