"""Judging a family at equal saved size against ShortGPT (boomerang_cli.evaluate.score)."""

from __future__ import annotations

import math

import pytest

from boomerang_cli.evaluate.score import at_size, baseline_curve, score_family


def _row(name, kind, layers, params, ppl, method=None):
    return {"name": name, "kind": kind, "num_layers": layers, "num_params": params, "ppl": ppl, "method": method}


ROWS = [
    _row("student", "student", 4, 400, 40.0),
    _row("member-05L", "member", 5, 500, 18.0),
    _row("teacher", "teacher", 6, 600, 10.0),
    _row("shortgpt-4L", "baseline", 4, 400, 80.0, "shortgpt"),
    _row("shortgpt-5L", "baseline", 5, 500, 20.0, "shortgpt"),
    _row("plan-prune-5L", "baseline", 5, 500, 5.0, "plan-prune"),
]


def test_equal_size_is_exact_where_a_pruned_teacher_has_the_members_count():
    sc = score_family(ROWS)
    assert [(v.name, v.baseline_ppl, v.exact, v.wins) for v in sc.per_size] == [
        ("student", 80.0, True, True),
        ("member-05L", 20.0, True, True),
    ]
    assert sc.wins == sc.sizes == 2 and sc.increases == 0 and sc.within_range
    assert sc.geomean_ratio == pytest.approx(math.sqrt(0.5 * 0.9))
    other = score_family(ROWS, "plan-prune")  # only one plan-prune size: the student is held to it
    assert other.wins == 0


def test_untied_member_larger_than_its_depth_is_held_to_a_deeper_pruned_teacher():
    rows = ROWS + [_row("member-05L-untied", "member", 5, 550, 15.0)]
    curve = baseline_curve(rows)
    assert curve == [(400, 80.0), (500, 20.0), (600, 10.0)]  # the teacher ends ShortGPT's curve
    assert at_size(curve, 550) == pytest.approx(math.sqrt(20.0 * 10.0))  # log-interpolated: 14.1
    sc = score_family(rows)
    v = next(v for v in sc.per_size if v.name == "member-05L-untied")
    assert not v.exact and not v.wins  # 15.0 > 14.14: it loses at its real size, not at its depth
    assert at_size(curve, 700) == 10.0 and at_size(curve, 400) == 80.0


def test_members_outside_the_ends_and_increases_are_reported():
    rows = ROWS + [_row("member-06L", "member", 6, 650, 25.0)]
    sc = score_family(rows)
    assert not sc.within_range and sc.outside == ["member-06L (650)"]
    assert sc.increases == 1 and "member-05L 18 -> member-06L 25" in sc.increase_detail[0]
