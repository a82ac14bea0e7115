"""The architecture map: discovered from config and tensor names, for every tiny architecture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from boomerang_cli.arch import (
    PATTERN_FIELDS,
    ModelInfo,
    _period_encode,
    _prefix_encode,
    build_arch_map,
    derived_config,
)
from boomerang_cli.errors import UnsupportedArchitectureError
from boomerang_cli.model_config import load_config
from boomerang_cli.tensors import ModelWeights

from .common import ARCHS, TIED_ARCHS, TINY_LAYERS, load, tiny_model_dir

DECODER = "model.layers"
#: model_type -> (layers_path, embed, head, tied, pre, post, list_fields, pattern_fields)
EXPECTED = {
    "llama": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        (),
        (),
    ),
    "qwen2": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        ("layer_types",),
        ("max_window_layers",),
    ),
    "qwen3": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        ("layer_types",),
        ("max_window_layers",),
    ),
    "mistral": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        (),
        (),
    ),
    "gemma2": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        True,
        ("model.embed_tokens.weight",),
        ("model.norm.weight",),
        ("layer_types",),
        (),
    ),
    "gemma3_text": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        True,
        ("model.embed_tokens.weight",),
        ("model.norm.weight",),
        ("layer_types",),
        ("sliding_window_pattern", "_sliding_window_pattern"),
    ),
    "phi3": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        (),
        (),
    ),
    "gpt_neox": (
        "gpt_neox.layers",
        "gpt_neox.embed_in.weight",
        "lm_head.weight",
        False,
        ("gpt_neox.embed_in.weight",),
        ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "lm_head.weight"),
        (),
        (),
    ),
    "gpt2": (
        "transformer.h",
        "transformer.wte.weight",
        "lm_head.weight",
        True,
        ("transformer.wte.weight", "transformer.wpe.weight"),
        ("transformer.ln_f.weight", "transformer.ln_f.bias"),
        (),
        (),
    ),
    "olmo2": (
        DECODER,
        "model.embed_tokens.weight",
        "lm_head.weight",
        False,
        ("model.embed_tokens.weight",),
        ("model.norm.weight", "lm_head.weight"),
        (),
        (),
    ),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("arch-models")
    return {mt: tiny_model_dir(root, mt) for mt in ARCHS}


def test_expected_table_covers_every_arch():
    assert set(EXPECTED) == set(ARCHS)


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_every_arch_maps(models, model_type):
    info = ModelInfo.load(models[model_type])
    a = info.arch
    layers_path, embed, head, tied, pre, post, lists, patterns = EXPECTED[model_type]
    assert a.model_type == model_type
    assert a.num_layers == TINY_LAYERS
    assert a.layers_path == layers_path
    assert a.embed == embed and a.head == head
    assert a.tied is tied and tied == (model_type in TIED_ARCHS)
    assert a.head_stored is (not tied)
    assert a.pre == pre and a.post == post
    assert a.list_fields == lists
    assert set(a.pattern_fields) == set(patterns)
    # Every checkpoint tensor is accounted for exactly once: before, inside or after the layers.
    canonical = {a.rename.get(k, k) for k in info.weights.keys()}
    layer_tensors = {a.layer_tensor(i, k) for i in range(a.num_layers) for k in a.layer_keys}
    assert canonical == set(pre) | set(post) | layer_tensors
    assert len(a.layer_keys) >= 4
    # The map agrees with the model transformers builds from the same directory.
    model = load(models[model_type])
    assert len(model.get_submodule(layers_path)) == TINY_LAYERS
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied
    assert json.loads(json.dumps(a.to_json()))["layers_path"] == layers_path


def test_gpt_neox_head_rename(models):
    # gpt_neox saves its head as embed_out.weight; the canonical name is lm_head.weight.
    info = ModelInfo.load(models["gpt_neox"])
    assert "embed_out.weight" in info.weights
    assert info.arch.rename == {"embed_out.weight": "lm_head.weight"}
    assert info.tensor("lm_head.weight") == "embed_out.weight"
    assert info.tensor("gpt_neox.embed_in.weight") == "gpt_neox.embed_in.weight"


def test_hub_style_gpt2_names_without_prefix(models, tmp_path):
    # The hub's original gpt2 checkpoint stores "h.0.attn.c_attn.weight" (no "transformer.")
    # and the causal-mask buffers "h.N.attn.bias"; both must be understood.
    src = models["gpt2"]
    d = tmp_path / "gpt2-hub"
    shutil.copytree(src, d)
    sd = load_file(str(d / "model.safetensors"))
    hub = {k.removeprefix("transformer."): v for k, v in sd.items()}
    for i in range(TINY_LAYERS):
        hub[f"h.{i}.attn.bias"] = torch.ones(1, 1, 4, 4)
    save_file(hub, str(d / "model.safetensors"), metadata={"format": "pt"})
    info = ModelInfo.load(d)
    assert info.arch.rename["wte.weight"] == "transformer.wte.weight"
    assert info.tensor("transformer.h.3.mlp.c_fc.weight") == "h.3.mlp.c_fc.weight"
    assert info.arch.layers_path == "transformer.h"
    assert info.arch.pre == EXPECTED["gpt2"][4]


def test_per_layer_config_lists_and_patterns(models):
    info = ModelInfo.load(models["qwen2"])
    per_layer = info.arch.per_layer_config(info.config)
    # tiny qwen2: sliding window on, max_window_layers=3 -> layers 0-2 full, 3-5 sliding.
    assert [p["max_window_layers"] for p in per_layer] == [True] * 3 + [False] * 3
    assert [p["layer_types"] for p in per_layer] == ["full_attention"] * 3 + ["sliding_attention"] * 3
    # Layers out of order: no max_window_layers describes them, and the int field cannot be null: removed.
    cfg = derived_config(info.config, info.arch, [per_layer[i] for i in (3, 0)], tied=False)
    assert "max_window_layers" not in cfg.to_dict() and cfg.layer_types == ["sliding_attention", "full_attention"]


def test_pattern_encoders():
    assert _prefix_encode([True, True, False]) == 2
    assert _prefix_encode([False, False]) == 0
    assert _prefix_encode([True, False, True]) is None
    assert _period_encode([False, False, True, False, False, True]) == 3
    assert _period_encode([False, True, False, True]) == 2
    assert _period_encode([False, True, True]) is None
    # Each rule inverts its own flags on a layer range.
    for name in PATTERN_FIELDS:
        f = PATTERN_FIELDS[name]
        flags = [f.flag(3, i) for i in range(9)]
        assert [f.flag(f.encode(flags), i) for i in range(9)] == flags


def test_derived_config_gemma3_pattern_alias(models):
    # gemma3 stores the pattern twice (sliding_window_pattern and its _alias); both must follow.
    info = ModelInfo.load(models["gemma3_text"])
    per_layer = info.arch.per_layer_config(info.config)
    cfg = derived_config(info.config, info.arch, [per_layer[i] for i in (0, 2, 4, 5)], tied=True)
    assert cfg.num_hidden_layers == 4
    assert cfg.layer_types == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    assert cfg.sliding_window_pattern == 2 and cfg._sliding_window_pattern == 2
    # A selection no period describes keeps the explicit list as the truth, and the pattern is cleared.
    odd = derived_config(info.config, info.arch, [per_layer[i] for i in (0, 2, 5)], tied=True)
    assert odd.layer_types == ["sliding_attention", "full_attention", "full_attention"]
    assert odd.sliding_window_pattern is None and odd._sliding_window_pattern is None


def test_token_id_lists_are_not_per_layer(tmp_path):
    d = tiny_model_dir(tmp_path, "llama", layers=2, eos_token_id=[0, 1])
    info = ModelInfo.load(d)
    assert info.arch.list_fields == ()


# -- refused models ---------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_weights(d: Path, edit) -> None:
    sd = load_file(str(d / "model.safetensors"))
    edit(sd)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_unknown_tensor_refused(models, tmp_path):
    d = _copy(models["llama"], tmp_path / "extra")
    _edit_weights(d, lambda sd: sd.__setitem__("model.mystery_adapter.weight", torch.zeros(3)))
    with pytest.raises(UnsupportedArchitectureError, match="not understood: model.mystery_adapter.weight"):
        ModelInfo.load(d)


def test_layer_missing_a_tensor_refused(models, tmp_path):
    d = _copy(models["llama"], tmp_path / "holey")
    _edit_weights(d, lambda sd: sd.pop("model.layers.3.mlp.up_proj.weight"))
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 3 .*lacks tensors \['mlp.up_proj.weight'\]"):
        ModelInfo.load(d)


def test_layer_zero_missing_a_tensor_refused(models, tmp_path):
    # Layer 0 defines the layer layout; the others holding more must not be dropped silently.
    d = _copy(models["llama"], tmp_path / "holey0")
    _edit_weights(d, lambda sd: sd.pop("model.layers.0.mlp.up_proj.weight"))
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 1 .*extra tensors \['mlp.up_proj.weight'\]"):
        ModelInfo.load(d)


def test_missing_final_norm_refused(models, tmp_path):
    d = _copy(models["llama"], tmp_path / "nonorm")
    _edit_weights(d, lambda sd: sd.pop("model.norm.weight"))
    with pytest.raises(UnsupportedArchitectureError, match="lacks tensors model.norm.weight"):
        ModelInfo.load(d)


def test_masked_lm_refused(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=512)
    BertForMaskedLM(cfg).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(UnsupportedArchitectureError) as err:
        ModelInfo.load(tmp_path / "bert")
    assert "BertForMaskedLM" in str(err.value) and "not a causal language model" in str(err.value)


def test_encoder_decoder_refused(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=512)
    T5ForConditionalGeneration(cfg).save_pretrained(str(tmp_path / "t5"))
    with pytest.raises(UnsupportedArchitectureError, match="encoder-decoder"):
        ModelInfo.load(tmp_path / "t5")


def test_unknown_model_type_refused(models, tmp_path):
    d = _copy(models["llama"], tmp_path / "alien")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "alien_lm_9000"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match="unreadable config"):
        ModelInfo.load(d)


def test_build_arch_map_from_config_and_names_alone(models):
    # No weights are read: a config and the tensor names are enough.
    d = models["mistral"]
    a = build_arch_map(load_config(d), ModelWeights(d).keys())
    assert a.layers_path == DECODER and a.num_layers == TINY_LAYERS


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_pattern_fields_never_contradict_the_layers(model_type, models, tmp_path):
    """Every member of both orders: each pattern field, as written and read back, is either cleared or
    describes exactly the member's layers, and then gives back the written ``layer_types``."""
    from transformers import AutoConfig

    from boomerang_cli.orders.names import sequential_members
    from boomerang_cli.plan import Plan
    from boomerang_cli.refs import resolve
    from boomerang_cli.student import init_student

    plan = Plan.from_keep(TINY_LAYERS, [0, 2, 4, 5])
    student = tmp_path / "student"
    init_student(resolve(str(models[model_type])), plan, student)
    infos = {"teacher": ModelInfo.load(models[model_type]), "student": ModelInfo.load(student)}
    fields = infos["teacher"].arch.pattern_fields
    seen: set[str] = set()
    for order in ("last-first", "first-last"):
        for member in sequential_members(plan, order):
            comp = member.composition(infos)
            want = [infos[ls.model].arch.per_layer_config(infos[ls.model].config)[ls.layer] for ls in comp.layers]
            out = tmp_path / f"{order}-{member.name}"
            out.mkdir()
            comp.config.to_json_file(str(out / "config.json"))
            written = json.loads((out / "config.json").read_text())
            back = AutoConfig.from_pretrained(str(out))
            for name in fields:
                value = written.get(name)
                if value is None:  # cleared, and read back as cleared (not as the class default)
                    seen.add("cleared")
                    assert name in written and getattr(back, name, None) is None, (model_type, member.name, name)
                    continue
                seen.add("encoded")
                assert [PATTERN_FIELDS[name].flag(value, i) for i in range(len(want))] == [
                    bool(w[name]) for w in want
                ], (model_type, order, member.name, name)
                if "layer_types" in written:  # the rule alone rebuilds the same list
                    alone = type(back)(**{k: v for k, v in written.items() if k != "layer_types"})
                    assert alone.layer_types == written["layer_types"], (model_type, member.name, name)
    if model_type == "gemma3_text":  # both branches are exercised
        assert seen == {"cleared", "encoded"}
    elif fields:
        assert "encoded" in seen
