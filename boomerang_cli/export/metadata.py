"""A member's GGUF metadata: architecture fields per layer, tokenizer, chat template, license, base model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..arch import ModelInfo
from ..compose import Composition
from ..errors import BoomerangError
from .gguf_arch import _rope, _rope_type, gguf_arch


@dataclass
class Metadata:
    """What every file of the export shares: naming, provenance, the tokenizer's source."""

    family_name: str
    tokenizer_dir: Path  # HF tokenizer files (the teacher's)
    source_gguf: Path | None  # the teacher's original GGUF, when it came as one
    base_model: str | None  # hub id of the teacher
    license: str | None
    tokenizer: dict[str, Any] = field(default_factory=dict)  # the tokenizer.* keys, made once per export

    @property
    def tokenizer_source(self) -> str:
        if self.source_gguf is not None:
            return f"copied from {self.source_gguf}"
        return f"built from the HF tokenizer in {self.tokenizer_dir}"


def _source_gguf(teacher_dir: Path) -> Path | None:
    """The GGUF a teacher was converted from (refs.convert_gguf records it), if still there."""
    rec = Path(teacher_dir) / "boomerang_source.json"
    try:
        src = Path(json.loads(rec.read_text())["converted_from"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return src if src.is_file() else None


def _card_license(model_dir: Path) -> str | None:
    """``license:`` of a model card's front matter."""
    try:
        text = (Path(model_dir) / "README.md").read_text()
    except OSError:
        return None
    front = text.split("---")[1] if text.startswith("---") and text.count("---") >= 2 else ""
    m = re.search(r"^license:\s*['\"]?([^'\"\n]+)", front, re.MULTILINE)
    return m.group(1).strip() if m else None


def family_metadata(family_name: str, teacher_ref: str, teacher: ModelInfo) -> Metadata:
    """Naming, provenance and the tokenizer keys, shared by every file (reading a GGUF's 100k
    tokenizer strings takes seconds: done once per export, not per file)."""
    import gguf

    from ..refs import BUILTINS, ModelRef

    teacher_dir = Path(teacher.path)
    source = "builtin" if teacher_ref in BUILTINS else ("local" if Path(teacher_ref).is_absolute() else "hub")
    base = ModelRef(teacher_ref, teacher_dir, source).hub_id
    src_gguf = _source_gguf(teacher_dir)
    cfg = teacher.config.get_text_config()
    lic = None
    recorder = gguf.GGUFWriter(None, "tokenizer")  # collects keys, writes nothing
    if src_gguf is not None:
        reader = gguf.GGUFReader(str(src_gguf))
        field_ = reader.fields.get("general.license")
        lic = field_.contents() if field_ is not None else None
        _copy_tokenizer(recorder, reader, src_gguf, cfg.vocab_size)
    else:
        _hf_tokenizer(recorder, teacher_dir, cfg.vocab_size, cfg.model_type)
    keys = {k: v for k, v in recorder.kv_data[0].items() if k.startswith("tokenizer.")}
    return Metadata(family_name, teacher_dir, src_gguf, base, lic or _card_license(teacher_dir), keys)


def _copy_tokenizer(writer: Any, reader: Any, source: Path, n_vocab: int) -> None:
    """Every ``tokenizer.*`` key of the teacher's own GGUF, with its exact types."""
    import gguf

    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1])
        else:
            writer.add_key_value(key, f.contents(), f.types[0])
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens.data) != n_vocab:
        raise BoomerangError(
            f"{source}: its tokenizer has {len(tokens.data)} tokens but the model {n_vocab} "
            "embeddings; export from an HF teacher instead"
        )


#: model_type -> llama.cpp pre-tokenizer for HF tokenizers (the converter finds it by hashing
#: the tokenizer's output, which needs its table; these are the families' own choices).
PRE_TOKENIZERS = {"qwen2": "qwen2", "qwen3": "qwen2"}


def _hf_tokenizer(writer: Any, directory: Path, n_vocab: int, model_type: str) -> None:
    """The HF tokenizer as GGUF keys, with the gguf package's vocab readers (byte-level BPE or
    SentencePiece/llama) and ``SpecialVocab`` (merges, BOS/EOS/..., add_bos, chat template)."""
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab

    vocab = None
    for cls in (BpeVocab, LlamaHfVocab, SentencePieceVocab):
        try:
            vocab = cls(directory)
            break
        except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError):
            continue
    if vocab is None:
        raise BoomerangError(
            f"{directory}: no tokenizer the gguf package can convert (byte-level BPE tokenizer.json or "
            "SentencePiece tokenizer.model); give the teacher's tokenizer files"
        )
    tokens: list[Any] = []
    scores: list[float] = []
    types: list[Any] = []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(ttype)
    try:
        added = json.loads((directory / "tokenizer.json").read_text()).get("added_tokens") or []
    except (OSError, ValueError):
        added = []
    for tok in added:  # special tokens of the main vocabulary are control tokens for llama.cpp
        if tok.get("special") and 0 <= tok.get("id", -1) < len(types):
            types[tok["id"]] = gguf.TokenType.CONTROL
    if len(tokens) > n_vocab:
        raise BoomerangError(f"{directory}: the tokenizer has {len(tokens)} tokens but the model {n_vocab} embeddings")
    for i in range(len(tokens), n_vocab):  # as llama.cpp's converter pads
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get(model_type, "default"))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    gguf.SpecialVocab(directory, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=n_vocab).add_to_gguf(
        writer, quiet=True
    )


def write_metadata(writer: Any, comp: Composition, name: str, requested: str, meta: Metadata) -> None:
    """The GGUF keys of one member: general.*, the architecture's hyperparameters, the tokenizer."""
    import gguf

    cfg = comp.config.get_text_config()
    kind, _ = gguf_arch(cfg)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"{meta.family_name} {name}")
    writer.add_basename(meta.family_name)
    writer.add_size_label(gguf.size_label(comp.num_params, 0, 0, 0))
    if meta.license:
        writer.add_license(meta.license)
    if meta.base_model:
        writer.add_base_model_count(1)
        writer.add_base_model_name(0, meta.base_model.split("/")[-1])
        writer.add_base_model_organization(0, meta.base_model.split("/")[0])
        writer.add_base_model_repo_url(0, f"https://huggingface.co/{meta.base_model}")
    writer.add_tags(["boomerang-distillation"])
    writer.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // heads or kind == "qwen3":
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta, scaling = _rope(cfg)
    writer.add_rope_freq_base(theta)
    rope_type = _rope_type(scaling)
    if rope_type in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope_type))
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        if rope_type == "yarn" and scaling.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    writer.add_file_type(file_type(requested))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.kv_data[0].update(meta.tokenizer)


def file_type(type_name: str) -> int:
    """``general.file_type``: llama.cpp's name for the file's main type."""
    import gguf

    return int(gguf.LlamaFileType["ALL_F32" if type_name == "f32" else f"MOSTLY_{type_name.upper()}"])
