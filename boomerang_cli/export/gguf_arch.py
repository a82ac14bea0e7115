"""What GGUF can say about a member: its architecture name, quantization types, rope; what it cannot."""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch

from ..compose import Composition
from ..errors import BoomerangError, UnsupportedArchitectureError

FORMATS = ("gguf",)
#: --type -> ggml type name: every type the gguf package quantizes in Python that llama.cpp
#: loads for these architectures (K-quants and i-quants need llama.cpp's own llama-quantize).
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
#: model_type -> (GGUF architecture, whether Q/K rows take llama.cpp's rotary permutation).
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}
#: architectures the map understands but GGUF cannot describe faithfully, and why.
REFUSED = {
    "gemma3_text": "llama.cpp fixes gemma3's sliding-window pattern (every 6th layer global) instead of reading "
    "it per layer, so members with another layer pattern would run wrongly",
    "gemma3": "llama.cpp fixes gemma3's sliding-window pattern (every 6th layer global) instead of reading "
    "it per layer, so members with another layer pattern would run wrongly",
}


def _ggml(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def check_type(type_name: str) -> str:
    if type_name.lower() not in TYPES:
        raise BoomerangError(f"unknown --type {type_name!r}; use one of {', '.join(TYPES)}")
    return type_name.lower()


def require_gguf() -> None:
    try:
        importlib.import_module("gguf")
    except ImportError:
        raise BoomerangError("GGUF export needs the gguf package; run: pip install gguf") from None


def gguf_arch(config: Any) -> tuple[str, bool]:
    """The GGUF architecture of a config and whether llama's Q/K permutation applies; refuse others."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise UnsupportedArchitectureError(f"cannot export {model_type} to GGUF: {REFUSED[model_type]}")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"cannot export {model_type} to GGUF yet; supported: {', '.join(ARCHITECTURES)} "
            "(export the members with `boomerang family` and convert them with llama.cpp's convert_hf_to_gguf.py)"
        )
    return ARCHITECTURES[model_type]


def _rope(cfg: Any) -> tuple[float, dict[str, Any]]:
    """rope theta and the scaling parameters (transformers 5 ``rope_parameters``, else 4.x fields)."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = dict(getattr(cfg, "rope_scaling", None) or {}) if not params else params
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return float(theta), scaling


def _rope_type(scaling: dict[str, Any]) -> str:
    return scaling.get("rope_type", scaling.get("type", "default")) or "default"


def llama3_rope_factors(cfg: Any) -> list[float]:
    """llama.cpp's ``rope_freqs.weight`` for llama3 rope scaling: the factor each rotary frequency is
    divided by (convert_hf_to_gguf.py ``LlamaModel.generate_extra_tensors``; transformers computes
    the same scaled frequencies in ``_compute_llama3_parameters``)."""
    theta, p = _rope(cfg)
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = float(p.get("factor", 8.0))
    low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old = float(p.get("original_max_position_embeddings", 8192))
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def check_exportable(comp: Composition, name: str) -> None:
    """Refuse a member whose config GGUF metadata cannot describe (one line, naming why)."""
    cfg = comp.config.get_text_config()
    kind = gguf_arch(cfg)[0]
    sliding = [i for i, t in enumerate(getattr(cfg, "layer_types", None) or []) if t != "full_attention"]
    if sliding:
        raise UnsupportedArchitectureError(
            f"cannot export {name} to GGUF: its layer {sliding[0]} uses sliding-window attention, which "
            f"llama.cpp's {kind} does not run; export a family whose layers all use full attention"
        )
    rope_type = _rope_type(_rope(cfg)[1])
    if rope_type not in ("default", "linear", "yarn") and not (rope_type == "llama3" and kind == "llama"):
        raise UnsupportedArchitectureError(
            f"cannot export {name} to GGUF: rope scaling {rope_type!r} is not mapped yet "
            "(default, linear, yarn, and llama3 for llama are)"
        )
