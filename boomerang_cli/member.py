"""Members: models built with no training, each block from the teacher or the student.

SPEC section 1 and 4. A member is fully described by its plan and the set of
blocks it takes from the teacher; everything else (layer sources, where the
embeddings and head come from, the config) follows. Which members a family
has (the orders) is :mod:`boomerang_cli.orders`' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .errors import BoomerangError
from .plan import Plan

if TYPE_CHECKING:  # torch behind them; orders and flag defaults import this module
    from .arch import ModelInfo
    from .compose import Composition, LayerSource


@dataclass(frozen=True)
class Member:
    """One model of the family: ``teacher_blocks`` come from the teacher, the rest from the student."""

    plan: Plan
    teacher_blocks: frozenset[int]

    @classmethod
    def of(cls, plan: Plan, teacher_blocks: Iterable[int]) -> "Member":
        blocks = frozenset(int(b) for b in teacher_blocks)
        bad = [b for b in blocks if not 0 <= b < plan.num_student_layers]
        if bad:
            raise BoomerangError(f"block {bad[0]} does not exist; the plan has {plan.num_student_layers} blocks")
        return cls(plan, blocks)

    def source(self, block: int) -> str:
        return "teacher" if block in self.teacher_blocks else "student"

    @property
    def layers(self) -> tuple[LayerSource, ...]:
        from .compose import LayerSource

        out: list[LayerSource] = []
        for b in self.plan.blocks:
            if b.index in self.teacher_blocks:
                out.extend(LayerSource("teacher", j) for j in b.teacher_layers)
            else:
                out.append(LayerSource("student", b.index))
        return tuple(out)

    @property
    def embed_from(self) -> str:
        """Embeddings come from whichever model supplies block 0."""
        return self.source(0)

    @property
    def head_from(self) -> str:
        """Final norm and head come from whichever model supplies the last block."""
        return self.source(self.plan.num_student_layers - 1)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_student(self) -> bool:
        return not self.teacher_blocks

    @property
    def is_teacher(self) -> bool:
        return len(self.teacher_blocks) == self.plan.num_student_layers

    @property
    def patched(self) -> tuple[int, ...]:
        """Patchable blocks taken from the teacher (what changes the size)."""
        return tuple(b.index for b in self.plan.patchable_blocks if b.index in self.teacher_blocks)

    @property
    def name(self) -> str:
        if self.is_student:
            return "student"
        if self.is_teacher:
            return "teacher"
        return f"member-{self.num_layers:02d}L"

    def composition(self, models: Mapping[str, ModelInfo], **kw: Any) -> Composition:
        from .compose import compose

        return compose(models, self.layers, self.embed_from, self.head_from, **kw)

    def to_json(self) -> dict[str, Any]:
        return {
            "teacher_blocks": sorted(self.teacher_blocks),
            "layers": [ls.to_json() for ls in self.layers],
            "embed_from": self.embed_from,
            "head_from": self.head_from,
        }
