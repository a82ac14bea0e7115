"""The plan: SPEC section 2 test vectors, explicit plans, blocks and alignment."""

from __future__ import annotations

import json

import pytest

from boomerang_cli.errors import PlanError
from boomerang_cli.plan import Block, Plan

# SPEC section 2, verbatim: (L, f, n, l) -> kept, number of patchable blocks.
SPEC_VECTORS = [
    ((36, 1, 2, 2), list(range(0, 35, 2)) + [35], 17),  # Qwen3-4B/8B: 0,2,...,32,34,35
    ((32, 1, 2, 2), list(range(0, 31, 2)) + [31], 15),  # Pythia-2.8B/6.9B: 0,2,...,28,30,31
    ((28, 2, 2, 1), [0] + list(range(1, 28, 2)), 13),  # Llama-3.2-3B: 0,1,3,5,...,25,27
    ((30, 1, 2, 2), list(range(0, 29, 2)) + [29], 14),  # SmolLM2-135M: 0,2,...,26,28,29
]


@pytest.mark.parametrize(("flags", "kept", "patchable"), SPEC_VECTORS, ids=lambda v: str(v))
def test_spec_vectors(flags, kept, patchable):
    plan = Plan.from_paper_flags(*flags)
    assert list(plan.kept) == kept
    assert plan.num_student_layers == len(kept)
    assert len(plan.patchable_blocks) == patchable
    assert plan.num_teacher_layers == flags[0]


def test_spec_vector_lengths_as_written():
    # The table's layer counts, stated independently of the lists above.
    assert [Plan.from_paper_flags(*v[0]).num_student_layers for v in SPEC_VECTORS] == [19, 17, 15, 16]


def test_spec_vector_endpoints_as_written():
    assert Plan.from_paper_flags(36, 1, 2, 2).kept[-3:] == (32, 34, 35)
    assert Plan.from_paper_flags(32, 1, 2, 2).kept[-3:] == (28, 30, 31)
    assert Plan.from_paper_flags(28, 2, 2, 1).kept[:4] == (0, 1, 3, 5)
    assert Plan.from_paper_flags(28, 2, 2, 1).kept[-2:] == (25, 27)
    assert Plan.from_paper_flags(30, 1, 2, 2).kept[-3:] == (26, 28, 29)


def test_defaults_are_1_2_2():
    assert Plan.from_paper_flags(30) == Plan.from_paper_flags(30, 1, 2, 2)


def test_every_third_layer():
    # n=3: align = [3, 6, ...] (f=1), cut a-1 and a-2 -> keep 0,3,6,... up to L-l.
    plan = Plan.from_paper_flags(12, 1, 3, 2)
    assert plan.kept == (0, 3, 6, 9, 10, 11)
    assert [b.size for b in plan.blocks] == [3, 3, 3, 1, 1, 1]


def test_explicit_keep_distilgpt2():
    # SPEC: DistilGPT2 was built from GPT-2 layers 0,2,4,7,9,11.
    plan = Plan.from_keep(12, [0, 2, 4, 7, 9, 11])
    assert plan.kept == (0, 2, 4, 7, 9, 11)
    assert plan.pruned == (1, 3, 5, 6, 8, 10)
    assert [(b.start, b.end) for b in plan.blocks] == [(0, 2), (2, 4), (4, 7), (7, 9), (9, 11), (11, 12)]
    assert [b.patchable for b in plan.blocks] == [True, True, True, True, True, False]


@pytest.mark.parametrize(
    ("L", "kept", "words"),
    [
        (6, [1, 2, 4], "start at 0"),
        (6, [0, 3, 2], "sorted"),
        (6, [0, 2, 2, 4], "kept twice"),
        (6, [0, 2, 6], "out of range"),
        (6, [0, 1, 2, 3, 4, 5], "every teacher layer"),
        (6, [], "no layers"),
        (1, [0], "at least 2"),
        (6, [0, -1], "sorted"),
    ],
)
def test_invalid_plans(L, kept, words):
    with pytest.raises(PlanError) as err:
        Plan.from_keep(L, kept)
    msg = str(err.value)
    assert words in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ((6, 0, 2, 2), "--keep-first"),
        ((6, 1, 1, 2), "--every"),
        ((6, 1, 2, -1), "--keep-last"),
        ((6, 5, 2, 2), "prunes nothing"),
        ((4, 1, 2, 4), "prunes nothing"),
    ],
)
def test_invalid_paper_flags(flags, words):
    with pytest.raises(PlanError, match=words):
        Plan.from_paper_flags(*flags)


def test_parse_keep():
    assert Plan.parse_keep("0,2,4,7") == [0, 2, 4, 7]
    assert Plan.parse_keep(" 0, 2 ,4 ") == [0, 2, 4]
    assert Plan.parse_keep("0-3,5,8-9") == [0, 1, 2, 3, 5, 8, 9]
    assert Plan.parse_keep("0,2,") == [0, 2]
    for bad in ("a", "0,x", "1.5", "0-b"):
        with pytest.raises(PlanError, match="not a layer index"):
            Plan.parse_keep(bad)


def test_blocks_cover_the_teacher_exactly():
    for flags, _, _ in SPEC_VECTORS:
        plan = Plan.from_paper_flags(*flags)
        layers = [j for b in plan.blocks for j in b.teacher_layers]
        assert layers == list(range(plan.num_teacher_layers))
        assert [b.start for b in plan.blocks] == list(plan.kept)
        assert [b.index for b in plan.blocks] == list(range(plan.num_student_layers))


def test_block_properties():
    b = Block(3, 4, 7)
    assert b.size == 3 and b.patchable and list(b.teacher_layers) == [4, 5, 6]
    assert not Block(0, 5, 6).patchable


def test_aligned_teacher_hidden():
    # SPEC section 3: student hidden 0 <-> teacher 0, student i+1 <-> end(block i); S+1 pairs.
    plan = Plan.from_keep(12, [0, 2, 4, 7, 9, 11])
    assert plan.aligned_teacher_hidden() == [0, 2, 4, 7, 9, 11, 12]
    smol = Plan.from_paper_flags(30)
    aligned = smol.aligned_teacher_hidden()
    assert len(aligned) == smol.num_student_layers + 1
    assert aligned[0] == 0 and aligned[-1] == 30
    assert aligned[1:] == [b.end for b in smol.blocks]


def test_json_round_trip():
    plan = Plan.from_paper_flags(28, 2, 2, 1)
    data = json.loads(json.dumps(plan.to_json()))
    assert Plan.from_json(data) == plan
    assert data["blocks"][0] == [0, 1] and data["blocks"][1] == [1, 3]


def test_reference_student_config_round_trip(tmp_path):
    plan = Plan.from_keep(12, [0, 2, 4, 7, 9, 11])
    ref = plan.reference_student_config()
    assert ref["copied_teacher_layers"] == [0, 2, 4, 7, 9, 11]
    assert ref["pruned_teacher_layers"] == [1, 3, 5, 6, 8, 10]
    path = tmp_path / "student_config.json"
    path.write_text(json.dumps(ref))
    assert Plan.from_reference_student_config(path, 12) == plan


def test_reference_student_config_without_layer_count(tmp_path):
    # The reference code's file need not say how many layers the teacher has.
    path = tmp_path / "student_config.json"
    path.write_text(json.dumps({"copied_teacher_layers": [0, 2, 4, 5]}))
    assert Plan.from_reference_student_config(path, 6) == Plan.from_keep(6, [0, 2, 4, 5])


def test_reference_student_config_unreadable(tmp_path):
    path = tmp_path / "student_config.json"
    path.write_text("{}")
    with pytest.raises(PlanError, match="copied_teacher_layers"):
        Plan.from_reference_student_config(path, 6)
    with pytest.raises(PlanError):
        Plan.from_reference_student_config(tmp_path / "missing.json", 6)


def test_from_flags_prefers_keep_and_refuses_an_empty_one():
    assert Plan.from_flags(12, "0,3,5") == Plan.from_keep(12, [0, 3, 5])
    assert Plan.from_flags(12) == Plan.from_paper_flags(12)
    assert Plan.from_flags(12, None, 2, 3, 1) == Plan.from_paper_flags(12, 2, 3, 1)
    with pytest.raises(PlanError):
        Plan.from_flags(12, "")
