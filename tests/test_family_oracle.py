"""Oracle: every member ``family`` saves equals the same member built by module surgery.

The expected side is written here, independently of compose/member/loader: load
teacher and student with transformers, deep-copy the student, replace its layer
list by student layers and deep copies of teacher blocks, take embeddings from
the model of block 0 and final norm + head from the model of the last block (as
the paper's reference code does), and fix the per-layer config by hand.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from boomerang_cli.family import achievable, build_family, open_pair, select
from boomerang_cli.family.open import load_member_from_manifest
from boomerang_cli.member import Member
from boomerang_cli.orders.search import SearchResult, order_info
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.student import init_student

from .common import ARCHS, TIED_ARCHS, load, logits, make_model, perturb_saved, sample_ids, save_model

LAYERS = 8
PLAN = Plan.from_paper_flags(LAYERS)  # kept 0,2,4,6,7: 3 patchable blocks
EMBED_ATTRS = ("embed_tokens", "embed_in", "wte", "wpe")
NORM_ATTRS = ("norm", "final_layer_norm", "ln_f")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """One teacher/student pair per architecture, shared by both orders."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(model_type: str) -> tuple[Path, Path]:
        if model_type not in cache:
            cache[model_type] = make_pair(tmp_path_factory.mktemp(model_type), model_type)
        return cache[model_type]

    return get


def make_pair(tmp: Path, model_type: str, **overrides) -> tuple[Path, Path]:
    teacher = save_model(make_model(model_type, LAYERS, seed=0, **overrides), tmp / f"{model_type}-teacher")
    student = tmp / f"{model_type}-student"
    init_student(resolve(str(teacher)), PLAN, student)
    perturb_saved(student, seed=7)
    return teacher, student


# -- the independent surgery -------------------------------------------------------------


def _layer_list_name(base) -> str:
    return "layers" if hasattr(base, "layers") else "h"


def surgery(teacher, student, kept, num_teacher_layers, teacher_blocks) -> torch.nn.Module:
    blocks = list(zip(kept, list(kept[1:]) + [num_teacher_layers]))
    model = copy.deepcopy(student)
    base, tbase, sbase = model.base_model, teacher.base_model, student.base_model
    name = _layer_list_name(base)
    t_types = getattr(teacher.config, "layer_types", None)
    s_types = getattr(student.config, "layer_types", None)
    layers, types = [], []
    for b, (start, end) in enumerate(blocks):
        if b in teacher_blocks:
            for j in range(start, end):
                layers.append(copy.deepcopy(getattr(tbase, name)[j]))
                types.append(t_types[j] if t_types else None)
        else:
            layers.append(copy.deepcopy(getattr(sbase, name)[b]))
            types.append(s_types[b] if s_types else None)
    for i, layer in enumerate(layers):  # the reference code renumbers copied layers (KV cache slots)
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = i
    setattr(base, name, torch.nn.ModuleList(layers))
    emb_src = tbase if 0 in teacher_blocks else sbase
    for attr in EMBED_ATTRS:
        if hasattr(base, attr):
            setattr(base, attr, copy.deepcopy(getattr(emb_src, attr)))
    head_model = teacher if len(blocks) - 1 in teacher_blocks else student
    for attr in NORM_ATTRS:
        if hasattr(base, attr):
            setattr(base, attr, copy.deepcopy(getattr(head_model.base_model, attr)))
    model.set_output_embeddings(copy.deepcopy(head_model.get_output_embeddings()))
    model.config.num_hidden_layers = len(layers)
    if t_types:
        model.config.layer_types = types
        if hasattr(base, "has_sliding_layers"):
            base.has_sliding_layers = "sliding_attention" in types
    return model.eval()


def expected_layer_types(teacher_cfg: dict, student_cfg: dict, teacher_blocks) -> list[str] | None:
    if "layer_types" not in teacher_cfg:
        return None
    out = []
    for b, (start, end) in enumerate(zip(PLAN.kept, list(PLAN.kept[1:]) + [LAYERS])):
        out += teacher_cfg["layer_types"][start:end] if b in teacher_blocks else [student_cfg["layer_types"][b]]
    return out


# -- the checks ---------------------------------------------------------------------------


def check_family(
    tmp: Path, teacher_dir: Path, student_dir: Path, order: str, search: SearchResult | None = None
) -> int:
    pair = open_pair(resolve(str(teacher_dir)), resolve(str(student_dir)))
    every = achievable(pair, order, search)
    picks = select(
        every[1:-1], all_members=True, student_params=every[0].num_params, teacher_params=every[-1].num_params
    )
    out = tmp / f"family-{order}"
    result = build_family(pair, picks, out, order=order_info(search) if search else order)
    assert result.written == [p.name for p in picks] and len(picks) >= 2
    teacher, student = load(teacher_dir), load(student_dir)
    t_cfg = json.loads((teacher_dir / "config.json").read_text())
    s_cfg = json.loads((student_dir / "config.json").read_text())
    ids = sample_ids()
    for entry in result.manifest.members:
        blocks = set(entry.teacher_blocks)
        expected = logits(surgery(teacher, student, PLAN.kept, LAYERS, blocks), ids)
        saved = load(out / entry.path)
        assert saved.config.num_hidden_layers == entry.num_layers
        torch.testing.assert_close(logits(saved, ids), expected, rtol=1e-4, atol=1e-5)
        in_memory = load_member_from_manifest(result.manifest_path, entry.name)
        torch.testing.assert_close(logits(in_memory, ids), expected, rtol=1e-4, atol=1e-5)
        cfg = json.loads((out / entry.path / "config.json").read_text())
        types = expected_layer_types(t_cfg, s_cfg, blocks)
        if types is not None:
            assert cfg["layer_types"] == types
        # Tied exactly when embeddings and head are one stored tensor of one model.
        mixed = entry.embed_from != entry.head_from
        if t_cfg.get("tie_word_embeddings"):
            assert cfg["tie_word_embeddings"] is (not mixed) and entry.tied is (not mixed)
            head = saved.get_output_embeddings().weight
            assert (head.data_ptr() == saved.get_input_embeddings().weight.data_ptr()) is (not mixed)
        # The member's embeddings really are the supplying model's (not re-tied to the other one).
        src = teacher if entry.embed_from == "teacher" else student
        torch.testing.assert_close(saved.get_input_embeddings().weight, src.get_input_embeddings().weight)
        src = teacher if entry.head_from == "teacher" else student
        torch.testing.assert_close(saved.get_output_embeddings().weight, src.get_output_embeddings().weight)
    return len(result.manifest.members)


@pytest.mark.parametrize("order", ["last-first", "first-last"])
@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_members_match_module_surgery(tmp_path, pairs, model_type, order):
    teacher, student = pairs(model_type)
    # last-first: 2 members (block 0 patched means all blocks are: the teacher);
    # first-last: 3 (the trailing singletons stay the student's, so 8 layers is not yet the teacher).
    assert check_family(tmp_path, teacher, student, order) == (2 if order == "last-first" else 3)


#: Arbitrary subsets, as a calibrated search may choose them: a singleton block alone (as
#: deep as the student), a middle block alone (student embeddings and head), two
#: non-adjacent blocks plus a singleton. 5, 6 and 7 layers.
SUBSETS = ({3}, {1}, {0, 2, 3})


def subset_search() -> SearchResult:
    members = [Member(PLAN, frozenset(s)) for s in (*SUBSETS, set(range(PLAN.num_student_layers)))]
    best = {m.num_layers: (m, 1.0 / (1 + m.num_layers)) for m in members}
    assert len(best) == len(members)
    return SearchResult("beam", 2, best, [], len(members), {"data": ["synthetic"], "key": "synthetic:train"})


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_arbitrary_subset_members_match_module_surgery(tmp_path, pairs, model_type):
    teacher, student = pairs(model_type)
    assert check_family(tmp_path, teacher, student, "beam", subset_search()) == len(SUBSETS)
    manifest = json.loads((tmp_path / "family-beam" / "family.json").read_text())
    assert [m["teacher_blocks"] for m in manifest["members"]] == [sorted(s) for s in SUBSETS]
    assert manifest["order"]["method"] == "beam" and manifest["order"]["beam"] == 2
    assert [s["teacher_blocks"] for s in manifest["order"]["steps"]][:-1] == [sorted(s) for s in SUBSETS]


def test_arbitrary_subsets_with_a_tied_teacher(tmp_path, pairs):
    """{3} and {1} keep the student's embeddings and head: saved tied; {0, 2, 3} mixes sources: untied."""
    teacher, student = pairs("gpt2")
    check_family(tmp_path, teacher, student, "beam", subset_search())
    manifest = json.loads((tmp_path / "family-beam" / "family.json").read_text())
    assert [m["tied"] for m in manifest["members"]] == [True, True, False]


@pytest.mark.parametrize("order", ["last-first", "first-last"])
def test_tied_teacher_members_are_untied_when_sources_differ(tmp_path, pairs, order):
    teacher, student = pairs("gpt2")
    assert "gpt2" in TIED_ARCHS
    s = load(student)
    t = load(teacher)
    assert not torch.equal(s.get_input_embeddings().weight, t.get_input_embeddings().weight)
    check_family(tmp_path, teacher, student, order)
    manifest = json.loads((tmp_path / f"family-{order}" / "family.json").read_text())
    for m in manifest["members"]:
        assert m["tied"] is False  # every member of a sequential order mixes embed/head sources
        from safetensors import safe_open

        with safe_open(str(tmp_path / f"family-{order}" / m["path"] / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        assert "lm_head.weight" in names and any(n.endswith("wte.weight") for n in names)


@pytest.mark.parametrize("order", ["last-first", "first-last"])
def test_mixed_layer_types_follow_each_layers_source(tmp_path, order):
    """Irregular sliding/full layers; the student's own layer_types differ from its teacher layers'."""
    types = [
        "sliding_attention",
        "full_attention",
        "full_attention",
        "sliding_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
        "full_attention",
    ]
    teacher = save_model(
        make_model("qwen3", LAYERS, seed=0, use_sliding_window=True, sliding_window=3, layer_types=types),
        tmp_path / "qwen3-teacher",
    )
    student = tmp_path / "qwen3-student"
    init_student(resolve(str(teacher)), PLAN, student)
    inherited = [types[k] for k in PLAN.kept]
    flipped = ["full_attention" if t == "sliding_attention" else "sliding_attention" for t in inherited]
    perturb_saved(student, seed=3, layer_types=flipped)
    assert json.loads((student / "config.json").read_text())["layer_types"] == flipped
    check_family(tmp_path, teacher, student, order)
    # sliding_window=3 < sequence length: a wrong layer type would change the logits.
    assert sample_ids().shape[1] > 3
