"""What a model came from, said the way a card fit to publish says it.

Users upload the directories boomerang writes, so cards, configs and tokenizer
files name no local path: a GGUF's header (license, base models, end tokens),
recorded when :mod:`.refs` converts it, and a model card's license stand in
for it; :func:`copy_aux_files` copies the small files with loader-only flags
dropped and the GGUF's end tokens put back.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, file_version

SOURCE_JSON = "boomerang_source.json"  # what a converted model came from (and its GGUF metadata)
#: tokenizer_config.json keys that only say how a file was loaded here, never what the tokenizer is.
LOADER_ONLY_KEYS = frozenset(
    {
        "local_files_only",
        "is_local",
        "cache_dir",
        "force_download",
        "token",
        "use_auth_token",
        "_commit_hash",
        "gguf_file",
        "subfolder",
    }
)
#: GGUF keys naming tokens that end generation (transformers' conversion keeps only the first).
GGUF_END_TOKENS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def hub_id_of_url(url: Any) -> str | None:
    """``https://huggingface.co/org/name`` -> ``org/name`` (None for anything else)."""
    m = re.match(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+)/?$", str(url or ""))
    return m.group(1) if m else None


_GGUF_METADATA: dict[tuple[str, int, int], dict[str, Any]] = {}


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """What cards and generation configs need from a GGUF header: license, base models, end tokens.

    The reader parses every header field in Python, tokenizer arrays included
    (7 s for SmolLM2's 49k-token vocabulary here), so the result is memoized per
    file version (path, size, mtime): a family writes a card and a generation
    config per member and must not pay that each time.
    """
    key = file_version(path)
    if key not in _GGUF_METADATA:
        _GGUF_METADATA[key] = _read_gguf_metadata(path)
    return dict(_GGUF_METADATA[key])


def _read_gguf_metadata(path: Path) -> dict[str, Any]:
    import gguf as _gguf

    reader = _gguf.GGUFReader(str(path))

    def get(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    bases = [
        hub_id_of_url(get(f"general.base_model.{i}.repo_url")) for i in range(int(get("general.base_model.count") or 0))
    ]
    ends = [int(v) for v in (get(k) for k in GGUF_END_TOKENS) if isinstance(v, int)]
    return {
        "file": Path(path).name,
        "name": get("general.name"),
        "license": get("general.license"),
        "source_repo": hub_id_of_url(get("general.source.repo_url")),
        "base_models": [b for b in bases if b],
        "end_token_ids": list(dict.fromkeys(ends)),
    }


def source_metadata(directory: Path) -> dict[str, Any]:
    """The GGUF metadata recorded when ``directory`` was converted ({} for any other model).

    A cache converted by an older boomerang recorded only the file: its header is read again.
    """
    try:
        data = json.loads((Path(directory) / SOURCE_JSON).read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(data.get("gguf"), dict):
        return data["gguf"]
    src = Path(str(data.get("converted_from", "")))
    if src.suffix == ".gguf" and src.is_file():
        try:
            meta = read_gguf_metadata(src)
        except Exception:  # an unreadable header only costs the card its metadata
            return {"file": src.name}
        with contextlib.suppress(OSError):  # record it, so later runs do not read the header again
            atomic_write_text(Path(directory) / SOURCE_JSON, json.dumps({**data, "gguf": meta}, indent=2) + "\n")
        return meta
    return {"file": src.name} if src.suffix == ".gguf" else {}


def card_license(directory: Path) -> str | None:
    """The ``license`` in a model card's YAML front matter (README.md), if any."""
    try:
        text = (Path(directory) / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    front = text[3:].split("\n---", 1)[0]
    m = re.search(r"^license:\s*['\"]?([^'\"\n#]+?)['\"]?\s*$", front, re.MULTILINE)
    return m.group(1) if m else None


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer, generation config and other small non-weight files, fit to publish.

    ``tokenizer_config.json`` loses loader-only flags (a GGUF conversion writes
    ``local_files_only``/``is_local``); a GGUF-converted source's
    ``generation_config.json`` gets back the end tokens its header names
    (e.g. Gemma's ``<end_of_turn>``), which transformers' conversion drops.
    """
    skip_suffix = {".safetensors", ".bin", ".pt", ".gguf", ".pth", ".msgpack", ".h5"}
    skip_names = {
        "config.json",
        "README.md",
        "boomerang.json",
        "student_config.json",
        "family.json",
        "model.safetensors.index.json",
        "boomerang_source.json",
        "metrics.jsonl",
        "pytorch_model.bin.index.json",
    }
    copied = []
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.suffix not in skip_suffix and f.name not in skip_names and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    _edit_json(dst / "tokenizer_config.json", lambda d: {k: v for k, v in d.items() if k not in LOADER_ONLY_KEYS})
    ends = source_metadata(src).get("end_token_ids") or []
    _edit_json(dst / "generation_config.json", lambda d: with_end_tokens(d, ends))
    return copied


def with_end_tokens(gen: dict[str, Any], ends: list[int]) -> dict[str, Any]:
    """``eos_token_id`` of a generation config with ``ends`` added (a list once there are several)."""
    have = gen.get("eos_token_id")
    ids = list(dict.fromkeys(([] if have is None else have if isinstance(have, list) else [have]) + list(ends)))
    if not ids:
        return gen
    return {**gen, "eos_token_id": ids[0] if len(ids) == 1 else ids}


def _edit_json(path: Path, change: Any) -> None:
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return
    if isinstance(data, dict):
        new = change(data)
        if new != data:
            path.write_text(json.dumps(new, indent=2) + "\n")
