"""The calibrated-order searches against brute force, with a synthetic KL."""

from __future__ import annotations

import itertools
import random

import pytest

from boomerang_cli.errors import BoomerangError
from boomerang_cli.member import Member
from boomerang_cli.orders import beam_search, greedy_cost, kl_greedy
from boomerang_cli.plan import Plan


def synthetic_scorer(plan: Plan, seed: int = 0):
    """A KL with interactions between blocks, so greedy and exhaustive can differ."""
    rng = random.Random(seed)
    n = plan.num_student_layers
    single = [rng.uniform(0.1, 1.0) for _ in range(n)]
    pair = {(i, j): rng.uniform(-0.3, 0.3) for i in range(n) for j in range(i + 1, n)}
    calls: list[Member] = []

    def kl(m: Member) -> float:
        missing = [b for b in range(n) if b not in m.teacher_blocks]
        return sum(single[b] for b in missing) + sum(
            pair[(i, j)] for i, j in itertools.combinations(missing, 2)
        ) + 5.0

    def scorer(members):
        calls.extend(members)
        return [kl(m) for m in members]

    return scorer, kl, calls


PLAN = Plan.from_keep(12, [0, 2, 4, 6, 8, 10, 11])  # 7 blocks, 5 patchable


def test_greedy_picks_lowest_kl_candidate_at_every_step():
    scorer, kl, _ = synthetic_scorer(PLAN)
    res = kl_greedy(PLAN, scorer)
    current: frozenset[int] = frozenset()
    for step in res.steps:
        cands = [Member(PLAN, current | {b}) for b in range(PLAN.num_student_layers) if b not in current]
        brute = min(cands, key=lambda m: (kl(m), sorted(m.teacher_blocks)))
        assert step["teacher_blocks"] == sorted(brute.teacher_blocks)
        assert step["kl"] == pytest.approx(kl(brute))
        current = brute.teacher_blocks
    assert current == frozenset(range(PLAN.num_student_layers))  # ends at the teacher
    chain = res.members()
    for a, b in zip(chain, chain[1:]):  # nested
        assert a.teacher_blocks < b.teacher_blocks
    assert res.members()[0].is_student and res.members()[-1].is_teacher


def test_wide_beam_is_exhaustive():
    scorer, kl, _ = synthetic_scorer(PLAN, seed=3)
    res = beam_search(PLAN, scorer, width=64)
    n = PLAN.num_student_layers
    by_size: dict[int, float] = {}
    for r in range(n + 1):
        for subset in itertools.combinations(range(n), r):
            m = Member(PLAN, frozenset(subset))
            by_size[m.num_layers] = min(by_size.get(m.num_layers, float("inf")), kl(m))
    assert set(res.best) == set(by_size)
    for size, best in by_size.items():
        assert res.best[size][1] == pytest.approx(best)
        assert kl(res.best[size][0]) == pytest.approx(best)


def test_beam_one_equals_greedy_and_memoizes():
    scorer, _, calls = synthetic_scorer(PLAN, seed=5)
    g = kl_greedy(PLAN, scorer)
    n_greedy = len(calls)
    assert n_greedy == g.evaluated == greedy_cost(PLAN.num_student_layers)
    b = beam_search(PLAN, synthetic_scorer(PLAN, seed=5)[0], width=1)
    assert [m.teacher_blocks for m in g.members()] == [m.teacher_blocks for m in b.members()]
    assert len(set(m.teacher_blocks for m in calls)) == len(calls)  # nothing scored twice


def test_wider_beam_never_worse_than_greedy():
    for seed in range(5):
        g = kl_greedy(PLAN, synthetic_scorer(PLAN, seed)[0])
        w = beam_search(PLAN, synthetic_scorer(PLAN, seed)[0], width=4)
        for size, (_, kl) in g.best.items():
            assert w.best[size][1] <= kl + 1e-12


def test_beam_width_must_be_positive():
    with pytest.raises(BoomerangError):
        beam_search(PLAN, synthetic_scorer(PLAN)[0], width=0)
