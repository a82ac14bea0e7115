"""A model's config.json read and vetted: one line naming the fix for a file cut off, NaN, a field of the
wrong type, code that needs --trust-remote-code, or a model that is not a decoder-only causal LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import UnsupportedArchitectureError
from .jsonio import read_object


def load_config(path: Path, trust_remote_code: bool = False) -> Any:
    """The model's config; a config.json missing, not a strict JSON object (cut off, NaN) is one line."""
    from transformers import AutoConfig

    cfg = Path(path) / "config.json"
    read_object(cfg, "fix or re-download the model's config.json")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except ValueError as exc:
        msg = str(exc).splitlines()[0]
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise UnsupportedArchitectureError(
                f"{path}: this model needs its own code; pass --trust-remote-code if you trust it"
            ) from None
        raise UnsupportedArchitectureError(f"{path}: unreadable config ({msg})") from None
    except Exception as exc:  # OSError, huggingface_hub's strict dataclasses: a field of the wrong type
        if not isinstance(exc, (OSError, TypeError)) and "StrictDataclass" not in type(exc).__name__:
            raise
        raise UnsupportedArchitectureError(
            f"{cfg}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}; "
            "fix or re-download the model's config.json"
        ) from None


def require_causal_lm(config: Any, trust_remote_code: bool = False) -> None:
    """Refuse encoders and seq2seq models that AutoModelForCausalLM would still build.

    transformers maps ``bert`` to ``BertLMHeadModel``, so a masked-LM checkpoint
    would load "successfully"; the config's own ``architectures`` says what the
    weights were trained as, and must name a class registered for causal LM.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is an encoder-decoder model; boomerang needs a decoder-only causal LM"
        )
    archs = list(getattr(config, "architectures", None) or [])
    auto_map = getattr(config, "auto_map", None) or {}
    if not archs or (trust_remote_code and "AutoModelForCausalLM" in auto_map):
        return
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not any(a in causal for a in archs):
        named = ", ".join(archs)
        if "AutoModelForCausalLM" in auto_map:  # a causal LM whose class is the repository's own code
            raise UnsupportedArchitectureError(
                f"{named} is the model's own code (its config's auto_map), not a class transformers ships; "
                "pass --trust-remote-code if you trust it"
            )
        standard = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
        if standard and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
            # A custom causal-LM class over a known model type: reading it as the standard
            # class could be wrong, so refuse, but say what it is and how to proceed.
            raise UnsupportedArchitectureError(
                f"{named} is a custom class, not transformers' {standard} for model type {model_type!r}; "
                f'if the weights are a standard {model_type} checkpoint, set "architectures": ["{standard}"] '
                "in its config.json"
            )
        raise UnsupportedArchitectureError(
            f"{', '.join(archs)} (model type {model_type!r}) is not a causal language model; "
            "boomerang needs a decoder-only LM (a *ForCausalLM checkpoint)"
        )
