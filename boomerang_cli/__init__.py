"""boomerang: one teacher, a whole family of model sizes (boomerang distillation)."""

__version__ = "0.1.0"
