"""One resident copy of each unique tensor, and models built over it.

A family's members are made of the same tensors: every member layer is a
teacher layer or a student layer, embeddings and head come from one of the
two (SPEC section 9). :class:`TensorPool` reads each stored tensor once and
also merges tensors that hold the same bytes (a student initialized from the
teacher keeps the teacher's embeddings unless training moved them), so all
members together cost about the unique weights, not one model each.

:func:`build_model` makes one member a complete ``PreTrainedModel`` of its own
config: its modules are its own (so every attention module has the member's
own ``layer_idx`` for the KV cache, its own ``layer_types`` entry and sliding
window), but every parameter *is* a pool tensor: the same ``nn.Parameter``
object other members hold, never a copy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..compose import Composition
from ..errors import BoomerangError
from ..models import empty_model, set_parameter
from ..tensor_writer import OutTensor


@dataclass
class TensorPool:
    """Stored tensors as shared parameters: one per (file, offset), and one per distinct content."""

    dtype: torch.dtype
    device: torch.device
    by_place: dict[tuple[str, int], nn.Parameter] = field(default_factory=dict)
    by_content: dict[tuple[str, tuple[int, ...], str], nn.Parameter] = field(default_factory=dict)
    reads: int = 0  # tensors read from disk
    merged: int = 0  # of those, found identical to one already held and dropped

    def get(self, t: OutTensor) -> nn.Parameter:
        """The shared parameter holding ``t``'s source tensor (read on first use)."""
        info = t.info
        place = (str(info.file), info.begin)
        if place in self.by_place:
            return self.by_place[place]
        value = t.source.read(t.src_name, self.dtype)
        self.reads += 1
        content = (str(value.dtype), tuple(value.shape), _digest(value))
        param = self.by_content.get(content)
        if param is None:
            param = nn.Parameter(value.to(self.device), requires_grad=False)
            self.by_content[content] = param
        else:
            self.merged += 1
        self.by_place[place] = param
        return param

    @property
    def unique(self) -> list[nn.Parameter]:
        return list(self.by_content.values())

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds: every unique tensor once."""
        return sum(p.numel() * p.element_size() for p in self.unique)


def _digest(value: torch.Tensor) -> str:
    """Content hash of a tensor's bytes (bytes, not values: -0.0 and NaN payloads count)."""
    flat = value.detach().contiguous().reshape(-1)
    return hashlib.blake2b(flat.view(torch.uint8).numpy().data, digest_size=20).hexdigest()


def build_model(comp: Composition, pool: TensorPool, trust_remote_code: bool = False) -> Any:
    """The composed model, in eval mode, every parameter a shared pool tensor (nothing copied)."""
    config = comp.config
    config.dtype = pool.dtype
    model = empty_model(config, trust_remote_code)
    for t in comp.tensors:
        set_parameter(model, comp.state_dict_key(t.name), pool.get(t))
    if comp.tied:  # a tied head is not stored: it is the embedding parameter itself
        out = model.get_output_embeddings()
        if out is not None:
            out.weight = model.get_input_embeddings().weight
    left = [name for name, p in model.named_parameters(remove_duplicate=False) if p.is_meta]
    if left:
        raise BoomerangError(f"internal: weights missing from the composition: {left[:3]}")
    for buf_name, buf in model.named_buffers():
        if buf.device != pool.device:
            module_path, _, attr = buf_name.rpartition(".")
            module = model.get_submodule(module_path) if module_path else model
            module._buffers[attr] = buf.to(pool.device)
    return model.eval()


def storage_pointers(model: nn.Module) -> dict[str, int]:
    """Each parameter's storage address: the same number in two models means one tensor in memory."""
    return {name: p.untyped_storage().data_ptr() for name, p in model.named_parameters(remove_duplicate=False)}
