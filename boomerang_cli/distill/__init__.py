"""Distillation of a boomerang student from its teacher (SPEC section 3)."""

from .losses import LogitHead, LossWeights, cosine_sums, head_losses
from .train import DistillConfig, DistillResult, distill

__all__ = ["DistillConfig", "DistillResult", "LogitHead", "LossWeights", "cosine_sums", "distill", "head_losses"]
