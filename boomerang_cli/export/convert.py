"""Source tensors converted and quantized once per family, in row slices, reused by every member."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..compose import Composition
from ..errors import BoomerangError, UnsupportedArchitectureError
from ..tensor_writer import OutTensor
from ..tensors import CHUNK_BYTES, DTYPES
from .gguf_arch import _ggml, _rope, _rope_type, gguf_arch, llama3_rope_factors


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
        return (len(self.values or ()),) if self.source is None else self.source.info.shape

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
        out.insert(
            0,
            TensorSpec(
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                None,
                "F32",
                None,
                tuple(llama3_rope_factors(cfg)),
            ),
        )
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
