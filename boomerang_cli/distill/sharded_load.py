"""Sharded loading for ``--fsdp``/``--shard``: each rank reads only the rows it keeps.

Unsharded, every rank loads the whole teacher and the whole student before
FSDP keeps ``1 / world`` of them, so each rank's peak holds both models in
full. Here a sharded model is built on the meta device (parameters only; the
small buffers, such as rotary ``inv_freq``, stay real on CPU, computed by the
model's own constructor), sharded by :mod:`.fsdp`, and then materialised:
``to_empty`` allocates just this rank's shards, and each shard is filled by
a positioned read of its rows of dim 0 from the safetensors file
(``tensors.TensorInfo`` gives every tensor's byte range). Every source is
safetensors by then: ``refs.resolve`` converts a GGUF or (with
``--allow-pickle``) a pickle teacher into its cache once, and every rank
reads its rows from that cache, so no rank ever loads a whole model.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING, Any

import torch

from ..arch import ModelInfo, text_config
from ..compose import Composition, LayerSource, compose
from ..errors import BoomerangError
from ..models import no_init_weights
from ..plan import Plan
from ..tensors import DTYPES, TensorInfo
from .losses import LogitHead, verify_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: a model built on meta -> the composition its tensors come from
_SOURCES: "weakref.WeakKeyDictionary[torch.nn.Module, Composition]" = weakref.WeakKeyDictionary()
#: a materialised model -> where its LM head's weight was read from (file, byte range, dtype as loaded)
_HEAD_FROM: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def whole(info: ModelInfo) -> Composition:
    """A model directory as a composition of itself (every layer, its own embeddings and head)."""
    return compose(
        {"teacher": info}, [LayerSource("teacher", i) for i in range(info.arch.num_layers)], "teacher", "teacher"
    )


def of_plan(teacher: ModelInfo, plan: Plan) -> Composition:
    """The student of a plan: the kept teacher layers (as ``models.student_from_plan``)."""
    return compose({"teacher": teacher}, [LayerSource("teacher", k) for k in plan.kept], "teacher", "teacher")


def meta_model(comp: Composition, dtype: torch.dtype, trust_remote_code: bool = False) -> Any:
    """The composed model with its parameters on the meta device (no memory), its buffers real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    config = comp.config
    config.dtype = dtype
    with no_init_weights(), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    if comp.tied:
        model.tie_weights()
    _SOURCES[model] = comp
    return model.eval()


def is_meta(model: torch.nn.Module) -> bool:
    return model in _SOURCES


def read_rows(info: TensorInfo, start: int, rows: int) -> torch.Tensor:
    """Rows ``start:start+rows`` of dim 0 of a stored tensor, by one positioned read of their bytes."""
    dtype = DTYPES[info.dtype]
    shape = (rows, *info.shape[1:]) if info.shape else ()
    row_bytes = (info.nbytes // info.shape[0]) if info.shape and info.shape[0] else info.nbytes
    n = row_bytes * rows if info.shape else info.nbytes
    buf = bytearray(n)
    if n:
        with open(info.file, "rb") as f:
            f.seek(info.begin + row_bytes * start if info.shape else info.begin)
            if f.readinto(buf) != n:
                raise BoomerangError(f"{info.file}: ends inside {info.name}; re-download or rebuild the model")
    flat = torch.frombuffer(buf, dtype=dtype) if n else torch.empty(0, dtype=dtype)
    return flat.reshape(shape)


def _local_rows(p: Any) -> tuple[torch.Tensor, int, int]:
    """This rank's tensor of ``p`` and the rows of dim 0 it holds: (tensor, first row, row count)."""
    if not hasattr(p, "to_local"):
        return p, 0, p.shape[0] if p.ndim else 0
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not isinstance(pl, Shard) or pl.dim != 0 for pl in p.placements):
        raise BoomerangError(f"internal: a sharded weight placed as {p.placements}, not by rows")
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return p._local_tensor, (offset[0] if offset else 0), (shape[0] if shape else 0)


def _head_info(model: PreTrainedModel, comp: Composition) -> tuple | None:
    """Where a meta model's LM head weight will be read from (file, byte range, dtype as loaded)."""
    head = model.get_output_embeddings()
    name = next((n for n, p in model.named_parameters() if head is not None and p is head.weight), None)
    src = {comp.state_dict_key(t.name): t for t in comp.tensors}.get(name or "")
    if src is None:
        return None
    return _bytes_of(src.source.info(src.src_name), head.weight.dtype)


def _bytes_of(info: TensorInfo, dtype: torch.dtype) -> tuple:
    """A tensor's identity as read: its file, byte range and the dtype it is loaded into (what
    :func:`same_head` and the student's sharing of a teacher's head compare)."""
    return (str(info.file), info.begin, info.end, dtype)


def head_source(model: PreTrainedModel) -> tuple | None:
    """The bytes a model's LM head weight is (or, built on meta, will be) read from; None if not known."""
    if model in _HEAD_FROM:
        return _HEAD_FROM[model]
    return _head_info(model, _SOURCES[model]) if model in _SOURCES else None


def materialize(
    root: torch.nn.Module, hf_model: PreTrainedModel, device: torch.device, shared: torch.nn.Parameter | None = None
) -> None:
    """Allocate this rank's shards of a sharded meta model and read them from its files.

    ``root`` is the module ``to_empty`` runs on (the FSDP root, so that FSDP
    re-registers every padded shard), ``hf_model`` the model built by
    :func:`meta_model` (its parameter names are the state-dict keys).
    ``shared``: a tensor already in memory (the teacher's local tied embedding,
    ``fsdp``) that becomes this model's input embedding and tied head instead
    of being read again.
    """
    comp = _SOURCES.pop(hf_model)
    src = {comp.state_dict_key(t.name): t for t in comp.tensors}
    buffers = {n: b.detach().clone() for n, b in hf_model.named_buffers() if not b.is_meta}
    head, emb = hf_model.get_output_embeddings(), hf_model.get_input_embeddings()
    tied = head is not None and head.weight is emb.weight
    if tied:  # one matrix: allocated once (twice would leave FSDP's shard storage stale), tied again
        head._parameters["weight"] = None
    if shared is not None:  # not allocated by to_empty (it is not FSDP's), and not read
        emb._parameters["weight"] = None
    root.to_empty(device=device)
    if shared is not None:
        emb.weight = shared
    if tied:
        head.weight = emb.weight
    with torch.no_grad():
        for name, b in hf_model.named_buffers():
            value = src[name].source.read(src[name].src_name) if name in src else buffers.get(name)
            if value is None:
                raise BoomerangError(f"internal: buffer {name} has no value to restore")
            b.copy_(value)
        for name, p in hf_model.named_parameters():  # a tied head once, as the embeddings
            if name not in src:
                raise BoomerangError(f"internal: weight {name} is not in the model's files")
            t = src[name]
            local, start, rows = _local_rows(p)
            info = t.source.info(t.src_name)
            if tuple(info.shape) != tuple(p.shape):
                raise BoomerangError(
                    f"{t.source.directory}: {t.src_name} has shape {list(info.shape)}, "
                    f"the model expects {list(p.shape)}"
                )
            if local.numel() and p is not shared:
                local.copy_(read_rows(info, start, rows) if p.ndim else t.source.read(t.src_name))
            if head is not None and p is head.weight:
                _HEAD_FROM[hf_model] = _bytes_of(info, p.dtype)


def same_head(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two materialised models' LM heads were read from the same bytes, into the same dtype."""
    return a in _HEAD_FROM and _HEAD_FROM.get(a) == _HEAD_FROM.get(b)


def check_head(comp: Composition, trust_remote_code: bool = False) -> None:
    """``verify_head`` on a one-layer, small-vocabulary random model of the same architecture.

    The check is about how the architecture computes logits, not about the
    weights; a sharded student is never whole on one rank to run it on.
    """
    config = copy.deepcopy(comp.config)
    tc = text_config(config)
    tc.num_hidden_layers = 1
    if isinstance(getattr(tc, "layer_types", None), list):
        tc.layer_types = tc.layer_types[:1]
    tc.vocab_size = vocab = min(int(tc.vocab_size), 512)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tc, key, None)
        if isinstance(value, int) and value >= vocab:
            setattr(tc, key, None)
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
    verify_head(model, LogitHead.of(model), vocab)


def teacher(sharding: Any, info: ModelInfo, dtype: torch.dtype, trust_remote_code: bool = False) -> Any:
    """The teacher to pass ``Sharding.shard_teacher``: on meta when it will be sharded, else loaded whole."""
    if sharding.teacher:
        return meta_model(whole(info), dtype, trust_remote_code)
    from ..models import load_model

    return load_model(info.path, dtype, "cpu", trust_remote_code)


def student(sharding: Any, t_info: ModelInfo, plan: Plan, student_dir: Any, trust_remote_code: bool = False) -> Any:
    """The fp32 student, its logits checked (``verify_head``): on meta when it will be sharded."""
    if sharding.student:
        comp = whole(ModelInfo.load(student_dir, trust_remote_code)) if student_dir else of_plan(t_info, plan)
        check_head(comp, trust_remote_code)
        return meta_model(comp, torch.float32, trust_remote_code)
    from ..models import load_model, student_from_plan

    model = (
        load_model(student_dir, torch.float32, "cpu", trust_remote_code)
        if student_dir
        else student_from_plan(t_info, plan, trust_remote_code)
    )
    verify_head(model, LogitHead.of(model), int(text_config(model.config).vocab_size))
    return model
