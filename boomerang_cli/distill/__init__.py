"""Distillation of a boomerang student from its teacher (SPEC section 3).

Bottom up: :mod:`.weights` and :mod:`.losses` (the aligned loss), :mod:`.recipes`
(named defaults), :mod:`.model` (student and teacher wrappers), :mod:`.metrics`,
:mod:`.checkpoint` (the run directory), :mod:`.config` (what a run is asked and
reports), :mod:`.step` (one global batch), :mod:`.output` (the student directory),
:mod:`.setup` (a run's models, data and optimizer) and :mod:`.train` (the run, top to bottom).

The names below are loaded on first use, so that ``distill.config`` (the flags'
defaults) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import DistillConfig, DistillResult
    from .losses import LogitHead, cosine_sums, head_losses
    from .train import distill
    from .weights import LossWeights

_HOMES = {
    "DistillConfig": "config",
    "DistillResult": "config",
    "LogitHead": "losses",
    "cosine_sums": "losses",
    "head_losses": "losses",
    "distill": "train",
    "LossWeights": "weights",
}

__all__ = ["DistillConfig", "DistillResult", "LogitHead", "LossWeights", "cosine_sums", "distill", "head_losses"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
