"""``boomerang family`` end to end, as one call: resolve, pair, calibrate, check, search, select, build."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import BoomerangError
from ..state import last
from ..student import BOOMERANG_JSON, recorded_teacher


def default_output(student_ref: str) -> Path | None:
    """``<student>-family`` next to a local student directory; None for hub ids and builtins."""
    p = Path(student_ref).expanduser()
    if not p.is_dir():
        return None
    p = p.resolve()
    return p.parent / f"{p.name}-family"


def resolve_pair_refs(teacher: Optional[str], student: Optional[str]) -> tuple[str, str]:
    """Fill in omitted TEACHER/STUDENT: a lone argument or the last step's student, and its teacher."""
    if teacher is not None and student is not None:
        return teacher, student
    if teacher is not None:  # one positional: it must be a student that names its teacher
        student, lone = teacher, True
    else:
        student, lone = last("student"), False
        if student is None:
            raise BoomerangError(
                "no TEACHER STUDENT given and no earlier init-student/distill recorded a student here; "
                "pass TEACHER STUDENT"
            )
    recorded = recorded_teacher(student)
    if recorded is None:
        if lone:
            raise BoomerangError(
                f"one model given ({student}) and it has no {BOOMERANG_JSON}; a lone argument must be a "
                "student made by init-student/distill, otherwise pass TEACHER STUDENT"
            )
        raise BoomerangError(
            f"the last recorded student {student} has no {BOOMERANG_JSON} naming its teacher; pass TEACHER STUDENT"
        )
    return recorded, student
