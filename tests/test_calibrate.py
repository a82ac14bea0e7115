"""The calibration KL scorer against a direct computation on in-memory members."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from boomerang_cli.arch import ModelInfo
from boomerang_cli.orders.calibration import CalibrationSpec
from boomerang_cli.orders.kl import KLScorer, token_kl
from boomerang_cli.models import load_member
from boomerang_cli.member import Member
from boomerang_cli.orders.search import kl_greedy
from boomerang_cli.plan import Plan
from tests.common import tiny_model_dir

PLAN = Plan.from_keep(6, [0, 2, 4, 5])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calib")
    models = {
        "teacher": ModelInfo.load(tiny_model_dir(tmp, "llama", layers=6, seed=0)),
        "student": ModelInfo.load(tiny_model_dir(tmp / "s", "llama", layers=4, seed=1)),
    }
    scorer = KLScorer(models, CalibrationSpec(("stdlib",), samples=4, seq_len=16), batch_size=2)
    return models, scorer


def direct_kl(models, scorer: KLScorer, member: Member) -> float:
    model = load_member(member, models)
    teacher = load_member(Member(PLAN, frozenset(range(PLAN.num_student_layers))), models)
    total, count = 0.0, 0
    for ids, labels, mask in scorer.data.batches(scorer.batch_size):
        with torch.no_grad():
            t = F.log_softmax(teacher(input_ids=ids).logits.float(), -1)
            s = F.log_softmax(model(input_ids=ids).logits.float(), -1)
        keep = (mask & (labels != -100)).reshape(-1)
        kl = (t.exp() * (t - s)).sum(-1).reshape(-1)[keep]
        total += float(kl.sum())
        count += int(keep.sum())
    return total / count


def test_token_kl_is_zero_for_equal_and_positive_otherwise():
    logits = torch.randn(2, 3, 11)
    mask = torch.ones(2, 3, dtype=torch.bool)
    zero, n = token_kl(F.log_softmax(logits, -1), logits, mask)
    assert n == 6 and abs(zero) < 1e-6
    pos, _ = token_kl(F.log_softmax(logits, -1), logits.flip(-1), mask)
    assert pos > 0
    half, n_half = token_kl(F.log_softmax(logits, -1), logits.flip(-1), mask & torch.tensor([True, False])[:, None])
    assert n_half == 3 and 0 < half < pos


def test_scorer_matches_direct_kl(setup):
    models, scorer = setup
    members = [Member(PLAN, frozenset(s)) for s in ([], [0], [1, 2], [3], [0, 1, 2, 3])]
    got = scorer(members)
    for m, kl in zip(members, got):
        assert kl == pytest.approx(direct_kl(models, scorer, m), rel=1e-4, abs=1e-6)
    assert got[-1] == pytest.approx(0.0, abs=1e-6)  # the teacher itself


def test_greedy_with_real_scorer_picks_the_brute_force_minimum(setup):
    models, scorer = setup
    res = kl_greedy(PLAN, scorer)
    current: frozenset[int] = frozenset()
    for step in res.steps:
        cands = [Member(PLAN, current | {b}) for b in range(PLAN.num_student_layers) if b not in current]
        direct = {c.teacher_blocks: direct_kl(models, scorer, c) for c in cands}
        best = min(direct.values())
        assert direct[frozenset(step["teacher_blocks"])] == pytest.approx(best, rel=1e-4, abs=1e-7)
        current = frozenset(step["teacher_blocks"])


def test_calibration_blocks_start_with_bos_when_the_tokenizer_adds_one(tmp_path):
    from boomerang_cli.orders.kl import search
    from tests.common import BOS_ID, save_tokenizer

    teacher = tiny_model_dir(tmp_path, "llama", layers=6, seed=0)
    save_tokenizer(teacher, add_bos=True)
    models = {
        "teacher": ModelInfo.load(teacher),
        "student": ModelInfo.load(tiny_model_dir(tmp_path / "s", "llama", layers=4, seed=1)),
    }
    spec = CalibrationSpec(("stdlib",), samples=2, seq_len=16)
    scorer = KLScorer(models, spec, batch_size=2)
    assert scorer.data.bos and bool((scorer.data.input_ids[:, 0] == BOS_ID).all())
    assert not KLScorer(models, CalibrationSpec(("stdlib",), samples=2, seq_len=16, bos="never")).data.bos
    result = search(models, PLAN, "kl-greedy", spec)
    assert result.calibration["bos"] is True and result.calibration["bos_policy"] == "auto"
    # A calibration recorded before the policy existed had no BOS at its blocks.
    old = {k: v for k, v in result.calibration.items() if k != "bos_policy"}
    assert CalibrationSpec(("stdlib",), samples=2, seq_len=16, bos="never").same_as(old)
    assert not spec.same_as(old) and spec.same_as(result.calibration)
