"""The loss terms' weights (SPEC section 3): a plain record, so flags and recipes need no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import BoomerangError


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms (SPEC section 3 defaults); a weight of 0 switches a term off."""

    ce: float = 1.0
    kl: float = 0.1
    cosine: float = 2.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ce", "kl", "cosine"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise BoomerangError(f"--{name.replace('cosine', 'cos')}-weight must be a finite number >= 0 (got {v})")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise BoomerangError(f"--temperature must be > 0 (got {self.temperature})")
        if self.ce == 0 and self.kl == 0 and self.cosine == 0:
            raise BoomerangError("every loss term is switched off; keep at least one of CE, KL and cosine")

    def to_json(self) -> dict[str, float]:
        return {"ce": self.ce, "kl": self.kl, "cosine": self.cosine, "temperature": self.temperature}
