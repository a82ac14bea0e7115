"""Distillation of a boomerang student from its teacher (SPEC section 3).

Bottom up: :mod:`.losses` (the aligned loss), :mod:`.recipes` (named defaults),
:mod:`.model` (student and teacher wrappers), :mod:`.metrics`,
:mod:`.checkpoint` (the run directory), :mod:`.config` (what a run is asked and
reports), :mod:`.step` (one global batch) and :mod:`.train` (the run, top to bottom).
"""

from .config import DistillConfig, DistillResult
from .losses import LogitHead, cosine_sums, head_losses
from .weights import LossWeights
from .train import distill

__all__ = ["DistillConfig", "DistillResult", "LogitHead", "LossWeights", "cosine_sums", "distill", "head_losses"]
