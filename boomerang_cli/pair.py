"""The pair: a teacher and a student, checked to belong together, and the plan relating them.

One check for every command that reads both (``family``, ``distill --student``,
``eval`` through the manifest): structural mismatches (layer counts, tensor
shapes) can never be mixed and always fail; identity mismatches (the teacher
recorded with the student, config fields that leave shapes equal) fail unless
the caller allows them, and what was allowed is kept for the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch

from .arch import ModelInfo
from .compose import check_same_family, fingerprint
from .integrity import model_identity
from .errors import BoomerangError, PairMismatchError, PlanError
from .manifest import ModelEntry
from .member import Member
from .plan import Plan
from .refs import ModelRef
from .student import BOOMERANG_JSON, REFERENCE_JSON, StudentRecord, student_plan
from .tensors import DTYPES


@dataclass
class Pair:
    """Teacher and student, checked to belong together, with the plan relating them."""

    teacher_ref: ModelRef
    student_ref: ModelRef
    teacher: ModelInfo
    student: ModelInfo
    plan: Plan
    plan_source: str  # "boomerang.json" | "student_config.json" | "--keep"
    record: StudentRecord | None
    teacher_fingerprint: str
    student_fingerprint: str
    dtype: torch.dtype | None  # what members are saved as; None = as stored
    forced: bool = False
    forced_reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things worth telling the user, not errors
    warnings: list[str] = field(default_factory=list)  # mismatches the caller chose to allow (other_teacher="warn")

    @property
    def models(self) -> dict[str, ModelInfo]:
        return {"teacher": self.teacher, "student": self.student}

    @property
    def inputs(self) -> dict[str, Path]:
        """What an output must not overlap (guard.check_disjoint)."""
        return {"teacher": Path(self.teacher_ref.path), "student": Path(self.student_ref.path)}

    def entry(self, role: str, with_identity: bool = False) -> ModelEntry:
        """The manifest's record of ``role``; ``with_identity``: with its per-file digests
        (hashed once per process, and not at all where a verified record gave them)."""
        ref = self.teacher_ref if role == "teacher" else self.student_ref
        info = self.teacher if role == "teacher" else self.student
        fp = self.teacher_fingerprint if role == "teacher" else self.student_fingerprint
        full = Member(self.plan, frozenset(range(self.plan.num_student_layers)) if role == "teacher" else frozenset())
        return ModelEntry(
            ref=ref.stable_ref,
            path=str(Path(ref.path).resolve()),
            fingerprint=fp,
            num_layers=info.arch.num_layers,
            num_params=full.composition(self.models).num_params,
            identity=model_identity(ref.path) if with_identity else {},
        )


def _storage_dtype(info: ModelInfo) -> str:
    """The dtype most of a model's weights are stored in (safetensors name)."""
    counts: dict[str, int] = {}
    for e in info.weights.entries.values():
        counts[e.dtype] = counts.get(e.dtype, 0) + e.numel
    return max(counts, key=counts.__getitem__)


def shape_problems(teacher: ModelInfo, student: ModelInfo) -> list[str]:
    """Differences that make mixing impossible: tensors missing or of other shapes."""
    ta, sa = teacher.arch, student.arch
    if set(ta.layer_keys) != set(sa.layer_keys):
        only_s = sorted(set(sa.layer_keys) - set(ta.layer_keys))[:2]
        only_t = sorted(set(ta.layer_keys) - set(sa.layer_keys))[:2]
        return [f"layers hold different tensors (student only: {only_s}, teacher only: {only_t})"]
    pairs = [(ta.layer_tensor(0, k), sa.layer_tensor(0, k)) for k in ta.layer_keys]
    pairs += [(k, k) for k in ta.pre + ta.post if k != ta.head]
    pairs.append((ta.head if ta.head_stored else ta.embed, sa.head if sa.head_stored else sa.embed))
    problems: list[str] = []
    for tk, sk in pairs:
        t_name, s_name = teacher.tensor(tk), student.tensor(sk)
        if t_name not in teacher.weights or s_name not in student.weights:
            problems.append(f"{sk} is missing from the {'student' if t_name in teacher.weights else 'teacher'}")
            continue
        ts, ss = teacher.weights.info(t_name).shape, student.weights.info(s_name).shape
        if ts != ss:
            problems.append(f"{sk} has shape {list(ss)} vs teacher {list(ts)}")
    return problems


def open_pair(
    teacher_ref: ModelRef,
    student_ref: ModelRef,
    *,
    keep: Sequence[int] | None = None,
    force: bool = False,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    other_teacher: Literal["error", "warn"] = "error",
    force_flag: str | None = "--force",
) -> Pair:
    """Load teacher and student, find the plan and check they belong together.

    Structural mismatches (layer counts, tensor shapes) can never be mixed and
    always fail. Identity mismatches (the teacher fingerprint recorded with the
    student, architecture or config fields that leave shapes equal) fail unless
    ``force``; what was overridden is kept in ``forced_reasons`` for the manifest.
    ``other_teacher="warn"`` (``distill``: training again from another checkpoint
    of the teacher is legitimate) makes a fingerprint mismatch a warning;
    ``force_flag`` is the flag an error message offers (None: the command has none).
    """

    def mismatch(problems: Sequence[str]) -> PairMismatchError:
        fix = f", or pass {force_flag} to build anyway" if force_flag else ""
        return PairMismatchError(
            f"student {student_ref.ref} does not match teacher {teacher_ref.ref}: "
            f"{'; '.join(problems)}; give the student's own teacher{fix}"
        )

    if Path(teacher_ref.path).resolve() == Path(student_ref.path).resolve():
        raise PairMismatchError(
            f"teacher and student are the same model ({student_ref.ref}); give the student as STUDENT"
        )
    teacher = ModelInfo.load(teacher_ref.path, trust_remote_code)
    student = ModelInfo.load(student_ref.path, trust_remote_code)
    L = teacher.arch.num_layers
    try:
        plan, source, record = _find_plan(teacher_ref, student_ref, L, keep)
    except BoomerangError:
        soft = check_same_family(teacher, student)
        if soft and not force:  # no plan, and other models: the pair is what is wrong
            raise mismatch(soft) from None
        raise
    if plan.num_teacher_layers != L:
        raise PairMismatchError(
            f"the student's plan is for a {plan.num_teacher_layers}-layer teacher but {teacher_ref.ref} "
            f"has {L} layers; give the student's own teacher"
        )
    if student.arch.num_layers != plan.num_student_layers:
        raise PairMismatchError(
            f"student {student_ref.ref} has {student.arch.num_layers} layers but its plan ({source}) keeps "
            f"{plan.num_student_layers} teacher layers ({plan.describe()}); fix the plan (--keep)"
        )
    hard = shape_problems(teacher, student)
    if hard:
        raise PairMismatchError(
            f"student {student_ref.ref} does not fit teacher {teacher_ref.ref}: {'; '.join(hard[:3])}; "
            "tensors of different shapes cannot be mixed" + (f" (not even with {force_flag})" if force_flag else "")
        )
    soft = check_same_family(teacher, student)
    t_fp, s_fp = fingerprint(teacher), fingerprint(student)
    notes: list[str] = []
    warnings: list[str] = []
    if record is not None and record.teacher_fingerprint:
        if record.teacher_fingerprint != t_fp and other_teacher == "warn":
            warnings.append(
                f"student {student_ref.ref} was initialized from a teacher with other weights "
                f"({record.teacher_ref}); using {teacher_ref.ref} anyway"
            )
        elif record.teacher_fingerprint != t_fp:
            soft.insert(
                0,
                f"teacher fingerprint differs from the one recorded in the student's {BOOMERANG_JSON} "
                f"(made from {record.teacher_ref})",
            )
    else:
        notes.append(f"the student records no teacher fingerprint ({source}); checked shapes and config only")
    if soft and not force:
        raise mismatch(soft)
    if dtype is None:
        td, sd = _storage_dtype(teacher), _storage_dtype(student)
        if td != sd:
            dtype = DTYPES[td]
            notes.append(f"teacher is stored as {td} and student as {sd}; members are saved as {td} (see --dtype)")
    return Pair(
        teacher_ref,
        student_ref,
        teacher,
        student,
        plan,
        source,
        record,
        t_fp,
        s_fp,
        dtype,
        forced=force,
        forced_reasons=soft if force else [],
        notes=notes,
        warnings=warnings,
    )


def _find_plan(
    teacher_ref: ModelRef, student_ref: ModelRef, L: int, keep: Sequence[int] | None
) -> tuple[Plan, str, StudentRecord | None]:
    """The plan relating the pair, where it came from, and the student's record."""
    record = StudentRecord.read(student_ref.path)
    if keep is not None:
        plan = Plan.from_keep(L, keep)
        source = "--keep"
        if record is not None and record.plan != plan:
            raise PlanError(
                f"--keep {plan.describe()} contradicts the student's {BOOMERANG_JSON} "
                f"(kept {record.plan.describe()}); drop --keep"
            )
    else:
        if record is not None and record.plan.num_teacher_layers != L:
            raise PairMismatchError(
                f"student {student_ref.ref} was made from a {record.plan.num_teacher_layers}-layer teacher "
                f"({record.teacher_ref}) but {teacher_ref.ref} has {L} layers; give the student's own teacher"
            )
        plan, record = student_plan(Path(student_ref.path), L)
        source = BOOMERANG_JSON if record is not None else REFERENCE_JSON
    return plan, source, record
