"""The distillation loss of SPEC section 3, computed without full-batch logits.

    loss = w_ce * CE(student)
         + w_kl * T^2 * KL(softmax(t/T) || softmax(s/T))
         + (w_cos / (S+1)) * sum over aligned pairs of mean_tokens(1 - cos(h_s, h_t))

CE and KL need the logits of both models, ``tokens x vocab`` each: for a batch
of 8 x 2048 tokens and a 150k vocabulary that is 10 GB in fp32, per model. We
never build them: :func:`head_losses` walks the tokens in chunks, computes one
chunk's student and teacher logits over the full vocabulary, the chunk's CE
and KL, *and their gradients* (the softmax gradients are closed-form), then
drops the chunk. The gradients for the hidden states and the head weight are
handed back in ``backward``, so autograd never stores a logit. Peak memory is
a few ``chunk x vocab`` fp32 tensors.

Every term takes sums over tokens and divides by a count the caller passes
(the count over the whole global batch), so splitting a batch across
micro-batches or processes does not change the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F

from ..data import IGNORE
from ..errors import BoomerangError, UnsupportedArchitectureError
from .weights import LossWeights as LossWeights  # re-exported: its home before weights.py

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Elements of one ``chunk x vocab`` fp32 tensor when the chunk is chosen automatically (64 MB).
AUTO_CHUNK_ELEMENTS = 1 << 24


# -- how a model turns its final hidden state into logits ----------------------------------

#: Config fields that change logits after the head's matmul, and how. Data, not if-chains:
#: ``multiply`` logits *= v (Cohere logit_scale), ``divide`` logits /= v (Granite),
#: ``softcap`` logits = v * tanh(logits / v) (Gemma 2).
LOGIT_FIELDS: dict[str, str] = {
    "logit_scale": "multiply",
    "output_multiplier": "multiply",
    "logits_scaling": "divide",
    "final_logit_softcapping": "softcap",
}


@dataclass
class LogitHead:
    """``logits = softcap(scale * (h @ weight.T + bias))`` for one model."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, model: PreTrainedModel) -> "LogitHead":
        head = model.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise UnsupportedArchitectureError(f"{type(model).__name__}: no linear LM head")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        scale, softcap = 1.0, None
        for name, kind in LOGIT_FIELDS.items():
            v = getattr(cfg, name, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v:
                if kind == "multiply":
                    scale *= float(v)
                elif kind == "divide":
                    scale /= float(v)
                else:
                    softcap = float(v)
        return cls(head.weight, getattr(head, "bias", None), scale, softcap)

    def transform(self, z: torch.Tensor) -> torch.Tensor:
        """Raw matmul output (fp32) to logits, in place."""
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def transform_grad(self, g: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """d loss / d raw from d loss / d logits (in place on ``g``); needs the transformed logits."""
        if self.softcap is not None:
            g.mul_(1 - (logits / self.softcap) ** 2)
        if self.scale != 1.0:
            g.mul_(self.scale)
        return g

    def logits(self, h: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Full fp32 logits of ``h`` (small inputs only: checks and tests)."""
        dtype = dtype or self.weight.dtype
        z = h.to(dtype) @ self.weight.to(dtype).T
        if self.bias is not None:
            z = z + self.bias.to(dtype)
        return self.transform(z.float())


def verify_head(model: PreTrainedModel, head: LogitHead, vocab: int) -> None:
    """Check on a few tokens that ``head`` reproduces the model's own logits.

    A model computing logits some way :data:`LOGIT_FIELDS` does not describe
    would otherwise be distilled against the wrong distribution, silently.
    """
    ids = torch.arange(2, 10, device=head.weight.device).remainder(vocab).unsqueeze(0)
    training = model.training
    model.eval()  # no dropout: both passes must see the same network
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        got = head.logits(model.base_model(input_ids=ids).last_hidden_state)
    model.train(training)
    if not bool(torch.isfinite(ref).all()):
        bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        where = f"weight {bad} holds NaN or infinite values" if bad else "its logits are NaN or infinite"
        raise BoomerangError(
            f"{type(model).__name__}: {where}; the model files are broken, not the "
            "architecture: restore or rebuild the model"
        )
    if not torch.allclose(ref, got, rtol=1e-3, atol=1e-3 * max(1.0, ref.abs().max().item())):
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: computes logits in a way boomerang does not know "
            "(see LOGIT_FIELDS in boomerang_cli/distill/losses.py)"
        )


# -- CE and KL, chunk by chunk ----------------------------------------------------------------


def auto_chunk(vocab: int) -> int:
    return max(1, AUTO_CHUNK_ELEMENTS // max(vocab, 1))


@dataclass(frozen=True)
class _HeadSpec:
    student: LogitHead
    teacher: LogitHead | None
    ce_coef: float  # weight / CE denominator
    kl_coef: float  # weight * T^2 / token denominator
    temperature: float
    chunk: int
    compute_dtype: torch.dtype
    need_grad: bool


def _raw(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    z = h @ w.T
    if b is not None:
        z = z + b
    return z.float()


def _logit_grad(
    spec: _HeadSpec,
    logq: torch.Tensor,
    logp_s: torch.Tensor | None,
    p_t: torch.Tensor | None,
    lab: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """One chunk's d loss / d logits, written over ``logq`` (and ``logp_s``): the caller drops both.

    d loss / d logits = ce_coef * (softmax(logits) - onehot(label)) on rows with a label
                      + (kl_coef / T) * (softmax(logits / T) - p_t)
    """
    T = spec.temperature
    c = spec.kl_coef / T if p_t is not None else 0.0
    row = (valid * spec.ce_coef).to(torch.float32).unsqueeze(1)
    if T == 1:
        g = logq.exp_().mul_(row + c)  # one softmax serves both terms
    else:
        g = logq.exp_().mul_(c)
        if logp_s is not None:
            g.addcmul_(logp_s.exp_(), row)
    if p_t is not None:
        g.sub_(p_t, alpha=c)
    if spec.ce_coef:
        rows = valid.nonzero().squeeze(1)
        g[rows, lab[rows]] -= spec.ce_coef
    return g


class _HeadLosses(torch.autograd.Function):
    """CE and KL sums over rows of ``h``; gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        h_t: torch.Tensor | None,
        labels: torch.Tensor,
        spec: _HeadSpec,
    ):
        cd, T = spec.compute_dtype, spec.temperature
        n = h.shape[0]
        w = weight.detach().to(cd)
        b = bias.detach().to(cd) if bias is not None else None
        tw = tb = None
        if spec.kl_coef and spec.teacher is not None:
            tw = spec.teacher.weight.detach().to(cd)
            tb = spec.teacher.bias.detach().to(cd) if spec.teacher.bias is not None else None
        grad_h = torch.empty_like(h) if spec.need_grad else None
        # A frozen head (embeddings kept as the teacher's) gets no gradient: none is accumulated, so no
        # vocab x hidden fp32 matrix is allocated here and scaled again in backward (2 x 192 MiB for
        # SmolLM2's vocabulary at hidden 1024).
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if spec.need_grad and weight.requires_grad
            else None
        )
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            if spec.need_grad and bias is not None and bias.requires_grad
            else None
        )
        ce_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        kl_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, n, spec.chunk):
                e = min(n, s + spec.chunk)
                hc = h[s:e].detach().to(cd)
                logits = spec.student.transform(_raw(hc, w, b))
                lab = labels[s:e]
                valid = lab != IGNORE
                # log softmax(logits / T); at T == 1 it is also CE's log-probabilities.
                logq = torch.log_softmax(logits if T == 1 else logits / T, dim=-1)
                logp_s = None
                if spec.ce_coef:
                    logp_s = logq if T == 1 else torch.log_softmax(logits, dim=-1)
                    ce_sum -= (logp_s.gather(1, lab.clamp(min=0).unsqueeze(1)).squeeze(1) * valid).sum()
                p_t = None
                if tw is not None:
                    assert spec.teacher is not None and h_t is not None  # tw comes from the teacher, with h_t
                    t_logits = spec.teacher.transform(_raw(h_t[s:e].detach().to(cd), tw, tb))
                    logp_t = torch.log_softmax(t_logits if T == 1 else t_logits / T, dim=-1)
                    del t_logits
                    p_t = logp_t.exp()
                    kl_sum += torch.einsum("ij,ij->", p_t, logp_t.sub_(logq))
                    del logp_t
                g = None
                if spec.need_grad and (spec.ce_coef or p_t is not None):
                    g = _logit_grad(spec, logq, logp_s, p_t, lab, valid)
                del logq, logp_s, p_t
                if grad_h is not None and g is not None:  # need_grad (grad_w too, unless the head is frozen)
                    spec.student.transform_grad(g, logits)
                    gc = g.to(cd)
                    grad_h[s:e] = (gc @ w).to(h.dtype)
                    if grad_w is not None:  # None for a frozen head
                        if cd == torch.float32:
                            grad_w.addmm_(gc.T, hc)
                        else:
                            grad_w += (gc.T @ hc).float()
                    if grad_b is not None:
                        grad_b += g.sum(0)
                elif grad_h is not None:
                    grad_h[s:e] = 0
        loss = spec.ce_coef * ce_sum + spec.kl_coef * kl_sum
        ctx.save_for_backward(*(t for t in (grad_h, grad_w, grad_b) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.w_dtype = weight.dtype
        ctx.b_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(ce_sum, kl_sum)
        return loss, ce_sum, kl_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _ce: Any, _kl: Any):
        has_grad, has_w, has_b = ctx.has
        if not has_grad:
            return None, None, None, None, None, None
        saved = iter(ctx.saved_tensors)
        grad_h = next(saved)
        grad_w = next(saved) if has_w else None
        grad_b = next(saved) if has_b else None
        gl = grad_loss.float()
        return (
            (grad_h * gl.to(grad_h.dtype)),
            (grad_w * gl).to(ctx.w_dtype) if grad_w is not None else None,
            (grad_b * gl).to(ctx.b_dtype) if grad_b is not None else None,
            None,
            None,
            None,
        )


def head_losses(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    student: LogitHead,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher: LogitHead | None = None,
    ce_coef: float = 1.0,
    kl_coef: float = 0.0,
    temperature: float = 1.0,
    chunk: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ce_coef * CE_sum + kl_coef * KL_sum, CE_sum, KL_sum)`` over the rows of ``hidden``.

    ``hidden``/``teacher_hidden``: final hidden states ``(N, H)`` of the real
    (non-padding) tokens; ``labels``: ``(N,)`` next tokens, ``-100`` where none.
    CE_sum is the summed token cross-entropy of the student at temperature 1;
    KL_sum the summed ``KL(softmax(t/T) || softmax(s/T))``. Only ``loss`` has a
    gradient (to ``hidden`` and the head's weight and bias).
    """
    if kl_coef and (teacher_hidden is None or teacher is None):
        raise ValueError("KL needs the teacher's final hidden states and head")
    spec = _HeadSpec(
        student,
        teacher if kl_coef else None,
        float(ce_coef),
        float(kl_coef),
        float(temperature),
        int(chunk or auto_chunk(student.weight.shape[0])),
        compute_dtype or student.weight.dtype,
        torch.is_grad_enabled() and (hidden.requires_grad or student.weight.requires_grad),
    )
    return _HeadLosses.apply(hidden, student.weight, student.bias, teacher_hidden if kl_coef else None, labels, spec)


# -- cosine alignment of hidden states -------------------------------------------------------


def cosine_sums(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``(P,)``: for each aligned pair, the sum over real tokens of ``1 - cos(h_s, h_t)`` (fp32)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student hidden states but {len(teacher)} teacher ones")
    out = []
    for hs, ht in zip(student, teacher):
        a, b = hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1])
        if mask is not None:
            keep = mask.reshape(-1)
            a, b = a[keep], b[keep]
        cos = F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)
        out.append((1 - cos).sum())
    return torch.stack(out)
