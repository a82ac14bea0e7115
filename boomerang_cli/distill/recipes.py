"""Named training recipes: the settings ``distill`` starts from before any flag overrides them.

The paper's hyperparameters (peak lr 3e-4, 1% warmup) are tuned for 500 steps
of ~4.2M tokens. Runs of 10^4-10^7 tokens need their own (SPEC section 6): the
``short`` recipe is the winner of the sweep in docs/results.md at the demo's
budget. A flag given explicitly always wins over the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import BoomerangError
from .weights import LossWeights


@dataclass(frozen=True)
class Recipe:
    """Defaults for one kind of run. ``freeze_embeddings`` None: freeze when the teacher ties them."""

    name: str
    lr: float
    warmup: float
    weights: LossWeights
    freeze_embeddings: bool | None
    summary: str
    mix: float = 0.0  # probability that a step trains a random member instead of the student (--mix)

    def loss_weights(
        self,
        ce: float | None = None,
        kl: float | None = None,
        cosine: float | None = None,
        temperature: float | None = None,
    ) -> LossWeights:
        """The recipe's loss weights with the given ones (not None) replacing them."""
        given = {"ce": ce, "kl": kl, "cosine": cosine, "temperature": temperature}
        return replace(self.weights, **{k: v for k, v in given.items() if v is not None})


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        "paper",
        lr=3e-4,
        warmup=0.01,
        weights=LossWeights(),
        freeze_embeddings=None,
        summary="the paper's settings (500 steps of ~4.2M tokens): lr 3e-4, 1% warmup, CE 1 + KL 0.1 + cosine 2",
    ),
    "short": Recipe(
        "short",
        lr=1e-3,
        warmup=0.05,
        weights=LossWeights(),
        freeze_embeddings=None,
        summary="for runs of 10^4-10^7 tokens (docs/results.md sweep): lr 1e-3, 5% warmup, paper loss",
    ),
}
DEFAULT_RECIPE = "paper"


def check_mix(mix: float | None) -> None:
    """``--mix`` is a probability (None: the recipe's)."""
    if mix is not None and not 0.0 <= mix <= 1.0:
        raise BoomerangError(f"--mix must be a probability in [0, 1] (got {mix:g})")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise BoomerangError(f"unknown --recipe {name!r}; use one of {', '.join(RECIPES)}")
    return RECIPES[name]
