"""Compose a model directory from layers of one or more source models.

Both the student (teacher layers ``kept``) and every family member (each block
from teacher or student) are compositions: a list of layer sources plus the
model supplying the embeddings and the one supplying final norm and head. This
module turns that description into output tensor names, a config whose
per-layer fields follow each layer's source, and the tied/untied decision of
SPEC section 4 (decided by content), then streams it to disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .arch import ModelInfo, derived_config
from .errors import PairMismatchError
from .provenance import copy_aux_files
from .tensor_writer import OutTensor, TensorDigests, WriteResult, write_safetensors
from .tensors import same_values


@dataclass(frozen=True)
class LayerSource:
    """Output layer taken from layer ``layer`` of the model named ``model``."""

    model: str  # "teacher" | "student"
    layer: int

    def to_json(self) -> list[Any]:
        return [self.model, self.layer]


@dataclass(frozen=True)
class Stack:
    """What a model computes: embeddings of one source, layers in order, final norm + head of one source."""

    embed_from: str
    layers: tuple[LayerSource, ...]
    head_from: str

    @classmethod
    def of_member(cls, member: Any) -> "Stack":
        """A ``member.Member``'s stack (typed loosely: member.py sits above this module)."""
        return cls(member.embed_from, tuple(member.layers), member.head_from)

    @classmethod
    def whole(cls, model: str, num_layers: int) -> "Stack":
        """A source model itself (the teacher or the student)."""
        return cls(model, tuple(LayerSource(model, i) for i in range(num_layers)), model)

    @classmethod
    def of_layers(cls, model: str, layers: Sequence[int]) -> "Stack":
        """``model`` with only ``layers`` kept (a pruning baseline)."""
        return cls(model, tuple(LayerSource(model, int(i)) for i in layers), model)

    @property
    def sources(self) -> set[str]:
        return {self.embed_from, self.head_from} | {ls.model for ls in self.layers}

    @property
    def mixed(self) -> bool:
        return len(self.sources) > 1


@dataclass
class Composition:
    """Everything needed to write (or count) one composed model: what it is made of (its
    :class:`Stack`) and the tensors, config and tying that come out of that."""

    tensors: list[OutTensor]
    config: Any
    tied: bool
    num_params: int
    stack: Stack
    rename: dict[str, str]  # output (checkpoint) name -> state-dict key, for in-memory loading

    @property
    def layers(self) -> tuple[LayerSource, ...]:
        return self.stack.layers

    @property
    def embed_from(self) -> str:
        return self.stack.embed_from

    @property
    def head_from(self) -> str:
        return self.stack.head_from

    def state_dict_key(self, name: str) -> str:
        return self.rename.get(name, name)


def compose(
    models: Mapping[str, ModelInfo],
    layers: Sequence[LayerSource],
    embed_from: str,
    head_from: str,
    base: str = "teacher",
    dtype: torch.dtype | None = None,
) -> Composition:
    """Describe the model built from ``layers``; names and config follow ``base``."""
    naming = models[base]
    arch = naming.arch
    out: list[OutTensor] = []

    def add(canonical_out: str, src: ModelInfo, canonical_src: str) -> None:
        out.append(OutTensor(naming.tensor(canonical_out), src.weights, src.tensor(canonical_src), dtype))

    emb, hd = models[embed_from], models[head_from]
    for k in arch.pre:
        add(k, emb, k)
    for i, ls in enumerate(layers):
        src = models[ls.model]
        for key in arch.layer_keys:
            add(arch.layer_tensor(i, key), src, arch.layer_tensor(ls.layer, key))
    # Tying is decided by content (SPEC sections 4 and 6): the output is tied when
    # its embedding and head are byte-identical as saved, whichever models they
    # come from (a student distilled with --freeze-embeddings keeps the teacher's);
    # otherwise both are saved, untied (the tied-embeddings trap). A tied model's
    # head *is* its embedding, even where the checkpoint also stores a (then
    # ignored) head copy.
    head_src = hd.arch.embed if hd.arch.tied else hd.arch.head
    if embed_from == head_from:
        tied = hd.arch.tied
    else:
        tied = same_values(emb.weights.info(emb.tensor(arch.embed)), hd.weights.info(hd.tensor(head_src)), dtype)
    for k in arch.post:
        if k != arch.head:
            add(k, hd, k)
    if not tied:
        out.append(OutTensor(naming.tensor(arch.head), hd.weights, hd.tensor(head_src), dtype))
    per_layer = [models[ls.model].arch.per_layer_config(models[ls.model].config)[ls.layer] for ls in layers]
    config = derived_config(naming.config, arch, per_layer, tied=tied, dtype=dtype)
    num_params = sum(t.info.numel for t in out)
    return Composition(out, config, tied, num_params, Stack(embed_from, tuple(layers), head_from), dict(arch.rename))


def check_same_family(teacher: ModelInfo, student: ModelInfo) -> list[str]:
    """Differences that make two models impossible to mix layer by layer."""
    problems = []
    ta, sa = teacher.arch, student.arch
    if ta.model_type != sa.model_type:
        problems.append(f"architecture {sa.model_type} vs teacher {ta.model_type}")
    for name in ("hidden_size", "vocab_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        tv = getattr(teacher.config.get_text_config(), name, None)
        sv = getattr(student.config.get_text_config(), name, None)
        if tv != sv:
            problems.append(f"{name} {sv} vs teacher {tv}")
    if ta.layer_keys != sa.layer_keys and not problems:
        problems.append("layers hold different tensors")
    return problems


def require_same_family(teacher: ModelInfo, student: ModelInfo) -> None:
    problems = check_same_family(teacher, student)
    if problems:
        raise PairMismatchError(f"student {student.path} does not match teacher {teacher.path}: {'; '.join(problems)}")


def fingerprint(info: ModelInfo, samples: int = 16, width: int = 64) -> str:
    """A cheap identity for a model's weights: names, shapes, dtypes and sampled bytes.

    Reading every byte of a multi-GB teacher would take minutes; sampling each
    tensor at evenly spaced offsets still tells apart any two real checkpoints.
    """
    h = hashlib.sha256()
    w = info.weights
    for name in sorted(w.keys()):
        e = w.info(name)
        h.update(f"{name}|{e.dtype}|{e.shape}|".encode())
        with open(e.file, "rb") as f:
            for j in range(samples):
                off = e.begin + (e.nbytes - width) * j // max(samples - 1, 1) if e.nbytes > width else e.begin
                f.seek(off)
                h.update(f.read(min(width, e.nbytes)))
    return "sha256-sampled:" + h.hexdigest()


def model_card(
    title: str,
    base_models: Sequence[str],
    body: str,
    tags: Sequence[str] = ("boomerang-distillation",),
    license: str | None = None,
) -> str:
    """A README.md with Hub metadata, so the directory is a complete HF model.

    ``license`` is the teacher's (a derived model inherits its terms); nothing
    here or in ``body`` may be a local path, since users publish these cards.
    """
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if license:
        lines.append(f"license: {json.dumps(license)}")
    base_models = list(dict.fromkeys(base_models))
    if base_models:  # hub ids only: the Hub rejects local paths here
        lines += ["base_model:"] + [f"- {json.dumps(b)}" for b in base_models]
    lines += ["tags:"] + [f"- {t}" for t in tags] + ["---", "", f"# {title}", "", body.strip(), ""]
    return "\n".join(lines)


def write_model_dir(
    directory: Path,
    comp: Composition,
    aux_from: Path,
    card: str,
    extra_json: Mapping[str, Any] | None = None,
    max_shard_size: int = 5 * 10**9,
    on_tensor: Callable[[int], None] | None = None,
    digests: TensorDigests | None = None,
) -> WriteResult:
    """Write a complete HF model directory (weights, config, tokenizer, card) into ``directory``.

    ``digests``: the weight files' digests come back in ``result.digests``
    (``tensor_writer.TensorDigests``; the small files are left to the caller).
    """
    result = write_safetensors(directory, comp.tensors, max_shard_size, on_tensor, digests)
    copy_aux_files(aux_from, directory)
    comp.config.to_json_file(str(directory / "config.json"))
    (directory / "README.md").write_text(card, errors="backslashreplace")  # a file name that is not UTF-8
    for name, data in (extra_json or {}).items():
        (directory / name).write_text(json.dumps(data, indent=2) + "\n")
    return result
