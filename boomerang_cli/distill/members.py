"""Member-aware training (``distill --mix P``): some steps train a random member instead of the student.

A member takes each block from the teacher or the student (SPEC section 1).
Trained only as the student, the student's layers learn to follow each other;
a member then runs them next to teacher blocks they never met. With
probability P a step runs a random member instead: each patchable block from
the teacher with probability 1/2 (drawn again when none is, so a member step
never trains the plain student). Its loss is the student's loss (CE, KL to the
teacher's logits, cosine between each block's output and the teacher's at the
same depth) on the member's output. Gradients reach only student layers: a
member's teacher layers are the teacher's own, frozen parameters, and nothing
is trained per member, so members stay zero-shot.

The draw depends only on ``--seed`` and the step, so every process draws the
same member and a resumed run draws what the uninterrupted one did.
:class:`MemberModels` builds a member as a model of its own config (its own
``num_hidden_layers`` and per-layer fields), every parameter the student's or
the teacher's own ``nn.Parameter`` (nothing copied).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..arch import ArchMap, ModelInfo, derived_config
from ..compose import Stack
from ..errors import BoomerangError
from ..member import Member
from ..models import empty_model, set_parameter
from ..plan import Plan


@dataclass(frozen=True)
class MemberDraw:
    """Which model a step trains: a random member with probability ``mix``, else the student (None)."""

    mix: float
    seed: int
    plan: Plan

    def at(self, step: int) -> Member | None:
        """The member step ``step`` (0-based) trains, or None for the student."""
        patchable = [b.index for b in self.plan.patchable_blocks]
        if self.mix <= 0 or not patchable:
            return None
        rng = random.Random(f"boomerang-mix:{self.seed}:{step}")
        if rng.random() >= self.mix:
            return None
        while True:
            chosen = [b for b in patchable if rng.random() < 0.5]
            if chosen:
                return Member.of(self.plan, chosen)


def describe(member: Member | None, plan: Plan) -> dict[str, Any]:
    """What a metrics row records of the model a step trained."""
    if member is None:
        return {"trained": "student", "teacher_blocks": [], "layers": plan.num_student_layers}
    return {"trained": "member", "teacher_blocks": sorted(member.teacher_blocks), "layers": member.num_layers}


@dataclass
class BuiltMember:
    """A member model over shared parameters, and where each block starts in its layer list."""

    model: Any
    block_starts: list[int]  # layer index of each block's first layer: hidden index of the block's input


class MemberModels:
    """Members of one pair, built over the models' own parameters (a plain object: not a submodule,
    so neither the teacher nor a member enters the student's state dict or DDP's parameters)."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        arch: ArchMap,
        teacher_config: Any,
        student_layers: Sequence[dict[str, Any]],
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ) -> None:
        """``arch``/``teacher_config``: the teacher's; ``student_layers``: each student layer's per-layer
        config values (:meth:`ArchMap.per_layer_config` of the student, or of the kept teacher layers)."""
        self.models: dict[str, Any] = {"student": student, "teacher": teacher}
        self.arch, self.teacher_config = arch, teacher_config
        self.per_layer = {"teacher": arch.per_layer_config(teacher_config), "student": list(student_layers)}
        self.gradient_checkpointing, self.trust_remote_code = gradient_checkpointing, trust_remote_code

    @classmethod
    def of_pair(
        cls,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        teacher_info: ModelInfo,
        student_info: ModelInfo | None,
        plan: Plan,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ) -> "MemberModels":
        """The pair being distilled; ``student_info`` None: a student made from the plan (its layers'
        per-layer config values are the kept teacher layers')."""
        arch, config = teacher_info.arch, teacher_info.config
        if student_info is not None:
            student_layers = student_info.arch.per_layer_config(student_info.config)
        else:
            teacher_layers = arch.per_layer_config(config)
            student_layers = [teacher_layers[k] for k in plan.kept]
        return cls(student, teacher, arch, config, student_layers, gradient_checkpointing, trust_remote_code)

    def _layers(self, model: str) -> Any:
        return self.models[model].get_submodule(self.arch.layers_path)

    def build(self, member: Member) -> BuiltMember:
        """``member`` as a model in training mode; its parameters are the pair's own."""
        stack = Stack.of_member(member)
        per_layer = [self.per_layer[ls.model][ls.layer] for ls in stack.layers]
        embed = self.models[stack.embed_from].get_input_embeddings().weight
        head = self.models[stack.head_from].get_output_embeddings().weight
        config = derived_config(self.teacher_config, self.arch, per_layer, tied=head is embed, dtype=torch.float32)
        model = empty_model(config, self.trust_remote_code)
        layers = model.get_submodule(self.arch.layers_path)
        for k, ls in enumerate(stack.layers):
            for name, param in self._layers(ls.model)[ls.layer].named_parameters():
                set_parameter(layers[k], name, param)
        for names, source in ((self.arch.pre, stack.embed_from), (self.arch.post, stack.head_from)):
            for name in names:
                if name != self.arch.head:
                    set_parameter(model, name, self.models[source].get_parameter(name))
        set_parameter(model, self.arch.head, head)  # stored or tied: the head source's head, as it computes
        left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
        if left:
            raise BoomerangError(f"internal: member parameters not found in the pair: {left[:3]}")
        device = embed.device
        for name, buf in list(model.named_buffers()):
            module_path, _, attr = name.rpartition(".")
            owner = model.get_submodule(module_path) if module_path else model
            owner._buffers[attr] = buf.to(device)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        starts, at = [], 0
        for block in member.plan.blocks:
            starts.append(at)
            at += block.size if block.index in member.teacher_blocks else 1
        return BuiltMember(model.train(), starts)
