"""``boomerang family``: pick members, check the pair, stream members to disk, write the manifest.

SPEC sections 1 and 4. A family is teacher + student + plan + the members
built + ``family.json``. Members are written one by one, each atomically and
tensor by tensor from the teacher's and student's files (never a whole model in
memory); the manifest is rewritten after every member with its file checksums,
so rerunning an interrupted command verifies what is on disk and writes only
what is missing.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from . import __version__
from .arch import ModelInfo
from .compose import Composition, check_same_family, fingerprint, model_card, write_model_dir
from .data import public_sources
from .errors import BoomerangError, OutputExistsError, PairMismatchError, PlanError
from .guard import check_disjoint
from .manifest import MANIFEST_NAME, FamilyManifest, MemberEntry, ModelEntry, OrderInfo
from .member import Member, sequential_members
from .orders import ALL_ORDERS, CALIBRATED_ORDERS, SearchResult, beam_width, check_order, result_from_order_info
from .plan import Plan
from .progress import NULL, Progress
from .refs import ModelRef
from .student import BOOMERANG_JSON, REFERENCE_JSON, StudentRecord, student_plan
from .tensors import DTYPES, atomic_dir

if TYPE_CHECKING:
    from .calibrate import CalibrationSpec

# -- sizes ------------------------------------------------------------------------------

SIZE_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([KMBT]?)", re.IGNORECASE)


@dataclass(frozen=True)
class SizeTarget:
    """One ``--sizes`` entry: the text as written and the parameter count it means."""

    label: str
    params: int


def parse_size_targets(text: str) -> list[SizeTarget]:
    """``"2B,3.5M,500K"`` -> targets (decimal K/M/B/T suffixes, as model names use)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise BoomerangError("--sizes is empty; write sizes like --sizes 2B,3B,5B")
    out: list[SizeTarget] = []
    for part in parts:
        m = _SIZE_RE.fullmatch(part.replace("_", ""))
        if not part or not m:
            raise BoomerangError(
                f"cannot read size {part!r} in --sizes; write parameter counts like 2B,350M,500K"
            )
        value = round(float(m.group(1)) * SIZE_SUFFIXES[m.group(2).upper()])
        if value <= 0:
            raise BoomerangError(f"size {part!r} in --sizes is not a positive parameter count")
        out.append(SizeTarget(part, value))
    return out


def parse_sizes(text: str) -> list[int]:
    """``"2B,3.5M,500K"`` -> ``[2_000_000_000, 3_500_000, 500_000]``."""
    return [t.params for t in parse_size_targets(text)]


def format_params(n: float) -> str:
    """A parameter count short enough for a message, precise enough to act on (4 digits)."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.4g}{unit}"
    return str(int(n))


# -- the pair ---------------------------------------------------------------------------


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

    @property
    def models(self) -> dict[str, ModelInfo]:
        return {"teacher": self.teacher, "student": self.student}

    @property
    def inputs(self) -> dict[str, Path]:
        """What an output must not overlap (guard.check_disjoint)."""
        return {"teacher": Path(self.teacher_ref.path), "student": Path(self.student_ref.path)}

    def entry(self, role: str) -> ModelEntry:
        ref = self.teacher_ref if role == "teacher" else self.student_ref
        info = self.teacher if role == "teacher" else self.student
        fp = self.teacher_fingerprint if role == "teacher" else self.student_fingerprint
        full = Member(self.plan, frozenset(range(self.plan.num_student_layers)) if role == "teacher"
                      else frozenset())
        return ModelEntry(
            ref=ref.stable_ref, path=str(Path(ref.path).resolve()), fingerprint=fp,
            num_layers=info.arch.num_layers, num_params=full.composition(self.models).num_params,
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
) -> Pair:
    """Load teacher and student, find the plan and check they belong together.

    Structural mismatches (layer counts, tensor shapes) can never be mixed and
    always fail. Identity mismatches (the teacher fingerprint recorded with the
    student, architecture or config fields that leave shapes equal) fail unless
    ``force``; what was overridden is kept in ``forced_reasons`` for the manifest.
    """
    if Path(teacher_ref.path).resolve() == Path(student_ref.path).resolve():
        raise PairMismatchError(f"teacher and student are the same model ({student_ref.ref}); give the student as STUDENT")
    teacher = ModelInfo.load(teacher_ref.path, trust_remote_code)
    student = ModelInfo.load(student_ref.path, trust_remote_code)
    L = teacher.arch.num_layers
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
            "tensors of different shapes cannot be mixed (not even with --force)"
        )
    soft = check_same_family(teacher, student)
    t_fp, s_fp = fingerprint(teacher), fingerprint(student)
    notes: list[str] = []
    if record is not None and record.teacher_fingerprint:
        if record.teacher_fingerprint != t_fp:
            soft.insert(0, f"teacher fingerprint differs from the one recorded in the student's {BOOMERANG_JSON} "
                           f"(made from {record.teacher_ref})")
    else:
        notes.append(f"the student records no teacher fingerprint ({source}); checked shapes and config only")
    if soft and not force:
        raise PairMismatchError(
            f"student {student_ref.ref} does not match teacher {teacher_ref.ref}: {'; '.join(soft)}; "
            "give the student's own teacher, or pass --force to build anyway"
        )
    if dtype is None:
        td, sd = _storage_dtype(teacher), _storage_dtype(student)
        if td != sd:
            dtype = DTYPES[td]
            notes.append(f"teacher is stored as {td} and student as {sd}; members are saved as {td} (see --dtype)")
    return Pair(teacher_ref, student_ref, teacher, student, plan, source, record, t_fp, s_fp, dtype,
                forced=force, forced_reasons=soft if force else [], notes=notes)


# -- candidates and selection -----------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One achievable member of an order, with its size as saved."""

    member: Member
    num_params: int
    tied: bool
    step: int  # position in the order: 0 = student

    @property
    def name(self) -> str:
        return self.member.name


def achievable(pair: Pair, order: str, search: SearchResult | None = None) -> list[Candidate]:
    """Student, every member of ``order`` and the teacher, smallest first (SPEC section 4).

    A calibrated order's members are those its ``search`` chose, one per layer count.
    """
    check_order(order)
    if order in CALIBRATED_ORDERS:
        if search is None or search.method != order:
            raise BoomerangError(f"--order {order} chooses members from calibration data; run its search first")
        # The ends are always the student and the teacher; a member as deep as the
        # student (a singleton block patched) may sit beside it if the search chose it.
        ends = Member(pair.plan, frozenset()), Member(pair.plan, frozenset(range(pair.plan.num_student_layers)))
        members = [ends[0]] + [m for m in search.members() if m not in ends] + [ends[1]]
    else:
        members = sequential_members(pair.plan, order)
    out = []
    for step, m in enumerate(members):
        comp = m.composition(pair.models)
        out.append(Candidate(m, comp.num_params, comp.tied, step))
    return out


def candidates(pair: Pair, order: str, search: SearchResult | None = None) -> list[Candidate]:
    """The members ``family`` can write: those strictly between student and teacher."""
    return [c for c in achievable(pair, order, search) if not (c.member.is_student or c.member.is_teacher)]


def calibrated_search(
    pair: Pair,
    method: str,
    spec: CalibrationSpec,
    *,
    beam: int | None = None,
    device: str = "auto",
    output: Path | None = None,
    progress: Progress = NULL,
) -> tuple[SearchResult, bool]:
    """The ``kl-greedy``/``beam`` search for this pair, and whether it was reused.

    A family already in ``output`` built from the same teacher, student, method,
    beam and calibration settings carries its search in the manifest: reused, so
    a resumed or repeated ``family`` does not score every candidate again.
    """
    from .calibrate import search
    from .models import resolve_device

    if method not in CALIBRATED_ORDERS:
        raise BoomerangError(f"{method!r} is not a calibrated order; use one of {', '.join(CALIBRATED_ORDERS)}")
    width = beam_width(method, beam)
    spec.check()
    if output is not None and (Path(output) / MANIFEST_NAME).is_file():
        try:
            prior = FamilyManifest.read(Path(output) / MANIFEST_NAME)
        except BoomerangError:
            prior = None
        if (prior is not None and prior.order.method == method and prior.order.steps
                and (prior.order.beam or 1) == width and spec.same_as(prior.order.calibration)
                and prior.teacher.fingerprint == pair.teacher_fingerprint
                and prior.student.fingerprint == pair.student_fingerprint and prior.plan == pair.plan):
            return result_from_order_info(pair.plan, prior.order), True
    result = search(pair.models, pair.plan, method, spec, beam=width, device=resolve_device(device),
                    progress=progress)
    return result, False


@dataclass
class Pick:
    """A chosen member and the ``--sizes`` targets that chose it (empty for --num/--all)."""

    candidate: Candidate
    targets: list[SizeTarget] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.candidate.name


def check_selection_args(sizes: str | None, num: int | None, all_members: bool, dry_run: bool) -> list[SizeTarget] | None:
    """Exactly one of --sizes/--num/--all (none is fine for --dry-run); sizes parsed early."""
    given = [n for n, v in (("--sizes", sizes is not None), ("--num", num is not None), ("--all", all_members)) if v]
    if len(given) > 1:
        raise BoomerangError(f"{' and '.join(given)} exclude each other; choose members one way")
    if not given and not dry_run:
        raise BoomerangError("choose members with --sizes 2B,3B, --num N or --all (or look first with --dry-run)")
    if num is not None and num < 1:
        raise BoomerangError(f"--num {num}: ask for at least one member")
    return parse_size_targets(sizes) if sizes is not None else None


def select(
    cands: Sequence[Candidate],
    *,
    sizes: Sequence[SizeTarget] | None = None,
    num: int | None = None,
    all_members: bool = False,
    student_params: int,
    teacher_params: int,
) -> list[Pick]:
    """Members for ``--sizes`` (closest count, within the family's range), ``--num`` or ``--all``.

    Targets landing on one member give one pick with all of them, written once.
    """
    if not cands and (sizes or num or all_members):
        raise BoomerangError(
            "this plan and order give no member between student and teacher; try the other --order"
        )
    if sizes is not None:
        # Sizes are saved sizes, and a family spans [student, teacher]: a member that
        # outgrows the teacher (untied: a second embedding matrix) is never picked.
        lo, hi = sorted((student_params, teacher_params))
        fitting = [c for c in cands if lo <= c.num_params <= hi]
        bigger = [c for c in cands if c.num_params > hi]
        hint = (f"; {len(bigger)} member(s) are larger than the teacher because they are saved untied, "
                "distill the student with --freeze-embeddings to keep them tied" if bigger else "")
        picks: dict[str, Pick] = {}
        for t in sizes:
            if not lo <= t.params <= hi:
                raise BoomerangError(
                    f"size {t.label} ({t.params:,}) is outside this family's range {format_params(lo)}.."
                    f"{format_params(hi)} (student {student_params:,} .. teacher {teacher_params:,}); "
                    f"ask for sizes in between{hint}"
                )
            if not fitting:
                raise BoomerangError(f"no member of this family lies between the student and the teacher in "
                                     f"size{hint or '; try another --order'}")
            best = min(fitting, key=lambda c: (abs(c.num_params - t.params), c.num_params))
            picks.setdefault(best.name, Pick(best)).targets.append(t)
        return sorted(picks.values(), key=lambda p: p.candidate.step)
    if num is not None:
        m = len(cands)
        if num > m:
            raise BoomerangError(
                f"--num {num} but this order has only {m} member(s) between student and teacher; "
                f"use --num {m} or --all"
            )
        # Evenly spaced along the order: member round(i*(M+1)/(N+1)) for i = 1..N (distinct).
        idx = [(2 * i * (m + 1) + num + 1) // (2 * (num + 1)) - 1 for i in range(1, num + 1)]
        return [Pick(cands[i]) for i in idx]
    if all_members:
        return [Pick(c) for c in cands]
    return []


# -- writing ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def checksums(directory: Path) -> dict[str, str]:
    """``sha256`` of every file of a member directory, by name."""
    return {p.name: sha256_file(p) for p in sorted(Path(directory).iterdir()) if p.is_file()}


def file_sizes(directory: Path) -> dict[str, int]:
    """Bytes of every file of a member directory, by name (recorded beside the checksums)."""
    return {p.name: p.stat().st_size for p in sorted(Path(directory).iterdir()) if p.is_file()}


def member_problem(family_dir: Path, entry: MemberEntry, full: bool = False) -> str | None:
    """Why a member's directory does not match its manifest entry, or None when it does.

    The directory must lie inside the family (no ``../`` path, no symlink out of
    it) and hold every recorded file; by default sizes are compared (cheap), with
    ``full`` every checksum too.
    """
    if not entry.path:
        return "it was never written (no path in the manifest)"
    root = Path(family_dir).resolve()
    d = Path(family_dir) / entry.path
    real = d.resolve()
    if d.is_symlink() or root not in real.parents:
        return f"its directory {entry.path} is a link or path outside the family directory"
    if not d.is_dir():
        return f"its directory {d} is missing"
    if not entry.files:
        return "the manifest records none of its files"
    for name, digest in entry.files.items():
        p = d / name
        if not p.is_file():
            return f"{p} is missing"
        if p.is_symlink() and real not in p.resolve().parents:
            return f"{p} is a link out of the member directory"
        size = entry.sizes.get(name)
        if size is not None and p.stat().st_size != size:
            return f"{p} has {p.stat().st_size} bytes, the manifest says {size}"
        if full and sha256_file(p) != digest:
            return f"{p} does not match its recorded checksum"
    return None


def verify_member(directory: Path, entry: MemberEntry) -> bool:
    """Complete and unchanged: every recorded file exists with its recorded checksum."""
    if not entry.files or not Path(directory).is_dir():
        return False
    for name, digest in entry.files.items():
        p = Path(directory) / name
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return True


def _ranges(xs: Iterable[int]) -> str:
    """``[0,1,2,5,7,8]`` -> ``"0-2,5,7-8"``."""
    xs = sorted(xs)
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out) or "-"


def describe_blocks(member: Member) -> tuple[str, str]:
    """Block indices taken from the teacher and from the student, as ranges."""
    n = member.plan.num_student_layers
    t = [b for b in range(n) if b in member.teacher_blocks]
    s = [b for b in range(n) if b not in member.teacher_blocks]
    return _ranges(t), _ranges(s)


def member_card(pair: Pair, cand: Candidate, comp: Composition, order: OrderInfo) -> str:
    m = cand.member
    how = f"{order.method} order, step {cand.step}"
    if order.method in CALIBRATED_ORDERS:
        kl = next((s["kl"] for s in order.steps if s.get("num_layers") == m.num_layers), None)
        cal = order.calibration or {}
        data = public_sources(cal["data"], cal.get("split")) if cal.get("data") else "calibration data"
        how = (f"{order.method} order{f' (beam {order.beam})' if order.beam else ''}, blocks chosen by KL to the "
               f"teacher on {data}" + (f": KL {kl:.4f}" if kl is not None else ""))
    rows = ["| block | teacher layers | taken from | member layers |", "|---:|---|---|---|"]
    pos = 0
    for b in pair.plan.blocks:
        src = m.source(b.index)
        width = b.size if src == "teacher" else 1
        layers = f"{b.start}" if b.size == 1 else f"{b.start}-{b.end - 1}"
        mine = f"{pos}" if width == 1 else f"{pos}-{pos + width - 1}"
        rows.append(f"| {b.index} | {layers} | {src} | {mine} |")
        pos += width
    tied = "tied" if comp.tied else "untied (both tensors saved)"
    body = (
        f"Built by `boomerang family` (boomerang {__version__}) with no training, from teacher "
        f"{pair.teacher_ref.public_name} and student {pair.student_ref.public_name} (boomerang distillation, "
        f"{how}).\n\n"
        f"- layers: {m.num_layers} (teacher {pair.plan.num_teacher_layers}, student {pair.plan.num_student_layers})\n"
        f"- parameters: {comp.num_params:,}\n"
        f"- embeddings from the {m.embed_from}; final norm and LM head from the {m.head_from}; "
        f"embeddings and head {tied}\n\n" + "\n".join(rows)
    )
    meta = pair.teacher_ref.card_metadata()
    hub = meta["base_models"] + ([pair.student_ref.hub_id] if pair.student_ref.hub_id else [])  # Hub ids only
    return model_card(f"{m.name}: boomerang family member", hub, body, license=meta["license"])


def member_entry(pair: Pair, cand: Candidate, comp: Composition, path: str | None,
                 targets: Sequence[SizeTarget], files: dict[str, str] | None = None) -> MemberEntry:
    m = cand.member
    return MemberEntry(
        name=m.name, path=path, num_params=comp.num_params, num_layers=m.num_layers,
        teacher_blocks=sorted(m.teacher_blocks), layers=[ls.to_json() for ls in m.layers],
        embed_from=m.embed_from, head_from=m.head_from, tied=comp.tied,
        targets=[t.label for t in targets], files=dict(files or {}),
    )


@dataclass
class FamilyResult:
    manifest: FamilyManifest
    manifest_path: Path
    picks: list[Pick]
    written: list[str]
    reused: list[str]
    notes: list[str]


_STALE = re.compile(r"\.(member-\d+L)\.(tmp-.+|old-\d+)|\.family\.json\..+")


def _clean_stale(output: Path) -> None:
    """Remove leftovers of a run killed mid-write (atomic_dir's temp dirs, manifest temp files)."""
    for p in output.iterdir():
        if _STALE.fullmatch(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


DTYPE_LABELS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    """The manifest's name for a dtype, as --dtype spells it."""
    return DTYPE_LABELS.get(dtype, str(dtype)) if dtype is not None else None


def _prior_manifest(output: Path, pair: Pair, order: str, overwrite: bool) -> FamilyManifest | None:
    """The manifest of an earlier run into ``output`` that this run may resume, else None."""
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} exists and is not a directory; choose another -o")
    check_disjoint(output, pair.inputs)
    if not output.is_dir():
        return None
    path = output / MANIFEST_NAME
    if not path.exists():
        leftovers = [p for p in output.iterdir() if not _STALE.fullmatch(p.name)]
        if leftovers and not overwrite:
            raise OutputExistsError(
                f"{output} exists, is not empty and holds no {MANIFEST_NAME}; pass --overwrite or choose another -o"
            )
        return None
    if overwrite:
        return None
    try:
        prior = FamilyManifest.read(path)
    except BoomerangError as exc:
        raise OutputExistsError(f"{exc}; pass --overwrite to rebuild the family in {output}") from None
    diffs = []
    if prior.teacher.fingerprint != pair.teacher_fingerprint:
        diffs.append("teacher")
    if prior.student.fingerprint != pair.student_fingerprint:
        diffs.append("student")
    if prior.plan != pair.plan:
        diffs.append("plan")
    if prior.order.method != order:
        diffs.append(f"order ({prior.order.method})")
    if prior.dtype != _dtype_name(pair.dtype):
        diffs.append(f"dtype ({prior.dtype or 'as stored'})")
    if diffs:
        raise OutputExistsError(
            f"{output} holds a family with another {', '.join(diffs)}; pass --overwrite to rebuild it "
            "or choose another -o"
        )
    return prior


def check_output(pair: Pair, output: Path, order: str, overwrite: bool = False) -> None:
    """Fail now if ``build_family`` would refuse ``output``: before a calibrated search, not after it."""
    check_order(order)
    _prior_manifest(Path(output), pair, order, overwrite)


def build_family(
    pair: Pair,
    picks: Sequence[Pick],
    output: Path,
    *,
    order: str | OrderInfo = "last-first",
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    progress: Progress = NULL,
) -> FamilyResult:
    """Write the picked members and ``output/family.json``; resume an interrupted run.

    ``order`` is a fixed order's name, or the :class:`OrderInfo` of a calibrated
    search (see :func:`calibrated_search`), recorded as is in the manifest.
    Members already recorded in the manifest whose files verify are kept (with
    their metrics); any other member directory is rewritten atomically. The
    manifest is rewritten after each member, ``complete`` only at the end.
    """
    output = Path(output)
    info = order if isinstance(order, OrderInfo) else OrderInfo(method=order)
    check_order(info.method)
    if info.method in CALIBRATED_ORDERS and not info.steps:
        raise BoomerangError(f"order {info.method} needs its search's record (calibrated_search + order_info)")
    if not picks:
        raise BoomerangError("no members chosen; use --sizes, --num or --all")
    prior = _prior_manifest(output, pair, info.method, overwrite)
    # Every check passed: from here on the output directory changes.
    if overwrite and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    _clean_stale(output)
    manifest_path = output / MANIFEST_NAME

    manifest = FamilyManifest(
        teacher=pair.entry("teacher"), student=pair.entry("student"), plan=pair.plan,
        order=info, members=[], forced=pair.forced,
        forced_reasons=list(pair.forced_reasons), dtype=_dtype_name(pair.dtype),
        plan_source=pair.plan_source, complete=False,
    )
    entries: dict[str, MemberEntry] = {}
    if prior is not None:
        manifest.created = prior.created
        manifest.teacher.metrics = prior.teacher.metrics
        manifest.student.metrics = prior.student.metrics
        manifest.baselines = prior.baselines
        entries = {m.name: m for m in prior.members if m.path and (output / m.path).is_dir()}

    def save() -> None:
        manifest.members = sorted(entries.values(), key=lambda e: (e.num_params, e.name))
        manifest.write(manifest_path)

    save()
    comps = {p.name: p.candidate.member.composition(pair.models, dtype=pair.dtype) for p in picks}
    todo: list[Pick] = []
    reused: list[str] = []
    check = [p for p in picks if p.name in entries]
    verify_bytes = sum(sum((output / entries[p.name].path / f).stat().st_size
                           for f in entries[p.name].files if (output / entries[p.name].path / f).is_file())
                       for p in check)
    vtask = progress.task("verifying members", verify_bytes, unit="B") if check else None
    for p in picks:
        prev = entries.get(p.name)
        new = member_entry(pair, p.candidate, comps[p.name], p.name, p.targets)
        same = (prev is not None and prev.path == p.name and prev.layers == new.layers
                and prev.embed_from == new.embed_from and prev.head_from == new.head_from
                and prev.tied == new.tied)
        if same and verify_member(output / p.name, prev):
            prev.targets = prev.targets + [t for t in new.targets if t not in prev.targets]
            reused.append(p.name)
        else:
            entries.pop(p.name, None)
            todo.append(p)
        if vtask is not None and prev is not None:
            vtask.advance(sum((output / prev.path / f).stat().st_size for f in prev.files
                              if prev.path and (output / prev.path / f).is_file()))
    if vtask is not None:
        progress.finish(vtask)
    save()

    total = sum(t.out_nbytes for p in todo for t in comps[p.name].tensors)
    task = progress.task("writing members", total, unit="B")
    written: list[str] = []
    # Checksums read each member back from the page cache. One helper thread does
    # that for member i while member i+1 is written (the copy is kernel work), so
    # hashing costs a second core rather than wall time. A member enters the
    # manifest only once its checksums are in; a directory renamed into place
    # but not yet recorded is simply rewritten by a resumed run.
    pool = ThreadPoolExecutor(1)
    hashing: list[tuple[Pick, Composition, Future]] = []

    def record(block: bool) -> None:
        while hashing and (block or hashing[0][2].done()):
            p, comp, fut = hashing.pop(0)
            entries[p.name] = member_entry(pair, p.candidate, comp, p.name, p.targets, fut.result())
            entries[p.name].sizes = file_sizes(output / p.name)
            written.append(p.name)
            save()

    try:
        for p in todo:
            comp = comps[p.name]
            task.update(description=f"writing {p.name}")
            with atomic_dir(output / p.name, overwrite=True) as tmp:
                write_model_dir(tmp, comp, pair.teacher.path, member_card(pair, p.candidate, comp, info),
                                None, max_shard_size, task.advance)
            hashing.append((p, comp, pool.submit(checksums, output / p.name)))
            record(block=len(hashing) > 1)  # at most one member hashed behind the writer
        record(block=True)
    except BaseException:
        # Interrupted or failed while writing: keep what is complete for the resume.
        try:
            record(block=True)
        except Exception:  # the original error matters more
            pass
        raise
    finally:
        pool.shutdown(wait=True)
    progress.finish(task)
    manifest.complete = True
    save()
    notes = list(pair.notes)
    for p in picks:
        if len(p.targets) > 1:
            notes.append(f"sizes {', '.join(t.label for t in p.targets)} all chose {p.name}; written once")
    return FamilyResult(manifest, manifest_path, list(picks), written, reused, notes)


def dry_run_json(pair: Pair, order: str | OrderInfo, cands: Sequence[Candidate], picks: Sequence[Pick]) -> dict[str, Any]:
    """What ``--dry-run --json`` prints: the manifest this run would write, listing every achievable
    member between student and teacher (``path`` null), plus ``dry_run`` and the ``selected`` names."""
    chosen = {p.name: p for p in picks}
    manifest = FamilyManifest(
        teacher=pair.entry("teacher"), student=pair.entry("student"), plan=pair.plan,
        order=order if isinstance(order, OrderInfo) else OrderInfo(method=order), forced=pair.forced,
        forced_reasons=list(pair.forced_reasons),
        dtype=_dtype_name(pair.dtype), plan_source=pair.plan_source, complete=False,
        members=[
            member_entry(pair, c, c.member.composition(pair.models, dtype=pair.dtype), None,
                         chosen[c.name].targets if c.name in chosen else [])
            for c in cands if not (c.member.is_student or c.member.is_teacher)
        ],
    )
    data = manifest.to_json()
    data["dry_run"] = True
    data["selected"] = [p.name for p in picks]
    return data


def member_summary(c: Candidate) -> dict[str, Any]:
    t, s = describe_blocks(c.member)
    return {"name": c.name, "num_layers": c.member.num_layers, "num_params": c.num_params,
            "teacher_blocks": t, "student_blocks": s, "embed_from": c.member.embed_from,
            "head_from": c.member.head_from, "tied": c.tied, "step": c.step}


__all__ = [
    "SizeTarget", "parse_sizes", "parse_size_targets", "format_params", "Pair", "open_pair",
    "shape_problems", "Candidate", "achievable", "candidates", "Pick", "check_selection_args", "select",
    "build_family", "FamilyResult", "ALL_ORDERS", "check_order", "check_output", "calibrated_search", "verify_member", "member_problem", "checksums", "dry_run_json", "describe_blocks",
    "member_summary",
]
