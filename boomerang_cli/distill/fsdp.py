"""FSDP2 for ``boomerang distill --fsdp``: student and frozen teacher sharded per decoder layer.

``torch.distributed.fsdp.fully_shard`` is applied here directly, on every
device, instead of through Accelerate's FSDP plugin:

* Accelerate turns its plugin on only for GPU-like devices (``MULTI_CPU``
  never becomes ``DistributedType.FSDP``), so the plugin path cannot run, or be
  tested, on CPU processes over gloo; ``fully_shard`` runs on gloo and NCCL alike.
* The plugin shards what goes through ``accelerator.prepare``: the student. The
  frozen teacher needs its own, forward-only sharding, and its LM head gathered
  while the student's loss computes KL against it (:func:`teacher_head`).

Layout (the torchtitan one): every decoder layer is one FSDP unit, gathered
for its forward (and, for the student, again in backward) and resharded right
after; the root unit holds what is left (embeddings, final norm, LM head).
So a rank holds ``1 / world`` of each model plus, briefly, one layer in full.

One exception: a tied teacher's embedding matrix (also its LM head) is kept
whole on every rank, outside FSDP (``ignored_params``), and a student whose
frozen embeddings are the same bytes (the default for a tied teacher) uses
that very tensor for its own embeddings and head. The matrix is needed whole
by the teacher's forward, the student's forward, backward and KL anyway;
sharded, each of the two models would hold ``1 / world`` of it and gather it
(plus FSDP's flat all-gather buffer, another copy) for each use, so at world 2
one shared whole matrix is what the two shards weighed, without the gathers.
Not with bf16 gathers (``MixedPrecisionPolicy``): the student would gather a
bf16 copy of its fp32 embeddings anyway, so nothing is shared and the
teacher's matrix stays sharded like the rest.
On GPU with bf16 the student keeps fp32 shards and gathers bf16 copies
(``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``) under the same
autocast the unsharded path uses; the teacher is bf16 already.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import resource
import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence, cast

import torch
import torch.distributed as dist

from ..arch import decoder_layers
from ..errors import BoomerangError
from . import heap, sharded_load
from .losses import LogitHead

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .model import DistillStudent

SHARDABLE = ("student", "teacher")
#: sharded teacher -> (the FSDP unit holding its head's weight, or None when it is whole on every
#: rank; whether that weight is the input embedding)
_HEADS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[Any, bool]]" = weakref.WeakKeyDictionary()
#: sharded tied teacher -> its embedding matrix, whole on every rank (frozen), for a student to share
_LOCAL_EMBEDDINGS: "weakref.WeakKeyDictionary[PreTrainedModel, torch.nn.Parameter]" = weakref.WeakKeyDictionary()


def parse_shard(shard: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"student,teacher"`` / ``["teacher"]`` / ``"none"`` to the sorted names to shard."""
    if shard is None:
        return ()
    items = shard.split(",") if isinstance(shard, str) else [p for s in shard for p in str(s).split(",")]
    names = {s.strip().lower() for s in items if s.strip()} - {"none"}
    bad = sorted(names - set(SHARDABLE))
    if bad:
        raise BoomerangError(f"--shard {','.join(bad)}: name student, teacher or both (student,teacher), or none")
    return tuple(sorted(names))


@dataclass
class Sharding:
    """What a run shards, over which mesh; ``student``/``teacher`` False: the unsharded (DDP) path."""

    student: bool = False
    teacher: bool = False
    bf16: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mesh: Any = None
    warnings: list[str] = field(default_factory=list)
    #: the student was asked to be sharded: checkpoints are distributed (DCP) ones, even with one
    #: process, so that a run resumes on any number of processes (``sharded_checkpoint``)
    dcp: bool = False

    @classmethod
    def create(cls, shard: str | Sequence[str] | None, world: int, device: torch.device, bf16: bool) -> "Sharding":
        names = asked = parse_shard(shard)
        if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
            raise BoomerangError(
                "accelerate's --use_fsdp would shard only the student, untested; drop it from "
                "`accelerate launch` and pass --fsdp to boomerang distill (it shards both models)"
            )
        warnings = []
        if names and world == 1:
            warnings.append(
                f"--shard {','.join(names)} with one process: nothing to shard across, training "
                "unsharded (launch with torchrun --nproc_per_node N to shard)"
            )
            names = ()
        mesh = None
        if names:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(device.type, (world,))
            heap.return_freed_memory()  # FSDP's gather/free churn would otherwise pin freed memory
        return cls("student" in names, "teacher" in names, bf16, device, mesh, warnings, "student" in asked)

    def shard_teacher(self, model: PreTrainedModel, layers_path: str) -> PreTrainedModel:
        """The frozen teacher on this rank: on the device whole, or 1/world of it (forward only)."""
        if not self.teacher:
            # in place (PreTrainedModel.to, which transformers' stubs wrap)
            cast(torch.nn.Module, model).to(self.device)
            return model
        from torch.distributed.fsdp import fully_shard

        model.requires_grad_(False)
        for layer in decoder_layers(model, layers_path):
            fully_shard(layer, mesh=self.mesh, reshard_after_forward=True)
        head, emb = model.get_output_embeddings(), model.get_input_embeddings()
        tied = head.weight is emb.weight
        # A tied embedding stays whole, out of FSDP, for the student to share (module docstring);
        # not with bf16 gathers, which give the student a bf16 copy of its own instead.
        keep_whole = tied and not self.bf16
        if keep_whole and not sharded_load.is_meta(model):
            emb.to(self.device)  # fully_shard moves only what it manages
        if not tied:  # its own unit, gathered by teacher_head only
            fully_shard(head, mesh=self.mesh)
        # The teacher runs base_model (no logits), so that is the root: final norm and embeddings
        # (unless kept whole), resharded after forward even as the root (reshard_after_forward=True,
        # not the default).
        fully_shard(
            model.base_model,
            mesh=self.mesh,
            reshard_after_forward=True,
            ignored_params={cast(torch.nn.Parameter, emb.weight)} if keep_whole else None,
        )
        if tied and not keep_whole:  # the head outside base_model still holds the full matrix: the shard
            head.weight = emb.weight
        if sharded_load.is_meta(model):  # built on meta: read this rank's rows only (all of a whole one)
            sharded_load.materialize(model, model, self.device)
        local = cast(torch.nn.Parameter, model.get_input_embeddings().weight) if keep_whole else None
        if local is not None:
            _LOCAL_EMBEDDINGS[model] = local
        _HEADS[model] = (None if keep_whole else model.base_model if tied else head, tied)
        for name, p in model.named_parameters():
            if not hasattr(p, "to_local") and p is not local:
                raise BoomerangError(
                    f"internal: teacher weight {name} lies outside its base model and head; "
                    "drop --shard teacher for this architecture"
                )
        return model

    def shard_student(self, model: DistillStudent, layers_path: str) -> DistillStudent:
        """Shard the student (a DistillStudent, its HF model at ``.model``) before the optimizer sees it."""
        if not self.student:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.bf16
            else MixedPrecisionPolicy()
        )
        shared = None if self.bf16 else _teacher_embedding_for(model.model)
        emb = model.model.get_input_embeddings()
        if shared is not None and not sharded_load.is_meta(model.model):  # loaded whole: share it now
            _share(model.model, shared)
        for layer in decoder_layers(model.model, layers_path):
            fully_shard(layer, mesh=self.mesh, mp_policy=mp)
        fully_shard(
            model,
            mesh=self.mesh,
            mp_policy=mp,
            ignored_params={cast(torch.nn.Parameter, emb.weight)} if shared is not None else None,
        )
        if sharded_load.is_meta(model.model):  # built on meta: read this rank's rows only
            sharded_load.materialize(model, model.model, self.device, shared=shared)
        teacher = next(
            (t for t in _HEADS if model.teacher_head is not None and sharded_load.same_head(t, model.model)), None
        )
        head = model.model.get_output_embeddings()
        if teacher is not None and not head.weight.requires_grad:
            # The student's frozen head is the teacher's, byte for byte (its embeddings kept as the
            # teacher's): KL reads it from the student's own root unit, gathered for its forward
            # anyway, instead of gathering the teacher's copy too (one vocab x hidden matrix less).
            model.teacher_head_is_own = True
        if self.bf16:  # what accelerator.prepare does for an unsharded student
            # This instance's forward wrapped, as accelerate.prepare does (mypy: a method is not assigned to).
            model.forward = torch.autocast(self.device.type, dtype=torch.bfloat16)(model.forward)  # type: ignore[method-assign]
        return model

    def state_dict(self, acc: Any, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The student's full state dict on rank 0, on CPU (collective; other ranks get an empty one)."""
        if not self.student:
            return acc.get_state_dict(model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = cast(
            dict[str, torch.Tensor],  # a model's state dict holds tensors only (ValueType is wider)
            get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
        )
        # Gathered one by one, tied weights come back as copies; tie them again, so that the
        # writer stores one matrix as it does for the unsharded student.
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        for first, *rest in aliases.values():
            for name in rest:
                if first in sd and name in sd:
                    sd[name] = sd[first]
        return sd


def _teacher_embedding_for(student: PreTrainedModel) -> torch.nn.Parameter | None:
    """A sharded teacher's whole tied embedding that this student's frozen, tied embeddings equal.

    Equal by where they are read from (a student built on meta: the same bytes
    of the same file, into the same dtype), or, for a student already loaded
    whole, by value. None when the student trains its embeddings or unties them.
    """
    head, emb = student.get_output_embeddings(), student.get_input_embeddings()
    if head is None or head.weight is not emb.weight or emb.weight.requires_grad:
        return None
    source = sharded_load.head_source(student) if sharded_load.is_meta(student) else None
    for teacher, local in list(_LOCAL_EMBEDDINGS.items()):
        if local.shape != emb.weight.shape or local.dtype != emb.weight.dtype:
            continue
        if source is not None and source == sharded_load.head_source(teacher):
            return local
        if source is None and not emb.weight.is_meta and torch.equal(local, emb.weight):
            return local
    return None


def _share(student: PreTrainedModel, shared: torch.nn.Parameter) -> None:
    """Point a (whole, not meta) student's tied embeddings and head at the teacher's matrix."""
    student.get_input_embeddings().weight = shared
    student.get_output_embeddings().weight = shared


def release(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """After the last step: drop the AdamW state and the student's hold on the teacher's head.

    With the caller's references to the teacher gone too, both are freed before
    the final state dict is gathered (and written), so that gather does not
    add to the peak on top of them (bench/fsdp_memory.py measures the peak).
    """
    optimizer.state.clear()
    getattr(model, "module", model).teacher_head = None
    gc.collect()


@contextlib.contextmanager
def teacher_head(teacher: Any, model: torch.nn.Module) -> Iterator[None]:
    """A sharded teacher's root unit gathered while the student's forward computes KL against its head.

    The student's loss reads the teacher's head weight (``DistillStudent.teacher_head``),
    which outside the teacher's forward is a shard; gather it here and point the
    loss at the full weight, and reshard the root afterwards. No-op for an unsharded teacher.
    """
    student = getattr(model, "module", model)  # DDP keeps the DistillStudent at .module
    unit, tied = _HEADS.get(teacher.model, (None, False))
    if student.teacher_head is None or unit is None or student.teacher_head_is_own:
        yield
        return
    with torch.inference_mode():  # like the teacher's forward, where FSDP first made the gathered parameters
        unit.unshard()
    head = LogitHead.of(teacher.model)
    if tied:  # gathered on the input embeddings (the head module keeps pointing at the shard)
        head = dataclasses.replace(head, weight=teacher.model.get_input_embeddings().weight)
    student.teacher_head = head
    try:
        yield
    finally:
        unit.reshard()


# -- memory accounting ------------------------------------------------------------------------


def _local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    if hasattr(t, "to_local"):  # a DTensor: this rank's shard
        t = t.to_local()
    return t.numel() * t.element_size()


def _unique(params: Any) -> list[torch.Tensor]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _rss() -> int:
    """This process's resident set now (Linux; 0 elsewhere)."""
    try:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_report(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, teacher_model: torch.nn.Module, device: torch.device
) -> list[dict[str, int]]:
    """Per rank (collective): bytes this rank holds of the student's parameters, gradients and
    optimizer state, and of the teacher's parameters, counted tensor by tensor (local shards
    only; a matrix the two share, a tied teacher's embedding, once, as the teacher's); its
    resident set now and at its peak; and on CUDA the peak allocated. Call after a step, before ``zero_grad``.
    """
    teachers = {id(p) for p in teacher_model.parameters()}
    student = [p for p in _unique(model.parameters()) if id(p) not in teachers]
    mine = {
        "student_params": sum(_local_bytes(p) for p in student),
        "student_grads": sum(_local_bytes(p.grad) for p in student),
        "optimizer_state": sum(
            _local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        ),
        "teacher_params": sum(_local_bytes(p) for p in _unique(teacher_model.parameters())),
        "rss": _rss(),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024),
    }
    mine["student_total"] = mine["student_params"] + mine["student_grads"] + mine["optimizer_state"]
    if device.type == "cuda":
        mine["cuda_peak_allocated"] = int(torch.cuda.max_memory_allocated(device))
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out
