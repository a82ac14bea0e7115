"""Issue #22's levers: training text mixed and shuffled (data.mix), ``stdlib-docs``, and member-aware
training (``distill --mix``), each checked against an independent computation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from boomerang_cli.arch import ModelInfo
from boomerang_cli.data import (
    BlockStream,
    check_weights,
    collate,
    docstrings,
    load_all_documents,
    load_documents,
    mixed_documents,
    parse_weights,
    split_of,
    stdlib_files,
)
from boomerang_cli.distill import DistillConfig, distill
from boomerang_cli.distill.members import MemberDraw, MemberModels
from boomerang_cli.errors import BoomerangError, DataError
from boomerang_cli.member import Member
from boomerang_cli.models import load_tokenizer, model_from_composition
from boomerang_cli.plan import Plan

from .common import load, perturb_saved, sample_ids, tiny_model_dir


pytestmark = pytest.mark.usefixtures("isolated")


def _corpus(path: Path, rows: int, word: str) -> Path:
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"{word} {i}. " * (1 + i % 5)}) + "\n")
    return path


# -- documents: weights, shuffle ----------------------------------------------------------------


def test_without_weights_or_seed_the_documents_are_read_as_before(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl", 40, "alpha"), _corpus(tmp_path / "b.jsonl", 30, "beta")
    srcs = [str(a), str(b)]
    assert list(mixed_documents(srcs)) == list(load_all_documents(srcs))


def test_weights_hold_each_sources_share_of_characters_and_every_source_is_read_whole(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl", 200, "alpha"), _corpus(tmp_path / "b.jsonl", 20, "beta")
    docs_a, docs_b = list(load_documents(str(a))), list(load_documents(str(b)))
    mixed = list(mixed_documents([str(a), str(b)], weights=[3, 1]))
    # Every document of the larger source exactly once; the smaller one starts again until then.
    from_a = [d for d in mixed if d.startswith("alpha")]
    assert from_a == docs_a
    from_b = [d for d in mixed if d.startswith("beta")]
    assert len(from_b) > len(docs_b) and from_b == (docs_b * 10)[: len(from_b)]
    # At every point the shares stay within one document of 3:1.
    longest = max(map(len, docs_a + docs_b))
    read = {"alpha": 0, "beta": 0}
    for d in mixed:
        read[d.split()[0]] += len(d)
        total = read["alpha"] + read["beta"]
        assert abs(read["alpha"] - 0.75 * total) <= longest


def test_shuffle_is_a_seeded_permutation_new_each_pass(tmp_path):
    a = _corpus(tmp_path / "a.jsonl", 60, "alpha")
    plain = list(load_documents(str(a)))
    s0 = list(mixed_documents([str(a)], seed=0))
    assert sorted(s0) == sorted(plain) and s0 != plain
    assert s0 == list(mixed_documents([str(a)], seed=0))  # the same order again (a resumed run)
    assert s0 != list(mixed_documents([str(a)], seed=1))
    assert s0 != list(mixed_documents([str(a)], seed=0, epoch=1))
    # A shuffle buffer smaller than the source still gives every document once.
    from boomerang_cli.data.mix import _order, shuffled

    small = list(shuffled(iter(plain), _order("x"), buffer=5))
    assert sorted(small) == sorted(plain) and small != plain


def test_weights_and_shuffle_together(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl", 50, "alpha"), _corpus(tmp_path / "b.jsonl", 50, "beta")
    mixed = list(mixed_documents([str(a), str(b)], weights=[1, 1], seed=3))
    assert sorted(d for d in mixed if d.startswith("alpha")) == sorted(load_documents(str(a)))
    assert mixed == list(mixed_documents([str(a), str(b)], weights=[1, 1], seed=3))
    assert mixed != list(mixed_documents([str(a), str(b)], weights=[1, 1]))


def test_bad_weights_and_empty_sources_are_refused(tmp_path):
    a = _corpus(tmp_path / "a.jsonl", 50, "alpha")
    with pytest.raises(DataError, match="one weight per --data"):
        check_weights([str(a)], [1.0, 2.0])
    with pytest.raises(DataError, match="numbers > 0"):
        check_weights([str(a), "stdlib"], [1.0, 0.0])
    with pytest.raises(DataError, match="numbers > 0"):
        check_weights([str(a), "stdlib"], [1.0, math.nan])
    with pytest.raises(DataError, match="cannot read --data-weights"):
        parse_weights("1,x")
    assert parse_weights("3,1") == [3.0, 1.0]
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "only row"}) + "\n")
    key_in_validation = next(i for i in range(1, 100) if split_of(f"one.jsonl:{i}") == "validation")
    assert key_in_validation  # the single row (line 1) is in train; its validation split is empty
    with pytest.raises(DataError, match="no documents in its validation split"):
        list(mixed_documents([str(one), str(a)], "validation", weights=[1, 1]))


def test_resumed_stream_with_shuffle_and_weights_continues_exactly(tmp_path):
    a, b = _corpus(tmp_path / "a.jsonl", 30, "alpha"), _corpus(tmp_path / "b.jsonl", 10, "beta")
    tok = load_tokenizer(tiny_model_dir(tmp_path, "llama"))

    def docs(epoch: int):
        return mixed_documents([str(a), str(b)], weights=[1, 2], seed=5, epoch=epoch)

    ref = BlockStream(docs, tok, 16, repeat=True)
    blocks, positions = [], []
    for block in itertools.islice(ref, 400):  # several passes
        blocks.append(block)
        positions.append(ref.position)
    assert positions[-1].epoch >= 2
    for k in (7, 150, 399 - 20):
        resumed = iter(BlockStream(docs, tok, 16, repeat=True, position=positions[k]))
        for want in blocks[k + 1 : k + 20]:
            got = next(resumed)
            assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.labels, want.labels)


# -- stdlib-docs ---------------------------------------------------------------------------


def test_docstrings_in_source_order():
    text = '"""Module."""\nclass A:\n    """Class A."""\n    def f(self):\n        """Method f."""\n'
    text += 'def g():\n    "G."\n    x = "not a docstring"\n'
    assert docstrings(text) == "Module.\n\nClass A.\n\nMethod f.\n\nG."
    assert docstrings("def broken(:\n") == ""


def test_stdlib_docs_holds_out_the_docstrings_of_held_out_files():
    files = dict(stdlib_files())
    val_keys = [k for k in files if split_of(k) == "validation"]
    held = {docstrings(files[k].read_text()) for k in val_keys} - {""}
    train = list(load_documents("stdlib-docs", "train"))
    assert held and not held & set(train)
    assert held <= set(load_documents("stdlib-docs", "validation"))
    # pydoc's help topics are documents of their own, English prose
    assert any(d.startswith("Boolean operations") or "Boolean operations\n*****" in d[:60] for d in train)
    assert sum(map(len, train)) > 1_000_000


# -- members: the draw, the models, the loss -----------------------------------------------


def test_member_draw():
    plan = Plan.from_flags(30)  # SmolLM2's plan: 14 patchable blocks, 2 singletons
    patchable = {b.index for b in plan.patchable_blocks}
    assert all(MemberDraw(0.0, 1, plan).at(s) is None for s in range(200))
    always = [MemberDraw(1.0, 1, plan).at(s) for s in range(300)]
    assert all(m is not None and m.teacher_blocks and m.teacher_blocks <= patchable for m in always)
    sizes = [len(m.teacher_blocks) for m in always if m]
    assert 5.5 < sum(sizes) / len(sizes) < 8.5  # each of 14 blocks with probability 1/2
    half = [MemberDraw(0.3, 1, plan).at(s) for s in range(2000)]
    assert 0.25 < sum(m is not None for m in half) / 2000 < 0.35
    assert [MemberDraw(0.3, 1, plan).at(s) for s in range(50)] == half[:50]  # a pure function of (seed, step)
    assert [MemberDraw(0.3, 2, plan).at(s) for s in range(50)] != half[:50]


def _pair(tmp_path: Path, model_type: str, **kw):
    from boomerang_cli.refs import resolve
    from boomerang_cli.student import init_student

    teacher = tiny_model_dir(tmp_path, model_type, layers=7, **kw)
    sdir = tmp_path / "student"
    init_student(resolve(str(teacher)), Plan.from_keep(7, [0, 2, 3, 5]), sdir)
    perturb_saved(sdir, seed=3)  # student layers differ from the teacher's: wrong picks show
    return teacher, sdir


@pytest.mark.parametrize("model_type,kw", [("llama", {}), ("qwen2", {}), ("gemma3_text", {})])
def test_a_member_over_shared_parameters_computes_what_its_composition_does(tmp_path, model_type, kw):
    teacher, sdir = _pair(tmp_path, model_type, **kw)
    infos = {"teacher": ModelInfo.load(teacher), "student": ModelInfo.load(sdir)}
    t, s = load(teacher), load(sdir)
    plan = Plan.from_keep(7, [0, 2, 3, 5])
    models = MemberModels.of_pair(s, t, infos["teacher"], infos["student"], plan)
    ids = sample_ids(2, 20)
    own = {id(p) for m in (s, t) for p in m.parameters()}
    for blocks in ([0], [2], [3], [0, 3], [0, 2, 3], [1, 2]):
        member = Member.of(plan, blocks)
        built = models.build(member).model.eval()
        assert all(id(p) in own for p in built.parameters()), "a member copied a parameter"
        want = model_from_composition(member.composition(infos))
        assert built.config.num_hidden_layers == member.num_layers
        if hasattr(want.config, "layer_types"):
            assert built.config.layer_types == want.config.layer_types
        with torch.no_grad():
            torch.testing.assert_close(built(input_ids=ids).logits, want(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def _oracle_loss(member_model, teacher, plan: Plan, member: Member, ids, labels) -> float:
    """SPEC section 3's loss of ``member`` against the teacher, from HF's own outputs."""
    with torch.no_grad():
        t = teacher(input_ids=ids, output_hidden_states=True)
        m = member_model(input_ids=ids, output_hidden_states=True)
    n = labels.numel()
    ce = F.cross_entropy(m.logits.reshape(n, -1), labels.reshape(-1), ignore_index=-100)
    kl = (
        F.kl_div(
            F.log_softmax(m.logits, -1).reshape(n, -1),
            F.log_softmax(t.logits, -1).reshape(n, -1),
            log_target=True,
            reduction="sum",
        )
        / n
    )
    starts, at = [], 0
    for b in plan.blocks:
        starts.append(at)
        at += b.size if b.index in member.teacher_blocks else 1
    mine = [m.hidden_states[i] for i in starts] + [m.hidden_states[-1]]
    theirs = [t.hidden_states[j] for j in plan.aligned_teacher_hidden()]
    cos = torch.stack([(1 - F.cosine_similarity(a, b, dim=-1)).mean() for a, b in zip(mine, theirs)]).mean()
    return float(ce + 0.1 * kl + 2.0 * cos)


def test_a_member_step_trains_the_member_against_the_teacher(tmp_path):
    """--mix 1: step 1's loss is the drawn member's loss, computed here from a model built by the family's
    own composition; the student layers of that member move, the replaced ones and the teacher do not."""
    teacher, sdir = _pair(tmp_path, "llama")
    corpus = _corpus(tmp_path / "c.jsonl", 300, "the fox jumps")
    plan = Plan.from_keep(7, [0, 2, 3, 5])
    out = tmp_path / "out"
    distill(
        DistillConfig(
            teacher=str(teacher),
            student=sdir,
            output=out,
            data=[str(corpus)],
            seq_len=16,
            batch_size=2,
            steps=3,
            lr=1e-2,
            mix=1.0,
            seed=4,
            save_every=0,
        )
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    draws = [MemberDraw(1.0, 4, plan).at(s) for s in range(3)]
    assert [r["trained"] for r in rows] == ["member"] * 3
    assert [r["teacher_blocks"] for r in rows] == [sorted(m.teacher_blocks) for m in draws]
    assert [r["layers"] for r in rows] == [m.num_layers for m in draws]

    infos = {"teacher": ModelInfo.load(teacher), "student": ModelInfo.load(sdir)}
    tok = load_tokenizer(teacher)
    stream = BlockStream(lambda e: mixed_documents([str(corpus)]), tok, 16, repeat=True)
    ids, labels, _ = collate(list(itertools.islice(stream, 2)))
    want = _oracle_loss(model_from_composition(draws[0].composition(infos)), load(teacher), plan, draws[0], ids, labels)
    assert rows[0]["loss"] == pytest.approx(want, rel=1e-4)


def test_gradients_reach_only_the_student_layers_a_member_runs(tmp_path):
    from boomerang_cli.distill.model import DistillStudent, Teacher

    teacher_dir, sdir = _pair(tmp_path, "llama")
    infos = {"teacher": ModelInfo.load(teacher_dir), "student": ModelInfo.load(sdir)}
    t, s = load(teacher_dir), load(sdir).train()
    plan = Plan.from_keep(7, [0, 2, 3, 5])
    path = infos["teacher"].arch.layers_path
    teacher = Teacher(t, path, plan.aligned_teacher_hidden(), keep_hidden=True)
    model = DistillStudent(
        s, path, ce_weight=1.0, kl_weight=0.1, cos_weight=2.0, temperature=1.0, teacher_head=teacher.head
    )
    model.members = MemberModels.of_pair(s, t, infos["teacher"], infos["student"], plan)
    ids = sample_ids(2, 16)
    labels = torch.roll(ids, -1, dims=1)
    mask = torch.ones_like(ids, dtype=torch.bool)
    t_out = teacher(ids, None)
    member = Member.of(plan, [0, 3])  # blocks 0 and 3 from the teacher: student layers 0 and 3 unused
    out = model(ids, labels, mask, None, t_out.final, t_out.aligned, labels.numel(), mask.sum(), member=member)
    out["loss"].backward()
    layers = s.get_submodule(path)
    for i, layer in enumerate(layers):
        grads = [p.grad for p in layer.parameters()]
        if i in member.teacher_blocks:
            assert all(g is None for g in grads), i
        else:
            assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), i
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())


def test_mix_0_builds_no_member_and_logs_as_before(tmp_path, monkeypatch):
    teacher = tiny_model_dir(tmp_path, "llama", layers=6)
    corpus = _corpus(tmp_path / "c.jsonl", 300, "the fox jumps")

    def no_member(*a, **k):
        raise AssertionError("--mix 0 must not build a member")

    monkeypatch.setattr(MemberModels, "build", no_member)
    base = dict(teacher=str(teacher), data=[str(corpus)], seq_len=16, batch_size=2, steps=3, lr=3e-3, save_every=0)
    distill(DistillConfig(output=tmp_path / "a", mix=0.0, **base))
    distill(DistillConfig(output=tmp_path / "b", **base))  # the paper recipe's --mix: 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and not any("trained" in r for r in rows)
    a, b = (load(tmp_path / n).state_dict() for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_mix_is_refused_before_any_work(tmp_path):
    teacher = tiny_model_dir(tmp_path, "llama", layers=6)
    with pytest.raises(BoomerangError, match=r"--mix must be a probability in \[0, 1\]"):
        distill(DistillConfig(teacher=str(teacher), output=tmp_path / "o", mix=1.5, steps=1))
    with pytest.raises(BoomerangError, match="--fsdp/--shard cannot shard"):
        distill(
            DistillConfig(teacher=str(teacher), output=tmp_path / "o", mix=0.5, steps=1, shard=["student", "teacher"])
        )
    assert not (tmp_path / "o").exists()


def test_member_steps_under_gradient_checkpointing_change_nothing(tmp_path):
    teacher = tiny_model_dir(tmp_path, "llama", layers=6)
    corpus = _corpus(tmp_path / "c.jsonl", 300, "the fox jumps")
    losses = {}
    for ckpt in (False, True):
        out = tmp_path / f"ckpt-{ckpt}"
        distill(
            DistillConfig(
                teacher=str(teacher),
                output=out,
                data=[str(corpus)],
                seq_len=16,
                batch_size=2,
                steps=4,
                lr=3e-3,
                mix=1.0,
                seed=2,
                save_every=0,
                gradient_checkpointing=ckpt,
            )
        )
        losses[ckpt] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses[False]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
