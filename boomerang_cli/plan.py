"""The plan: which teacher layers the student keeps, and the blocks they stand for.

SPEC section 1-2. Student layer ``i`` is initialized from teacher layer
``kept[i]`` and stands for teacher layers ``[kept[i], kept[i+1])``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import PlanError


@dataclass(frozen=True)
class Block:
    """Teacher layers ``[start, end)`` that student layer ``index`` stands for."""

    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def patchable(self) -> bool:
        """A block of more than one teacher layer: patching it changes the size."""
        return self.size > 1

    @property
    def teacher_layers(self) -> range:
        return range(self.start, self.end)


@dataclass(frozen=True)
class Plan:
    """Sorted teacher layer indices kept in the student, with ``kept[0] == 0``."""

    num_teacher_layers: int
    kept: tuple[int, ...]

    def __post_init__(self) -> None:
        L, kept = self.num_teacher_layers, self.kept
        if L < 2:
            raise PlanError(f"teacher has {L} layer(s); at least 2 are needed to prune")
        if not kept:
            raise PlanError("the plan keeps no layers; pass --keep with at least layer 0")
        if kept[0] != 0:
            raise PlanError(f"kept layers must start at 0 (got {kept[0]}); add 0 to --keep")
        for a, b in zip(kept, kept[1:]):
            if b == a:
                raise PlanError(f"layer {a} is kept twice; list each layer once in --keep")
            if b < a:
                raise PlanError(f"kept layers must be sorted ({a} before {b}); sort --keep")
        if kept[-1] >= L:
            raise PlanError(f"layer {kept[-1]} is out of range for a {L}-layer teacher; use 0..{L - 1}")
        if len(kept) == L:
            raise PlanError("the plan keeps every teacher layer; drop at least one layer")

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_paper_flags(cls, num_layers: int, keep_first: int = 1, every: int = 2, keep_last: int = 2) -> "Plan":
        """The reference code's rule (SPEC section 2), reproduced exactly."""
        L, f, n, l = num_layers, keep_first, every, keep_last
        if f < 1 or n < 2 or l < 0:
            raise PlanError(f"--keep-first must be >= 1, --every >= 2 and --keep-last >= 0 (got {f}, {n}, {l})")
        align: list[int] = []
        k = 1
        while f + k * n - 1 <= L - l:
            align.append(f + k * n - 1)
            k += 1
        cut = {a - i for a in align for i in range(1, n)}
        kept = tuple(i for i in range(L) if i not in cut)
        if len(kept) == L:
            raise PlanError(
                f"--keep-first {f} --every {n} --keep-last {l} prunes nothing from a "
                f"{L}-layer teacher; lower --keep-first/--keep-last"
            )
        return cls(L, kept)

    @classmethod
    def from_keep(cls, num_layers: int, kept: Iterable[int]) -> "Plan":
        return cls(num_layers, tuple(int(k) for k in kept))

    @classmethod
    def from_flags(
        cls, num_layers: int, keep: str | None = None, keep_first: int = 1, every: int = 2, keep_last: int = 2
    ) -> "Plan":
        """The plan the command-line flags ask for: ``--keep`` when given (an empty one is an
        error, not the default plan), else the paper flags."""
        if keep is not None:
            return cls.from_keep(num_layers, cls.parse_keep(keep))
        return cls.from_paper_flags(num_layers, keep_first, every, keep_last)

    @staticmethod
    def parse_keep(text: str) -> list[int]:
        """Parse ``0,2,4`` (ranges like ``0-3`` allowed) from the command line."""
        out: list[int] = []
        if not text.replace(" ", "").replace(",", ""):
            raise PlanError(
                "--keep is empty; list the teacher layers to keep, e.g. --keep 0,2,4,7 "
                "(or leave --keep out for the paper's plan)"
            )
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise PlanError(f"--keep: range {part!r} runs backwards; write it low-high, e.g. {hi}-{lo}")
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise PlanError(f"--keep: {part!r} is not a layer index; use e.g. --keep 0,2,4,7") from None
        return out

    # -- derived ----------------------------------------------------------------------

    @property
    def num_student_layers(self) -> int:
        return len(self.kept)

    @property
    def pruned(self) -> tuple[int, ...]:
        keep = set(self.kept)
        return tuple(i for i in range(self.num_teacher_layers) if i not in keep)

    @property
    def blocks(self) -> tuple[Block, ...]:
        ends = list(self.kept[1:]) + [self.num_teacher_layers]
        return tuple(Block(i, s, e) for i, (s, e) in enumerate(zip(self.kept, ends)))

    @property
    def patchable_blocks(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if b.patchable)

    def aligned_teacher_hidden(self) -> list[int]:
        """Teacher hidden-state index aligned with each student hidden state.

        Student hidden 0 <-> teacher hidden 0; student hidden ``i+1`` <-> teacher
        hidden ``end(block i)`` (SPEC section 3). ``S+1`` entries.
        """
        return [0] + [b.end for b in self.blocks]

    # -- serialization ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "num_teacher_layers": self.num_teacher_layers,
            "kept": list(self.kept),
            "blocks": [[b.start, b.end] for b in self.blocks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        return cls(int(data["num_teacher_layers"]), tuple(int(k) for k in data["kept"]))

    def reference_student_config(self) -> dict[str, Any]:
        """The ``student_config.json`` the paper's reference code writes."""
        return {
            "copied_teacher_layers": list(self.kept),
            "pruned_teacher_layers": list(self.pruned),
            "num_teacher_layers": self.num_teacher_layers,
        }

    @classmethod
    def from_reference_student_config(cls, path: Path, num_teacher_layers: int) -> "Plan":
        try:
            data = json.loads(Path(path).read_text())
            kept: Sequence[int] = data["copied_teacher_layers"]
        except (OSError, ValueError, KeyError) as exc:
            raise PlanError(f"{path}: not a reference student_config.json with copied_teacher_layers ({exc})") from None
        return cls(int(data.get("num_teacher_layers", num_teacher_layers)), tuple(kept))

    def describe(self) -> str:
        return ",".join(str(k) for k in self.kept)
