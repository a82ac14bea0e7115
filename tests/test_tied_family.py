"""Tied members (SPEC section 6): a student distilled with frozen embeddings gives a family whose
members are saved tied, between student and teacher in size; tying is decided by content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from boomerang_cli.arch import ModelInfo
from boomerang_cli.compose import write_model_dir
from boomerang_cli.distill import DistillConfig, distill
from boomerang_cli.family import achievable, build_family, open_pair, select
from boomerang_cli.member import Member
from boomerang_cli.refs import resolve
from boomerang_cli.tensors import same_values

from .common import load, logits, sample_ids, tiny_model_dir


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(200):
            f.write(
                json.dumps({"text": f"The quick brown fox {i % 5} jumps. def add(a, b):\n    return a + b\n"}) + "\n"
            )
    return path


def _distill(teacher: Path, corpus: Path, out: Path, freeze: bool | None) -> Path:
    distill(
        DistillConfig(
            teacher=str(teacher),
            output=out,
            data=[str(corpus)],
            seq_len=32,
            batch_size=2,
            steps=3,
            lr=1e-2,
            save_every=0,
            freeze_embeddings=freeze,
        )
    )
    return out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def _family(teacher: Path, student: Path, out: Path, order: str):
    pair = open_pair(resolve(str(teacher)), resolve(str(student)))
    every = achievable(pair, order)
    middle = [c for c in every if not (c.member.is_student or c.member.is_teacher)]
    picks = select(middle, all_members=True, student_params=every[0].num_params, teacher_params=every[-1].num_params)
    return pair, every, build_family(pair, picks, out, order=order)


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2"])
def test_frozen_student_of_a_tied_teacher_gives_tied_members_between_the_ends(arch, corpus, tmp_path):
    teacher = tiny_model_dir(tmp_path, arch, layers=6)
    student = _distill(teacher, corpus, tmp_path / "student", freeze=True)
    record = json.loads((student / "boomerang.json").read_text())
    assert record["training"]["frozen_embeddings"] is True
    t_info, s_info = ModelInfo.load(teacher), ModelInfo.load(student)
    embed = t_info.arch.embed
    assert same_values(t_info.weights.info(t_info.tensor(embed)), s_info.weights.info(s_info.tensor(embed)))
    # ... while the layers did train.
    assert not torch.equal(
        _tensors(student)[s_info.tensor(s_info.arch.layer_tensor(1, s_info.arch.layer_keys[0]))],
        _tensors(teacher)[t_info.tensor(t_info.arch.layer_tensor(2, t_info.arch.layer_keys[0]))],
    )

    for order in ("first-last", "last-first"):
        pair, every, res = _family(teacher, student, tmp_path / f"fam-{order}", order)
        s_params, t_params = every[0].num_params, every[-1].num_params
        assert s_params < t_params
        assert res.manifest.members
        for entry in res.manifest.members:
            assert entry.tied, entry.name
            assert s_params <= entry.num_params <= t_params
            path = res.manifest_path.parent / entry.path
            assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is True
            model = load(path)
            assert model.num_parameters() == entry.num_params  # sizes mean saved sizes
            assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
            # One embedding matrix on disk: the head is not stored beside it.
            assert len(_tensors(path)) == len(_tensors(teacher)) - (6 - entry.num_layers) * len(t_info.arch.layer_keys)
        # Sizes grow with depth along the family, and the plot's x-axis agrees with the manifest.
        sizes = [e.num_params for e in sorted(res.manifest.members, key=lambda e: e.num_layers)]
        assert sizes == sorted(sizes)

    # The all-teacher member is the teacher, byte for byte, logits included.
    top = Member(pair.plan, frozenset(range(pair.plan.num_student_layers)))
    comp = top.composition(pair.models)
    assert comp.tied
    out = tmp_path / "all-teacher"
    out.mkdir()
    write_model_dir(out, comp, teacher, "card")
    mine, theirs = _tensors(out), _tensors(teacher)
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k].view(torch.uint8), theirs[k].view(torch.uint8)) for k in mine)
    ids = sample_ids()
    assert torch.equal(logits(load(out), ids), logits(load(teacher), ids))


def test_trained_embeddings_of_a_tied_teacher_still_untie_mixed_members(corpus, tmp_path):
    """--train-embeddings: the old behaviour, members that mix sources carry both matrices."""
    teacher = tiny_model_dir(tmp_path, "gemma3_text", layers=6)
    student = _distill(teacher, corpus, tmp_path / "student", freeze=False)
    assert json.loads((student / "boomerang.json").read_text())["training"]["frozen_embeddings"] is False
    pair, every, res = _family(teacher, student, tmp_path / "fam", "first-last")
    t_params = every[-1].num_params
    untied = [e for e in res.manifest.members if not e.tied]
    assert untied and all(e.embed_from != e.head_from for e in untied)
    assert max(e.num_params for e in res.manifest.members) > t_params  # the trap the default avoids
    for e in untied:
        assert load(res.manifest_path.parent / e.path).num_parameters() == e.num_params


def test_untied_teacher_family_is_unchanged_by_freezing(corpus, tmp_path):
    """An untied teacher: frozen or not, members save both matrices and never exceed the teacher."""
    teacher = tiny_model_dir(tmp_path, "llama", layers=6)
    default = _distill(teacher, corpus, tmp_path / "default", freeze=None)
    assert json.loads((default / "boomerang.json").read_text())["training"]["frozen_embeddings"] is False
    frozen = _distill(teacher, corpus, tmp_path / "frozen", freeze=True)
    shapes = {}
    for name, student in (("default", default), ("frozen", frozen)):
        _, every, res = _family(teacher, student, tmp_path / f"fam-{name}", "last-first")
        for e in res.manifest.members:
            assert not e.tied
            assert every[0].num_params <= e.num_params <= every[-1].num_params
        shapes[name] = [(e.name, e.num_params, e.tied) for e in res.manifest.members]
    assert shapes["default"] == shapes["frozen"]
