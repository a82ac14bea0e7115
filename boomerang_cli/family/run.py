"""``boomerang family`` end to end, as one call: resolve, pair, calibrate, check, search, select, build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..orders.calibration import CalibrationSpec
from ..data import DEFAULT_BOS
from ..errors import BoomerangError
from ..manifest import OrderInfo
from ..orders.names import DEFAULT_ORDER
from ..pair import Pair, open_pair
from ..progress import NULL, Progress
from ..state import last
from ..student import BOOMERANG_JSON, recorded_teacher
from .select import Candidate, Pick
from .writer import FamilyResult
from ..units import DEFAULT_MAX_SHARD


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


@dataclass
class FamilyRequest:
    """Everything ``boomerang family`` can be asked; defaults are the CLI's.

    ``teacher``/``student`` None: the short forms (a lone student names its teacher in its
    boomerang.json; neither: the last student init-student/distill recorded here).
    ``output`` None: ``<student>-family`` next to a local student.
    """

    teacher: str | None = None
    student: str | None = None
    output: Path | None = None
    sizes: str | None = None
    num: int | None = None
    all_members: bool = False
    order: str = DEFAULT_ORDER
    calib_data: Sequence[str] = ()
    calib_samples: int = CalibrationSpec.samples
    calib_seq_len: int = CalibrationSpec.seq_len
    bos: str = DEFAULT_BOS
    beam: int | None = None
    device: str = "auto"
    keep: str | None = None
    force: bool = False
    dtype: str | None = None
    max_shard_size: str = DEFAULT_MAX_SHARD
    overwrite: bool = False
    dry_run: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class FamilyRun:
    """What a family run did: the pair, the order it followed, every achievable member and the picks;
    ``result`` is the written family (None for a dry run)."""

    teacher: str
    student: str
    pair: Pair
    order: OrderInfo
    search_reused: bool
    every: list[Candidate]
    picks: list[Pick]
    result: FamilyResult | None

    @property
    def ref_student(self) -> Candidate:
        return self.every[0]

    @property
    def ref_teacher(self) -> Candidate:
        return self.every[-1]


def make_family(req: FamilyRequest, progress: Progress = NULL) -> FamilyRun:
    """Resolve, open the pair, calibrate, check the output, search, select and build (or plan: dry run).

    Every flag is checked before anything is resolved; the output is checked before minutes of search;
    one writer per family holds ``output`` to the end.
    """
    from ..guard import check_disjoint, local_sources, lock_if
    from ..orders.kl import calibrated_search, calibration_for
    from ..orders.names import check_order
    from ..orders.search import order_info
    from ..plan import Plan
    from ..refs import refuse_conversion_in_dry_run, resolve
    from ..tensors import parse_dtype
    from ..units import parse_size
    from .select import check_selection_args, order_candidates, select
    from .writer import prior_manifest, write_family

    check_order(req.order)
    targets = check_selection_args(req.sizes, req.num, req.all_members, req.dry_run)
    shard = parse_size(req.max_shard_size)
    torch_dtype = parse_dtype(req.dtype) if req.dtype else None
    kept = Plan.parse_keep(req.keep) if req.keep is not None else None
    teacher, student = resolve_pair_refs(req.teacher, req.student)
    if req.dry_run:
        refuse_conversion_in_dry_run(teacher, "teacher")
        refuse_conversion_in_dry_run(student, "student")
    output = req.output
    if output is None and not req.dry_run:
        output = default_output(student)
        if output is None:
            raise BoomerangError(f"student {student} is not a local directory; pass -o DIR for the family")
    with lock_if(output, not req.dry_run):  # one writer per family, held to the end
        t_ref = resolve(teacher, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
        s_ref = resolve(student, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
        spec = calibration_for(
            req.order,
            list(req.calib_data),
            student=student,
            samples=req.calib_samples,
            seq_len=req.calib_seq_len,
            beam=req.beam,
            bos=req.bos,
        )
        pair = open_pair(
            t_ref, s_ref, keep=kept, force=req.force, dtype=torch_dtype, trust_remote_code=req.trust_remote_code
        )
        if spec is not None and output is not None and not req.dry_run:
            check_disjoint(output, local_sources(spec.sources))  # the family's own inputs: build_family
        search, info, reused, prior, read = None, OrderInfo(method=req.order), False, None, False
        if spec is not None:
            if output is not None and not req.dry_run:  # family.json read once, before minutes of search
                prior, read = prior_manifest(output, pair, req.order, req.overwrite), True
            search, reused = calibrated_search(
                pair,
                req.order,
                spec,
                beam=req.beam,
                device=req.device,
                prior=prior,
                output=None if req.overwrite or read else output,
                progress=progress,
            )
            info = order_info(search)
        every = order_candidates(pair, req.order, search)
        middle = [c for c in every if not (c.member.is_student or c.member.is_teacher)]
        picks = select(
            middle,
            sizes=targets,
            num=req.num,
            all_members=req.all_members,
            student_params=every[0].num_params,
            teacher_params=every[-1].num_params,
        )
        result = None
        if not req.dry_run:
            assert output is not None
            if not picks:
                raise BoomerangError("no members chosen; use --sizes, --num or --all")
            if not read:
                prior = prior_manifest(output, pair, req.order, req.overwrite)
            result = write_family(
                pair, picks, output, info, prior, max_shard_size=shard, overwrite=req.overwrite, progress=progress
            )
    return FamilyRun(teacher, student, pair, info, reused, every, picks, result)
