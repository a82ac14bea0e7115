"""Models in memory: load a directory, its tokenizer, a composition, on the right device.

The one place that calls ``from_pretrained``/``from_config``: evaluation,
calibrated orders and distillation all load models here, so they agree on
safetensors-only loading, dtype and device. A composition (a member, or a
student from its plan) is materialized from the same tensors the writer
streams to disk, so an in-memory member is by construction the model
``family`` would save.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Mapping, cast

import torch

from .arch import ModelInfo
from .compose import Composition, LayerSource, compose
from .errors import BoomerangError, DataError
from .member import Member
from .plan import Plan
from .tensors import ModelWeights


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BoomerangError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def load_model(
    path: Path | str | ModelInfo,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> Any:
    """A resolved model directory as a ``PreTrainedModel`` in eval mode (safetensors only:
    ``refs.resolve`` has already converted anything else, or refused it)."""
    from transformers import AutoModelForCausalLM

    where = path.path if isinstance(path, ModelInfo) else path
    if not isinstance(path, ModelInfo):
        ModelWeights(where)  # every header validated (tensors.read_header) before transformers reads it
    model = AutoModelForCausalLM.from_pretrained(
        str(where), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return cast(torch.nn.Module, model).to(device).eval()  # PreTrainedModel.to, which transformers' stubs wrap


def no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' context that skips random initialization, for models whose every parameter is set
    right after (in memory, or materialized on the meta device)."""
    try:
        from transformers.initialization import no_init_weights as skip
    except ImportError:  # pragma: no cover - transformers 4 kept it in modeling_utils
        skip = importlib.import_module("transformers.modeling_utils").no_init_weights
    return skip()


def load_tokenizer(
    path: Path | str,
    trust_remote_code: bool = False,
    why: str = "evaluation tokenizes --data with the model's own tokenizer",
) -> Any:
    """The model's own tokenizer; a directory without a usable one is a DataError naming it and ``why``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # a missing, partial or unreadable tokenizer: one line, not a traceback
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise DataError(f"{path}: no usable tokenizer ({first}); {why}") from None


def attention_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """The mask to pass a model: ``None`` when no position is padding (the common, fast causal path)."""
    return None if bool(mask.all()) else mask.long()


def model_from_composition(
    comp: Composition,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> Any:
    """Instantiate the composed model with its weights (no disk writes), in eval mode."""
    from transformers import AutoModelForCausalLM

    config = comp.config
    config.dtype = dtype
    with no_init_weights(), torch.device(device):  # every parameter is overwritten below
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    # Fresh memory per tensor (ModelWeights.read uses pread, never mmap): safe to train in place.
    state = {comp.state_dict_key(t.name): t.source.read(t.src_name, dtype).to(device) for t in comp.tensors}
    # A tied head is not stored: tie_weights() points it at the embeddings.
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise BoomerangError(f"internal: tensors the model does not have: {result.unexpected_keys[:3]}")
    if comp.tied:
        model.tie_weights()
    params = dict(model.named_parameters())
    embed = model.get_input_embeddings().weight
    missing = [k for k in result.missing_keys if k in params and not (comp.tied and params[k] is embed)]
    if missing:
        raise BoomerangError(f"internal: weights missing from the composition: {missing[:3]}")
    return model.eval()


def empty_model(config: Any, trust_remote_code: bool = False) -> Any:
    """The model of ``config`` with every parameter on the meta device (no memory), buffers real.

    For models whose parameters are others' (a served member, a member trained in
    ``--mix``): buffers (rotary frequencies, position ids) are computed by the
    modules themselves from the model's own config and are tiny, so each keeps its own.
    """
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=config.dtype, trust_remote_code=trust_remote_code)


def set_parameter(model: torch.nn.Module, key: str, param: torch.nn.Parameter) -> None:
    """Make ``param`` (the object itself, not a copy) the parameter ``key`` of ``model``."""
    module_path, _, attr = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    if attr not in module._parameters:
        raise BoomerangError(f"internal: the model has no parameter {key}")
    module._parameters[attr] = param


def student_from_plan(teacher: ModelInfo, plan: Plan, trust_remote_code: bool = False) -> Any:
    """The student of SPEC section 2 in memory, fp32 (no directory written): the kept teacher layers."""
    comp = compose({"teacher": teacher}, [LayerSource("teacher", k) for k in plan.kept], "teacher", "teacher")
    return model_from_composition(comp, torch.float32, "cpu", trust_remote_code)


def load_member(
    member: Member,
    models: Mapping[str, ModelInfo],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Any:
    """The member as a ready ``PreTrainedModel`` in eval mode."""
    return model_from_composition(member.composition(models), dtype, device)
