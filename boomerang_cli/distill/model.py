"""Student and teacher forward passes that keep only the aligned hidden states.

Hidden-state indices follow HF's ``output_hidden_states`` (SPEC section 3):
0 is the input of the first decoder layer (embeddings, after any scaling or
position embeddings), ``j`` the output of layer ``j - 1``, and ``L`` the final
hidden state after the final norm. Instead of asking the model for all
``L + 1`` states, forward hooks on the decoder layers keep just the indices
the plan aligns; the final state is the base model's own output, which the
LM head needs anyway.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from ..arch import decoder_layers
from ..errors import BoomerangError
from ..member import Member
from .losses import LogitHead, cosine_sums, head_losses
from .members import MemberModels

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class HiddenCapture:
    """Keeps the hidden states at HF indices ``indices`` (each ``< L``) during :meth:`recording`.

    Hooks fire only while recording, so the recomputation of gradient
    checkpointing during backward does not overwrite what was kept.
    """

    def __init__(self, model: torch.nn.Module, layers_path: str, indices: Sequence[int]) -> None:
        layers = decoder_layers(model, layers_path)
        self.indices = sorted(set(indices))
        if self.indices and not (0 <= self.indices[0] and self.indices[-1] < len(layers)):
            raise ValueError(f"hidden indices {self.indices} out of range for {len(layers)} layers")
        self.states: dict[int, torch.Tensor] = {}
        self.active = False
        self.handles = []
        for j in self.indices:
            if j == 0:
                self.handles.append(layers[0].register_forward_pre_hook(self._pre, with_kwargs=True))
            else:
                self.handles.append(layers[j - 1].register_forward_hook(self._post_hook(j)))

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.active:
            self.states[0] = args[0] if args else kwargs["hidden_states"]

    def _post_hook(self, j: int):
        def hook(module: Any, args: tuple, out: Any) -> None:
            if self.active:
                self.states[j] = out[0] if isinstance(out, (tuple, list)) else out

        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[int, torch.Tensor]]:
        self.states = {}
        self.active = True
        try:
            yield self.states
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@dataclass
class TeacherOutput:
    """What the loss needs from the teacher: final hidden state and the aligned ones (cloned out of inference mode)."""

    final: torch.Tensor  # (B, T, H), after the final norm
    aligned: list[torch.Tensor]  # S+1 entries; the last is ``final``


class Teacher:
    """The frozen teacher: forward in inference mode, no logits, only aligned hidden states."""

    def __init__(self, model: PreTrainedModel, layers_path: str, aligned: Sequence[int], keep_hidden: bool) -> None:
        self.model = model.eval().requires_grad_(False)
        self.head = LogitHead.of(model)
        self.aligned = list(aligned)
        self.num_layers = len(decoder_layers(model, layers_path))
        self.capture = (
            HiddenCapture(model, layers_path, [j for j in self.aligned if j < self.num_layers]) if keep_hidden else None
        )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> TeacherOutput:
        with torch.inference_mode():
            ctx: contextlib.AbstractContextManager[dict[int, torch.Tensor]] = (
                self.capture.recording() if self.capture else contextlib.nullcontext({})
            )
            with ctx as states:
                final = self.model.base_model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).last_hidden_state
            states = dict(states)
        # Inference tensors cannot be saved for backward (cosine needs them): clone out.
        final = final.clone()
        aligned = [final if j == self.num_layers else states[j].clone() for j in self.aligned] if self.capture else []
        return TeacherOutput(final, aligned)


class DistillStudent(torch.nn.Module):
    """The student and its whole distillation loss in one ``forward``.

    DDP and FSDP wrap a module's forward; keeping the base-model pass, the
    hidden-state hooks and the chunked head losses inside one forward means
    FSDP has the head's full weight while we use it, and DDP sees every
    parameter that gets a gradient.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        layers_path: str,
        *,
        ce_weight: float,
        kl_weight: float,
        cos_weight: float,
        temperature: float,
        teacher_head: LogitHead | None,
        chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        # FSDP's auto-wrap policy looks for the decoder-layer classes here.
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        self.num_layers = len(decoder_layers(model, layers_path))
        self.layers_path = layers_path
        #: members over the pair's parameters, for --mix steps (a plain object, not a submodule)
        self.members: MemberModels | None = None
        self.ce_weight, self.kl_weight, self.cos_weight = ce_weight, kl_weight, cos_weight
        self.temperature, self.chunk = temperature, chunk
        self.teacher_head = teacher_head
        #: the teacher's head is this student's own, frozen, same values (fsdp.Sharding.shard_student)
        self.teacher_head_is_own = False
        # Student hidden i (0..S) aligns with teacher hidden aligned[i]; all S+1 are kept.
        self.capture = HiddenCapture(model, layers_path, range(self.num_layers)) if cos_weight else None
        if not ce_weight and not kl_weight:
            head = model.get_output_embeddings()
            if head is not model.get_input_embeddings() and head.weight is not model.get_input_embeddings().weight:
                head.requires_grad_(False)  # unused: DDP would wait for its gradient

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        attention_mask: torch.Tensor | None,
        teacher_final: torch.Tensor | None,
        teacher_aligned: Sequence[torch.Tensor],
        ce_denom: float,
        tok_denom: float,
        member: Member | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms over this micro-batch, each a sum divided by the global-batch count.

        ``loss`` is the weighted total; ``ce``, ``kl`` and ``cosine`` the
        unweighted terms (``cosine`` averaged over the S+1 pairs), detached.
        ``member``: train that member (``--mix``, :mod:`.members`) instead of the student.
        """
        net, final, states, starts = self._run(input_ids, attention_mask, member)
        dev = final.device
        zero = torch.zeros((), device=dev)
        loss, ce, kl, cos = zero, zero, zero, zero
        padded = attention_mask is not None  # the caller passes None when no token is padding
        if self.ce_weight or self.kl_weight:
            H = final.shape[-1]
            rows = mask.reshape(-1).nonzero().squeeze(1) if padded else None
            h = final.reshape(-1, H)
            lab = labels.reshape(-1)
            ht = teacher_final.reshape(-1, H) if teacher_final is not None and self.kl_weight else None
            if rows is not None:
                h, lab = h[rows], lab[rows]
                ht = ht[rows] if ht is not None else None
            T = self.temperature
            cd = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else None
            own = LogitHead.of(net)
            head_loss, ce_sum, kl_sum = head_losses(
                h,
                lab,
                own,
                teacher_hidden=ht,
                teacher=own if self.teacher_head_is_own else self.teacher_head,
                ce_coef=self.ce_weight / ce_denom if ce_denom else 0.0,
                kl_coef=self.kl_weight * T * T / tok_denom,
                temperature=T,
                chunk=self.chunk,
                compute_dtype=cd,
            )
            loss = loss + head_loss
            ce = ce_sum / ce_denom if ce_denom else zero
            kl = kl_sum / tok_denom
        if self.cos_weight:
            student_hidden = [states[i] for i in starts] + [final]
            sums = cosine_sums(student_hidden, teacher_aligned, mask if padded else None)
            per_pair = sums / tok_denom
            loss = loss + self.cos_weight * per_pair.mean()
            cos = per_pair.mean().detach()
        return {"loss": loss, "ce": ce.detach(), "kl": kl.detach(), "cosine": cos}

    def _run(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, member: Member | None
    ) -> tuple[Any, torch.Tensor, dict[int, torch.Tensor], Sequence[int]]:
        """The final hidden state of the student (or of ``member``), the hidden states the cosine term
        aligns (by hidden index) and the index of each block's input among them."""
        starts: Sequence[int]
        if member is None:
            net, capture, starts = self.model, self.capture, range(self.num_layers)
        else:
            if self.members is None:
                raise BoomerangError("internal: a member step needs the pair (DistillStudent.members)")
            built = self.members.build(member)
            net, starts = built.model, built.block_starts
            capture = HiddenCapture(net, self.layers_path, starts) if self.cos_weight else None
        ctx: contextlib.AbstractContextManager[dict[int, torch.Tensor]] = (
            capture.recording() if capture else contextlib.nullcontext({})
        )
        try:
            with ctx as states:
                final = net.base_model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).last_hidden_state
                states = dict(states)
        finally:
            if member is not None and capture is not None:
                capture.remove()
        return net, final, states, starts
