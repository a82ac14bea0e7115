"""The calibrated-order searches against brute force, with a synthetic KL."""

from __future__ import annotations

import itertools
import random

import pytest

from boomerang_cli.errors import BoomerangError
from boomerang_cli.member import Member
from boomerang_cli.orders.cost import dp_cost, greedy_cost
from boomerang_cli.orders.names import FIXED_ORDERS, sequential_members
from boomerang_cli.orders.search import auto_search, beam_search, dp_search, dp_subsets, kl_greedy, run_search
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
        return sum(single[b] for b in missing) + sum(pair[(i, j)] for i, j in itertools.combinations(missing, 2)) + 5.0

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
    by_size = exhaustive(PLAN, kl)
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


# -- kl-dp and auto: one probe per block and end, then a DP over additive costs --------------

MIXED = Plan.from_keep(12, [0, 1, 3, 6, 8, 11])  # blocks of 1, 2, 3, 2, 3 and 1 layers


def additive_scorer(plan: Plan, seed: int = 0):
    """A KL that is exactly a sum of per-block costs (some negative: a singleton that helps)."""
    rng = random.Random(seed)
    n = plan.num_student_layers
    cost = [rng.uniform(-0.2, 1.0) for _ in range(n)]
    calls: list[Member] = []

    def kl(m: Member) -> float:
        return 3.0 + sum(cost[b] for b in range(n) if b not in m.teacher_blocks)

    def scorer(members):
        calls.extend(members)
        return [kl(m) for m in members]

    return scorer, kl, calls


def exhaustive(plan: Plan, kl) -> dict[int, float]:
    n = plan.num_student_layers
    best: dict[int, float] = {}
    for r in range(n + 1):
        for subset in itertools.combinations(range(n), r):
            m = Member(plan, frozenset(subset))
            best[m.num_layers] = min(best.get(m.num_layers, float("inf")), kl(m))
    return best


@pytest.mark.parametrize("plan", [PLAN, MIXED], ids=["pairs", "mixed-blocks"])
@pytest.mark.parametrize("seed", range(4))
def test_dp_subsets_are_exhaustive_for_additive_costs(plan, seed):
    n = plan.num_student_layers
    cost = [random.Random(seed).uniform(-0.5, 1.0) for _ in range(n)]
    got = dp_subsets(plan, cost)
    for size in {
        Member(plan, frozenset(s)).num_layers for r in range(n + 1) for s in itertools.combinations(range(n), r)
    }:
        brute = min(
            sum(cost[b] for b in range(n) if b not in s)
            for r in range(n + 1)
            for s in itertools.combinations(range(n), r)
            if Member(plan, frozenset(s)).num_layers == size
        )
        from_student = got[size]
        assert Member(plan, frozenset(range(n)) - from_student).num_layers == size
        assert sum(cost[b] for b in from_student) == pytest.approx(brute)


@pytest.mark.parametrize("plan", [PLAN, MIXED], ids=["pairs", "mixed-blocks"])
def test_kl_dp_is_exact_on_additive_kl_and_scores_few_members(plan):
    scorer, kl, calls = additive_scorer(plan, seed=7)
    res = dp_search(plan, scorer)
    best = exhaustive(plan, kl)
    n = plan.num_student_layers
    for size, value in best.items():
        assert res.best[size][1] == pytest.approx(value)
    # A singleton that helps may stand in for its teacher layer at either end's depth.
    assert res.members()[0].num_layers == plan.num_student_layers
    assert res.members()[-1].num_layers == plan.num_teacher_layers
    assert len(calls) == res.evaluated <= dp_cost(n)
    assert dp_cost(16) == 68 < greedy_cost(16) == 137  # SmolLM2's 16 blocks: linear, not quadratic
    assert len(set(m.teacher_blocks for m in calls)) == len(calls)  # nothing scored twice


def test_kl_dp_with_interactions_never_worse_than_its_probes_and_auto_beats_fixed_orders():
    for seed in range(5):
        scorer, kl, _ = synthetic_scorer(PLAN, seed)
        auto = auto_search(PLAN, scorer)
        for order in FIXED_ORDERS:
            for m in sequential_members(PLAN, order):
                if not (m.is_student or m.is_teacher):
                    assert auto.best[m.num_layers][1] <= kl(m) + 1e-12
        dp = dp_search(PLAN, synthetic_scorer(PLAN, seed)[0])
        for size, (_, v) in dp.best.items():
            assert auto.best[size][1] <= v + 1e-12
        sources = {c["from"] for s in auto.steps if "candidates" in s for c in s["candidates"]}
        assert sources == {"dp-teacher-side", "dp-student-side", *FIXED_ORDERS}


def test_run_search_dispatches_and_refuses_unknown():
    scorer, _, _ = additive_scorer(PLAN)
    assert run_search("kl-dp", PLAN, scorer).method == "kl-dp"
    assert run_search("auto", PLAN, scorer).method == "auto"
    assert run_search("beam", PLAN, scorer, 2).beam == 2
    with pytest.raises(BoomerangError, match="not a calibrated order"):
        run_search("first-last", PLAN, scorer)
