"""Export a family as GGUF files for llama.cpp and Ollama, each unique source tensor converted once.

Every member is made of the teacher's and the student's tensors (a
:class:`~boomerang_cli.compose.Composition` is a list of references into their
safetensors). So the export converts and quantizes each distinct source tensor
once into a scratch file, then assembles every member's ``.gguf`` by writing its
header and metadata with the ``gguf`` package's ``GGUFWriter`` and streaming the
already-quantized bytes after it: a family of fifteen members costs about two
models' worth of quantization, not fifteen.

What llama.cpp reads is mapped with the ``gguf`` package itself: tensor names
from ``gguf.get_tensor_name_map``, quantization from ``gguf.quants.quantize``,
metadata keys from ``GGUFWriter``. Only llama.cpp's HF -> GGUF permutation of
llama's Q and K rows (``convert_hf_to_gguf.py``; transformers' GGUF loader
undoes it) and the choice of per-tensor types are written here. docs/export.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import __version__
from .arch import ModelInfo
from .compose import Composition
from .errors import BoomerangError, UnsupportedArchitectureError
from .guard import check_disjoint
from .progress import NULL, Progress
from .atomic import atomic_dir, atomic_write_text, check_output_dir
from .tensors import DTYPES, OutTensor, _copy_range

EXPORT_FORMAT = "boomerang-export"
EXPORT_SCHEMA_VERSION = 1
EXPORT_MANIFEST = "export.json"
FORMATS = ("gguf",)
#: --type -> ggml type name: every type the gguf package quantizes in Python that llama.cpp
#: loads for these architectures (K-quants and i-quants need llama.cpp's own llama-quantize).
TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
#: model_type -> (GGUF architecture, whether Q/K rows take llama.cpp's rotary permutation).
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}
#: architectures the map understands but GGUF cannot describe faithfully, and why.
REFUSED = {
    "gemma3_text": "llama.cpp fixes gemma3's sliding-window pattern (every 6th layer global) instead of reading "
                   "it per layer, so members with another layer pattern would run wrongly",
    "gemma3": "llama.cpp fixes gemma3's sliding-window pattern (every 6th layer global) instead of reading "
              "it per layer, so members with another layer pattern would run wrongly",
}
CHUNK_BYTES = 16 << 20  # fp32 rows converted at a time (whole tensor for permuted Q/K)


def _ggml(name: str) -> Any:
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def check_type(type_name: str) -> str:
    if type_name.lower() not in TYPES:
        raise BoomerangError(f"unknown --type {type_name!r}; use one of {', '.join(TYPES)}")
    return type_name.lower()


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise BoomerangError("GGUF export needs the gguf package; run: pip install gguf") from None


def gguf_arch(config: Any) -> tuple[str, bool]:
    """The GGUF architecture of a config and whether llama's Q/K permutation applies; refuse others."""
    model_type = getattr(config, "model_type", None)
    if model_type in REFUSED:
        raise UnsupportedArchitectureError(f"cannot export {model_type} to GGUF: {REFUSED[model_type]}")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"cannot export {model_type} to GGUF yet; supported: {', '.join(ARCHITECTURES)} "
            "(export the members with `boomerang family` and convert them with llama.cpp's convert_hf_to_gguf.py)"
        )
    return ARCHITECTURES[model_type]


def _rope(cfg: Any) -> tuple[float, dict[str, Any]]:
    """rope theta and the scaling parameters (transformers 5 ``rope_parameters``, else 4.x fields)."""
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    scaling = dict(getattr(cfg, "rope_scaling", None) or {}) if not params else params
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return float(theta), scaling


def _rope_type(scaling: dict[str, Any]) -> str:
    return scaling.get("rope_type", scaling.get("type", "default")) or "default"


def llama3_rope_factors(cfg: Any) -> list[float]:
    """llama.cpp's ``rope_freqs.weight`` for llama3 rope scaling: the factor each rotary frequency is
    divided by (convert_hf_to_gguf.py ``LlamaModel.generate_extra_tensors``; transformers computes
    the same scaled frequencies in ``_compute_llama3_parameters``)."""
    theta, p = _rope(cfg)
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = float(p.get("factor", 8.0))
    low, high = float(p.get("low_freq_factor", 1.0)), float(p.get("high_freq_factor", 4.0))
    old = float(p.get("original_max_position_embeddings", 8192))
    out = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def check_exportable(comp: Composition, name: str) -> None:
    """Refuse a member whose config GGUF metadata cannot describe (one line, naming why)."""
    cfg = comp.config.get_text_config()
    kind = gguf_arch(cfg)[0]
    sliding = [i for i, t in enumerate(getattr(cfg, "layer_types", None) or []) if t != "full_attention"]
    if sliding:
        raise UnsupportedArchitectureError(
            f"cannot export {name} to GGUF: its layer {sliding[0]} uses sliding-window attention, which "
            f"llama.cpp's {kind} does not run; export a family whose layers all use full attention"
        )
    rope_type = _rope_type(_rope(cfg)[1])
    if rope_type not in ("default", "linear", "yarn") and not (rope_type == "llama3" and kind == "llama"):
        raise UnsupportedArchitectureError(
            f"cannot export {name} to GGUF: rope scaling {rope_type!r} is not mapped yet "
            "(default, linear, yarn, and llama3 for llama are)"
        )


# -- tensors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of one GGUF file: where its data comes from and how it is converted."""

    gguf_name: str
    source: OutTensor | None  # None: ``values`` made by the export (llama3's rope_freqs)
    ggml_type: str  # "F32", "Q8_0", ...
    permute: int | None  # heads of llama's Q/K permutation; None: as stored
    values: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.values),) if self.source is None else self.source.info.shape

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the converted bytes: the same source tensor converted the same way."""
        if self.source is None:
            return ("generated", self.gguf_name, self.values)
        info = self.source.info
        return (str(info.file), info.begin, self.ggml_type, self.permute)


def tensor_type(gguf_name: str, shape: Sequence[int], requested: str) -> str:
    """The ggml type of one tensor, as llama.cpp's converter and quantizer choose.

    1-D tensors (norms, biases) stay F32; at 4 and 5 bits the embeddings and the
    output head are kept at Q8_0 (llama-quantize keeps them at higher precision too);
    a row that does not divide into quantization blocks falls back to F16.
    """
    import gguf

    if len(shape) < 2:
        return "F32"
    t = requested.upper()
    if t.startswith(("Q4", "Q5")) and gguf_name in ("token_embd.weight", "output.weight"):
        t = "Q8_0"
    block, _ = gguf.GGML_QUANT_SIZES[_ggml(t)]
    if shape[-1] % block:
        return "F16"
    return t


def tensor_specs(comp: Composition, requested: str) -> list[TensorSpec]:
    """The GGUF tensors of one member, in file order, with their names mapped by the gguf package."""
    import gguf

    cfg = comp.config.get_text_config()
    kind, permute = gguf_arch(cfg)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == kind)
    name_map = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    allowed = set(gguf.MODEL_TENSORS[arch])
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    out = []
    for t in comp.tensors:
        key = comp.state_dict_key(t.name)
        found = name_map.get_type_and_name(key, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            raise UnsupportedArchitectureError(
                f"cannot export tensor {key} to GGUF {kind}: llama.cpp has no such tensor in this architecture"
            )
        role, name = found
        perm = None
        if permute and role == gguf.MODEL_TENSOR.ATTN_Q:
            perm = heads
        elif permute and role == gguf.MODEL_TENSOR.ATTN_K:
            perm = kv_heads
        out.append(TensorSpec(name, t, tensor_type(name, t.info.shape, requested), perm))
    if _rope_type(_rope(cfg)[1]) == "llama3":
        out.insert(0, TensorSpec(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None, "F32", None,
                                 tuple(llama3_rope_factors(cfg))))
    return out


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's HF -> GGUF permutation of Q/K rows (convert_hf_to_gguf.py ``LlamaModel.permute``):
    HF's rotate-half layout to GGML's interleaved pairs, per head. transformers' GGUF
    loader reverses it (``LlamaTensorProcessor._reverse_permute_weights``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class Converted:
    offset: int
    nbytes: int


class TensorCache:
    """Converted tensors in one scratch file, each converted the first time it is asked for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")
        self.entries: dict[tuple[Any, ...], Converted] = {}
        self.conversions = 0
        self.references = 0
        self.seconds = 0.0

    def close(self) -> None:
        self._f.close()

    def get(self, spec: TensorSpec) -> Converted:
        self.references += 1
        hit = self.entries.get(spec.key)
        if hit is None:
            t0 = time.perf_counter()
            hit = self.entries[spec.key] = self._convert(spec)
            self.conversions += 1
            self.seconds += time.perf_counter() - t0
        return hit

    def _convert(self, spec: TensorSpec) -> Converted:
        from gguf.quants import quantize

        qtype = _ggml(spec.ggml_type)
        offset = self._f.tell()
        for chunk in _float_chunks(spec):
            q = np.ascontiguousarray(quantize(chunk, qtype))
            self._f.write(q.tobytes())
        self._f.flush()
        return Converted(offset, self._f.tell() - offset)


def _float_chunks(spec: TensorSpec):
    """The source tensor as fp32 numpy slices of whole rows (quantization is row-wise), or whole
    when permuted."""
    src = spec.source
    if src is None:
        yield np.asarray(spec.values, dtype=np.float32)
        return
    info = src.info
    if spec.permute is not None or len(info.shape) < 2:
        t = src.source.read(src.src_name, torch.float32)
        if spec.permute is not None:
            t = permute_rows(t, spec.permute)
        yield t.numpy()
        return
    dtype = DTYPES[info.dtype]
    size = torch.empty(0, dtype=dtype).element_size()
    row = math.prod(info.shape[1:])
    rows = max(1, CHUNK_BYTES // (4 * row))
    with open(info.file, "rb") as f:
        for start in range(0, info.shape[0], rows):
            n = min(rows, info.shape[0] - start)
            buf = bytearray(n * row * size)
            f.seek(info.begin + start * row * size)
            if f.readinto(buf) != len(buf):
                raise BoomerangError(f"{info.file}: file ended early while reading {info.name}")
            yield torch.frombuffer(buf, dtype=dtype).reshape(n, *info.shape[1:]).to(torch.float32).numpy()


# -- metadata -------------------------------------------------------------------------------


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

    from .refs import BUILTINS, ModelRef

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
        raise BoomerangError(f"{source}: its tokenizer has {len(tokens.data)} tokens but the model {n_vocab} "
                             "embeddings; export from an HF teacher instead")


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
    tokens, scores, types = [], [], []
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
        writer, quiet=True)


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


# -- files ----------------------------------------------------------------------------------


def write_gguf(path: Path, comp: Composition, specs: Sequence[TensorSpec], cache: TensorCache,
               metadata: Callable[[Any], None], on_bytes: Callable[[int], None] | None = None) -> None:
    """One member's GGUF: header, metadata and tensor infos by ``GGUFWriter``, then the cached
    tensor bytes streamed after them at GGUF's alignment."""
    import gguf

    kind, _ = gguf_arch(comp.config.get_text_config())
    converted = [cache.get(s) for s in specs]
    writer = gguf.GGUFWriter(str(path), kind)
    try:
        metadata(writer)
        for s, c in zip(specs, converted):
            writer.add_tensor_info(s.gguf_name, s.shape, np.dtype(np.float32), c.nbytes, raw_dtype=_ggml(s.ggml_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        out = writer.fout[0]
        writer.write_padding(out, out.tell())
        for c in converted:
            out.flush()
            _copy_range(cache.path, c.offset, c.nbytes, out)
            writer.write_padding(out, c.nbytes)
            if on_bytes is not None:
                on_bytes(c.nbytes)
    finally:
        writer.close()


def modelfile(gguf_name: str) -> str:
    """Ollama's Modelfile: the GGUF carries the chat template and stop tokens itself."""
    return f"FROM ./{gguf_name}\n"


@dataclass
class ExportedFile:
    name: str
    kind: str  # member | teacher | student
    path: str  # relative to the export directory
    type: str
    size: int
    sha256: str
    num_layers: int
    num_params: int
    tied: bool
    tensor_types: dict[str, int]
    modelfile: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ExportResult:
    family: str  # absolute path of family.json
    output: Path
    type: str
    files: list[ExportedFile]
    unique_tensors: int  # conversions done
    tensor_references: int  # tensors written over all files
    seconds: dict[str, float]
    tokenizer: str
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "schema_version": EXPORT_SCHEMA_VERSION,
            "tool_version": __version__,
            "created": self.created,
            "family": self.family,
            "file_format": "gguf",
            "type": self.type,
            "tokenizer": self.tokenizer,
            "conversions": {"unique_tensors": self.unique_tensors, "tensor_references": self.tensor_references,
                            "seconds": round(self.seconds.get("convert", 0.0), 3)},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "files": [f.to_json() for f in self.files],
        }


def plan_export(family: Path | str, members: Sequence[str] | None, type_name: str
                ) -> tuple[Path, Any, dict[str, ModelInfo], list[tuple[str, Composition, list[TensorSpec]]]]:
    """Check everything before writing: the manifest, its models, every selected member's GGUF mapping."""
    from .family.open import check_family_models, load_family_models, member_of, read_complete_manifest, select_names

    require_gguf()
    type_name = check_type(type_name)
    mpath, manifest = read_complete_manifest(family)
    models = load_family_models(manifest, mpath.parent)
    gguf_arch(models["teacher"].config.get_text_config())
    check_family_models(manifest, models)
    work = []
    for name in select_names(manifest, members):
        comp = member_of(manifest, name).composition(models)
        check_exportable(comp, name)
        work.append((name, comp, tensor_specs(comp, type_name)))
    return mpath, manifest, models, work


def export_family(
    family: Path | str,
    output: Path | str,
    type_name: str = "q8_0",
    members: Sequence[str] | None = None,
    *,
    file_format: str = "gguf",
    overwrite: bool = False,
    modelfiles: bool = True,
    progress: Progress = NULL,
) -> ExportResult:
    """Write one ``<name>.gguf`` per selected member (and its Ollama ``<name>.Modelfile``) plus
    ``export.json`` into ``output``, atomically; each unique source tensor is converted once."""
    if file_format not in FORMATS:
        raise BoomerangError(f"unknown --format {file_format!r}; use {', '.join(FORMATS)}")
    type_name = check_type(type_name)
    output = Path(output).expanduser()
    check_output_dir(output, overwrite)
    t0 = time.perf_counter()
    mpath, manifest, models, work = plan_export(family, members, type_name)
    check_disjoint(output, {"family": mpath.parent, **{role: info.path for role, info in models.items()}})
    teacher = manifest.teacher
    meta = family_metadata(mpath.parent.resolve().name, teacher.ref, models["teacher"])
    seconds = {"plan": time.perf_counter() - t0}
    files: list[ExportedFile] = []
    unique = {s.key for _, _, specs in work for s in specs}
    with atomic_dir(output, overwrite) as tmp:
        cache = TensorCache(tmp / ".tensors.tmp")
        try:
            convert = progress.task("convert tensors", len(unique), "tensors")
            for _, _, specs in work:  # each unique tensor once, in the order the files need them
                for s in specs:
                    if s.key not in cache.entries:
                        cache.get(s)
                        convert.advance(1)
            progress.finish(convert)
            cache.references = 0
            seconds["convert"] = cache.seconds
            t1 = time.perf_counter()
            total = sum(cache.entries[s.key].nbytes for _, _, specs in work for s in specs)
            task = progress.task("write gguf", total, "B")
            for name, comp, specs in work:
                task.update(description=f"write {name}")
                fname = f"{name}.gguf"
                write_gguf(tmp / fname, comp, specs, cache,
                           lambda w, c=comp, n=name: write_metadata(w, c, n, type_name, meta), task.advance)
                mfile = None
                if modelfiles:
                    mfile = f"{name}.Modelfile"
                    (tmp / mfile).write_text(modelfile(fname))
                files.append(_record(tmp / fname, name, comp, specs, type_name, mfile))
            progress.finish(task)
        finally:
            cache.close()
            os.unlink(cache.path)
        seconds["write"] = time.perf_counter() - t1
        seconds["total"] = time.perf_counter() - t0
        result = ExportResult(str(mpath.resolve()), output, type_name, files, cache.conversions,
                              cache.references, seconds, meta.tokenizer_source)
        atomic_write_text(tmp / EXPORT_MANIFEST, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _record(path: Path, name: str, comp: Composition, specs: Sequence[TensorSpec], type_name: str,
            mfile: str | None) -> ExportedFile:
    from .family import sha256_file

    counts: dict[str, int] = {}
    for s in specs:
        counts[s.ggml_type.lower()] = counts.get(s.ggml_type.lower(), 0) + 1
    kind = name if name in ("teacher", "student") else "member"
    return ExportedFile(name, kind, path.name, type_name, path.stat().st_size, sha256_file(path),
                        comp.config.get_text_config().num_hidden_layers, comp.num_params, comp.tied,
                        dict(sorted(counts.items())), mfile)
