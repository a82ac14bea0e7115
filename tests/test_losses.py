"""Each loss term against a direct computation on the same tensors (SPEC section 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boomerang_cli.distill.losses import LogitHead, LossWeights, cosine_sums, head_losses, verify_head
from boomerang_cli.distill.model import DistillStudent, HiddenCapture, Teacher
from boomerang_cli.errors import BoomerangError, UnsupportedArchitectureError
from boomerang_cli.plan import Plan

from .common import ARCHS, make_model, sample_ids

LAYERS_PATH = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and several crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _case(seed=0, N=29, H=12, V=40, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).requires_grad_()
    W = torch.randn(V, H, generator=g).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_() if bias else None
    ht, Wt = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[::4] = -100
    return h, W, b, ht, Wt, labels


def _direct(h, W, b, ht, Wt, labels, T, cap):
    z = h @ W.T + (b if b is not None else 0)
    zt = ht @ Wt.T
    if cap:
        z, zt = cap * torch.tanh(z / cap), cap * torch.tanh(zt / cap)
    ce = F.cross_entropy(z, labels, ignore_index=-100, reduction="sum")
    p = F.softmax(zt / T, -1)
    kl = (p * (torch.log(p) - F.log_softmax(z / T, -1))).sum()
    return ce, kl


@pytest.mark.parametrize("T,cap", [(1.0, None), (2.0, None), (1.0, 3.0), (0.5, 3.0)])
def test_ce_and_kl_match_direct_computation_with_gradients(T, cap):
    h, W, b, ht, Wt, labels = _case()
    ce_c, kl_c = 0.9, 0.1 * T * T
    loss, ce, kl = head_losses(
        h,
        labels,
        LogitHead(W, b, 1.0, cap),
        teacher_hidden=ht,
        teacher=LogitHead(Wt, None, 1.0, cap),
        ce_coef=ce_c,
        kl_coef=kl_c,
        temperature=T,
        chunk=5,
    )
    ce_r, kl_r = _direct(h, W, b, ht, Wt, labels, T, cap)
    torch.testing.assert_close(ce, ce_r.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(kl, kl_r.detach(), rtol=1e-5, atol=1e-4)
    ref = ce_c * ce_r + kl_c * kl_r
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-4)
    got = torch.autograd.grad(2.5 * loss, [h, W, b])
    want = torch.autograd.grad(2.5 * ref, [h, W, b])
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


def test_scale_transform_and_single_terms():
    h, W, b, ht, Wt, labels = _case(seed=3, bias=False)
    loss, ce, kl = head_losses(h, labels, LogitHead(W, None, scale=0.25), ce_coef=1.0)
    z = 0.25 * (h @ W.T)
    torch.testing.assert_close(ce, F.cross_entropy(z, labels, ignore_index=-100, reduction="sum").detach())
    assert kl.item() == 0.0
    g = torch.autograd.grad(loss, W)[0]
    torch.testing.assert_close(
        g, torch.autograd.grad(F.cross_entropy(z, labels, reduction="sum"), W)[0], rtol=1e-4, atol=1e-5
    )
    # KL only: the CE coefficient 0 switches CE's gradient off.
    loss, _, kl = head_losses(
        h, labels, LogitHead(W, None), teacher_hidden=ht, teacher=LogitHead(Wt, None), ce_coef=0.0, kl_coef=1.0
    )
    torch.testing.assert_close(loss, kl)


def test_chunked_equals_unchunked():
    h, W, b, ht, Wt, labels = _case(seed=1, N=50)
    outs, grads = [], []
    for chunk in (1, 7, 50, 1000):
        loss, ce, kl = head_losses(
            h,
            labels,
            LogitHead(W, b),
            teacher_hidden=ht,
            teacher=LogitHead(Wt, None),
            ce_coef=1.0,
            kl_coef=0.1,
            chunk=chunk,
        )
        outs.append(torch.stack([loss, ce, kl]).detach())
        grads.append(torch.autograd.grad(loss, [h, W, b]))
    for o, g in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(o, outs[0], rtol=1e-6, atol=1e-5)
        for a, c in zip(g, grads[0]):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_no_gradient_work_without_grad():
    h, W, b, ht, Wt, labels = _case(seed=2)
    with torch.no_grad():
        loss, ce, _ = head_losses(h, labels, LogitHead(W, b))
    assert not loss.requires_grad and torch.isfinite(ce)


def test_a_frozen_head_gets_no_gradient_matrix_and_the_same_hidden_gradient():
    """Embeddings kept as the teacher's: no vocab x hidden gradient is accumulated (or kept for
    backward); the loss and the hidden states' gradient are those of a trainable head, bit for bit."""
    h, W, b, ht, Wt, labels = _case(seed=4)
    kw = dict(teacher_hidden=ht, teacher=LogitHead(Wt, None), ce_coef=1.0, kl_coef=0.1, chunk=7)
    loss, ce, kl = head_losses(h, labels, LogitHead(W, b), **kw)
    want = torch.autograd.grad(loss, h)[0]
    Wf, bf = W.detach(), b.detach()
    frozen, ce_f, kl_f = head_losses(h, labels, LogitHead(Wf, bf), **kw)
    assert all(t.shape != W.shape and t.shape != b.shape for t in frozen.grad_fn.saved_tensors)
    assert torch.equal(torch.stack([frozen, ce_f, kl_f]), torch.stack([loss, ce, kl]).detach())
    assert torch.equal(torch.autograd.grad(frozen, h)[0], want)


def test_cosine_sums_match_direct_and_skip_padding():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    t = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    got = cosine_sums(s, t, mask)
    for i in range(3):
        cos = F.cosine_similarity(s[i], t[i], dim=-1)
        torch.testing.assert_close(got[i], (1 - cos)[mask].sum())
    # Padding values do not matter.
    s2 = [x.clone() for x in s]
    s2[0][1, 4] = 1e6
    torch.testing.assert_close(cosine_sums(s2, t, mask), got)


def test_loss_weights_validation():
    with pytest.raises(BoomerangError, match="switched off"):
        LossWeights(0, 0, 0)
    with pytest.raises(BoomerangError, match="temperature"):
        LossWeights(temperature=0)
    with pytest.raises(BoomerangError, match=">= 0"):
        LossWeights(kl=-1)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_hooks_keep_exactly_hf_hidden_states_and_head_is_verified(model_type):
    m = make_model(model_type)
    cap = HiddenCapture(m, LAYERS_PATH.get(model_type, "model.layers"), [0, 2, 5])
    ids = sample_ids()
    with torch.no_grad():
        ref = m(ids, output_hidden_states=True).hidden_states
        with cap.recording() as st:
            m.base_model(input_ids=ids)
    assert sorted(st) == [0, 2, 5]
    for j in (0, 2, 5):
        assert torch.equal(st[j], ref[j])
    head = LogitHead.of(m)
    verify_head(m, head, 512)
    if model_type == "gemma2":
        assert head.softcap == m.config.final_logit_softcapping
    head.scale = 2.0
    with pytest.raises(UnsupportedArchitectureError, match="logits"):
        verify_head(m, head, 512)


def _reference_loss(student, teacher, plan, ids, labels, mask, w: LossWeights):
    """SPEC section 3 straight from HF outputs: all hidden states, full logits."""
    so = student(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    with torch.no_grad():
        to = teacher(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    T = w.temperature
    ce = F.cross_entropy(so.logits[mask], labels[mask], ignore_index=-100)
    p = F.softmax(to.logits[mask] / T, -1)
    kl = (p * (torch.log(p) - F.log_softmax(so.logits[mask] / T, -1))).sum(-1).mean()
    pairs = plan.aligned_teacher_hidden()
    cos = torch.stack(
        [
            (1 - F.cosine_similarity(so.hidden_states[i][mask], to.hidden_states[j][mask], dim=-1)).mean()
            for i, j in enumerate(pairs)
        ]
    )
    return w.ce * ce + w.kl * T * T * kl + w.cosine / len(pairs) * cos.sum(), ce, kl, cos.mean()


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gpt2"])
def test_student_loss_is_the_spec_formula(model_type):
    teacher = make_model(model_type, layers=6, seed=0)
    plan = Plan.from_paper_flags(6, 1, 2, 2)
    student = make_model(model_type, layers=plan.num_student_layers, seed=1)  # eval: no dropout noise
    lp = LAYERS_PATH.get(model_type, "model.layers")
    w = LossWeights(ce=1.0, kl=0.3, cosine=2.0, temperature=2.0)
    ids = sample_ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False  # right padding
    labels = torch.where(mask, torch.roll(ids, -1, 1), torch.full_like(ids, -100))
    labels[:, -1] = -100
    labels[0, 3] = -100  # a document boundary
    t = Teacher(teacher, lp, plan.aligned_teacher_hidden(), keep_hidden=True)
    model = DistillStudent(
        student,
        lp,
        ce_weight=w.ce,
        kl_weight=w.kl,
        cos_weight=w.cosine,
        temperature=w.temperature,
        teacher_head=t.head,
        chunk=3,
    )
    t_out = t(ids, mask.long())
    n_ce, n_tok = int((labels != -100).sum()), int(mask.sum())
    out = model(ids, labels, mask, mask.long(), t_out.final, t_out.aligned, n_ce, n_tok)
    params = [p for p in student.parameters()]
    got = torch.autograd.grad(out["loss"], params, allow_unused=True)
    ref, ce, kl, cos = _reference_loss(student, teacher, plan, ids, labels, mask, w)
    want = torch.autograd.grad(ref, params, allow_unused=True)
    torch.testing.assert_close(out["loss"], ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["ce"], ce.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["kl"], kl.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["cosine"], cos.detach(), rtol=1e-4, atol=1e-6)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or not a.abs().sum()
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # Padding is excluded: other ids at padded positions change nothing.
    ids2 = ids.clone()
    ids2[1, 7:] = 3
    out2 = model(ids2, labels, mask, mask.long(), *_teacher(t, ids2, mask), n_ce, n_tok)
    torch.testing.assert_close(out2["loss"], out["loss"], rtol=1e-5, atol=1e-6)


def _teacher(t, ids, mask):
    o = t(ids, mask.long())
    return o.final, o.aligned
