"""Students on disk: ``init-student`` (prune a teacher to the layers a plan keeps, SPEC section 2),
the distilled student's directory, and ``boomerang.json``, the record both carry."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from . import __version__
from .arch import ModelInfo
from .compose import LayerSource, compose, fingerprint, model_card, write_model_dir
from .errors import BoomerangError
from .guard import check_disjoint
from .plan import Plan
from .progress import NULL, Progress
from .provenance import copy_aux_files
from .refs import ModelRef
from .atomic import atomic_dir, check_output_dir
from .units import DEFAULT_MAX_SHARD

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BOOMERANG_JSON = "boomerang.json"
REFERENCE_JSON = "student_config.json"
RECORD_VERSION = 1


@dataclass
class StudentRecord:
    """What ``boomerang.json`` says about a student: how it relates to its teacher."""

    plan: Plan
    teacher_ref: str
    teacher_fingerprint: str | None
    tool_version: str = __version__
    training: dict[str, Any] | None = None

    def files(self) -> dict[str, Any]:
        """The JSON files every student directory holds: this record and the reference code's plan."""
        return {BOOMERANG_JSON: self.to_json(), REFERENCE_JSON: self.plan.reference_student_config()}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": "boomerang-student",
            "version": RECORD_VERSION,
            "tool_version": self.tool_version,
            "teacher": {"ref": self.teacher_ref, "fingerprint": self.teacher_fingerprint},
            "plan": self.plan.to_json(),
        }
        if self.training is not None:
            data["training"] = self.training
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StudentRecord":
        return cls(
            plan=Plan.from_json(data["plan"]),
            teacher_ref=data["teacher"]["ref"],
            teacher_fingerprint=data["teacher"].get("fingerprint"),
            tool_version=data.get("tool_version", "?"),
            training=data.get("training"),
        )

    @classmethod
    def read(cls, directory: Path) -> "StudentRecord | None":
        path = Path(directory) / BOOMERANG_JSON
        if not path.exists():
            return None
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise BoomerangError(f"{path}: unreadable boomerang.json ({exc}); re-create the student") from None


def recorded_teacher(directory: Path | str) -> str | None:
    """The teacher a student directory's boomerang.json names (None: no record, or not a directory)."""
    path = Path(directory).expanduser()
    rec = StudentRecord.read(path) if path.is_dir() else None
    return rec.teacher_ref if rec is not None else None


def distilled_on(directory: Path | str) -> tuple[list[str], str, list[float] | None]:
    """The data sources a student was distilled on, their text field and their weights (``--data-weights``;
    None: read one after the other), from its boomerang.json; ``[]`` if none."""
    path = Path(directory).expanduser()
    rec = StudentRecord.read(path) if path.is_dir() else None
    config = ((rec.training or {}).get("config") or {}) if rec is not None else {}
    weights = config.get("data_weights")
    return list(config.get("data") or []), config.get("text_field") or "text", list(weights) if weights else None


def student_plan(directory: Path, num_teacher_layers: int) -> tuple[Plan, StudentRecord | None]:
    """The plan of a student from boomerang.json, else the reference student_config.json."""
    rec = StudentRecord.read(directory)
    if rec is not None:
        return rec.plan, rec
    ref = Path(directory) / REFERENCE_JSON
    if ref.exists():
        return Plan.from_reference_student_config(ref, num_teacher_layers), None
    raise BoomerangError(
        f"{directory}: no boomerang.json or student_config.json says which teacher layers it "
        "keeps; pass --keep 0,2,4,... with the plan"
    )


@dataclass
class StudentSummary:
    output: str | None
    teacher: str
    plan: Plan
    num_params: int
    teacher_params: int
    dry_run: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "teacher": self.teacher,
            "dry_run": self.dry_run,
            "notes": list(self.notes),
            "kept": list(self.plan.kept),
            "pruned": list(self.plan.pruned),
            "num_teacher_layers": self.plan.num_teacher_layers,
            "num_student_layers": self.plan.num_student_layers,
            "blocks": [[b.start, b.end] for b in self.plan.blocks],
            "num_patchable_blocks": len(self.plan.patchable_blocks),
            "num_params": self.num_params,
            "teacher_params": self.teacher_params,
        }


def gguf_dry_run(teacher: str, gguf: Path, plan_for: Any, output: Path | None) -> StudentSummary:
    """``init-student --dry-run`` on a GGUF teacher not converted yet: the plan and sizes from the
    GGUF header alone (nothing converted, nothing written), and a note that the real run converts.

    ``plan_for(num_layers)`` builds the plan once the layer count is known.
    """
    from .refs import gguf_layout

    num_layers, numel = gguf_layout(gguf)
    plan = plan_for(num_layers)
    if plan.num_teacher_layers != num_layers:
        raise BoomerangError(f"plan is for {plan.num_teacher_layers} teacher layers but the teacher has {num_layers}")
    kept = {f"blk.{k}." for k in plan.kept}
    in_layer = [n for n in numel if n.startswith("blk.")]
    student = sum(v for n, v in numel.items() if not n.startswith("blk.")) + sum(
        numel[n] for n in in_layer if any(n.startswith(k) for k in kept)
    )
    note = (
        f"{gguf.name} is a GGUF file not converted yet; the plan and sizes come from its header. "
        "The real run (without --dry-run) converts it once into the cache, then writes the student"
    )
    return StudentSummary(str(output) if output else None, teacher, plan, student, sum(numel.values()), True, [note])


def init_student(
    teacher_ref: ModelRef,
    plan: Plan,
    output: Path | None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    dry_run: bool = False,
    teacher: ModelInfo | None = None,
    progress: Progress = NULL,
) -> StudentSummary:
    """Stream the kept teacher layers, renumbered, into a standard HF directory."""
    teacher = teacher or ModelInfo.load(teacher_ref.path)
    if plan.num_teacher_layers != teacher.arch.num_layers:
        raise BoomerangError(
            f"plan is for {plan.num_teacher_layers} teacher layers but the teacher has {teacher.arch.num_layers}"
        )
    comp = compose(
        {"teacher": teacher}, [LayerSource("teacher", k) for k in plan.kept], "teacher", "teacher", dtype=dtype
    )
    t_params = compose(
        {"teacher": teacher}, [LayerSource("teacher", k) for k in range(plan.num_teacher_layers)], "teacher", "teacher"
    ).num_params
    summary = StudentSummary(str(output) if output else None, teacher_ref.ref, plan, comp.num_params, t_params, dry_run)
    if dry_run:
        return summary
    if output is None:
        raise BoomerangError("no output directory; pass -o DIR")
    check_output_dir(Path(output), overwrite)
    check_disjoint(output, {"teacher": teacher.path})
    # A local teacher is recorded by absolute path so later steps find it from any directory.
    record = StudentRecord(plan, teacher_ref.stable_ref, fingerprint(teacher))
    meta = teacher_ref.card_metadata()
    card = model_card(
        f"{Path(output).name}: boomerang student of {teacher_ref.public_name}",
        meta["base_models"],
        f"Initialized by `boomerang init-student` (boomerang {__version__}) from "
        f"{plan.num_student_layers} of the teacher's {plan.num_teacher_layers} layers "
        f"(kept: {plan.describe()}). Each student layer stands for a block of teacher "
        f"layers; distill it with `boomerang distill`, then build every intermediate size "
        f"with `boomerang family`.\n\nParameters: {comp.num_params:,}.",
        license=meta["license"],
    )
    total = sum(t.out_nbytes for t in comp.tensors)
    task = progress.task("writing student", total, unit="B")
    with atomic_dir(Path(output), overwrite) as tmp:
        write_model_dir(
            tmp,
            comp,
            teacher.path,
            card,
            record.files(),
            max_shard_size,
            task.advance,
        )
    progress.finish(task)
    return summary


def write_trained_student(
    output: Path,
    model: PreTrainedModel,
    state_dict: dict[str, torch.Tensor],
    record: StudentRecord,
    card: str,
    *,
    aux_from: Path,
    dtype: torch.dtype | None = None,
    max_shard_size: int = 5 * 10**9,
    overwrite: bool = False,
    extra_files: Sequence[Path] = (),
) -> None:
    """A trained student (weights in memory) as a standard HF directory, atomically.

    ``save_pretrained`` writes the weights and config (it knows which trained
    tensors are tied); the tokenizer files come from ``aux_from``; the card and
    the record are the same as ``init-student`` writes.
    """
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    with atomic_dir(Path(output), overwrite) as tmp:
        copy_aux_files(aux_from, tmp)
        from safetensors import SafetensorError

        try:
            model.save_pretrained(str(tmp), state_dict=state_dict, max_shard_size=max_shard_size)
        except (RuntimeError, SafetensorError) as exc:  # a full disk, as safetensors/torch report it
            raise BoomerangError(
                f"cannot write {output} ({str(exc).splitlines()[0][:160]}); free disk space or choose another -o"
            ) from None
        if dtype is not None:
            cfg_path = tmp / "config.json"
            data = json.loads(cfg_path.read_text())
            data["dtype"] = str(dtype).removeprefix("torch.")
            cfg_path.write_text(json.dumps(data, indent=2) + "\n")
        (tmp / "README.md").write_text(card, errors="backslashreplace")  # a file name that is not UTF-8
        for name, data in record.files().items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        for extra in extra_files:
            if Path(extra).exists():
                shutil.copy2(extra, tmp / Path(extra).name)


@dataclass
class StudentRequest:
    """Everything ``boomerang init-student`` can be asked; defaults are the CLI's (``keep``: explicit
    kept layers, else the paper's ``keep_first``/``every``/``keep_last`` rule)."""

    teacher: str
    output: Path | None = None
    keep: str | None = None
    keep_first: int = 1
    every: int = 2
    keep_last: int = 2
    dtype: str | None = None
    max_shard_size: str = DEFAULT_MAX_SHARD
    overwrite: bool = False
    dry_run: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class StudentRun:
    summary: StudentSummary
    teacher_ref: ModelRef | None  # None: a dry run planned from a GGUF header, nothing resolved


def make_student(req: StudentRequest, progress: Progress = NULL) -> StudentRun:
    """Check the flags and the output, resolve the teacher, plan and write (or plan: dry run) the student."""
    from .guard import lock_if
    from .refs import pending_gguf, resolve
    from .tensors import parse_dtype
    from .units import parse_size

    if req.output is None and not req.dry_run:
        raise BoomerangError("no output directory; pass -o DIR (or --dry-run)")
    if req.output is not None and not req.dry_run:
        check_output_dir(req.output, req.overwrite)
    shard = parse_size(req.max_shard_size)
    torch_dtype = parse_dtype(req.dtype) if req.dtype else None

    def plan_for(n: int) -> Plan:
        return Plan.from_flags(n, req.keep, req.keep_first, req.every, req.keep_last)

    gguf = pending_gguf(req.teacher) if req.dry_run else None
    if gguf is not None:  # a dry run converts nothing: the GGUF header says enough
        return StudentRun(gguf_dry_run(req.teacher, gguf, plan_for, req.output), None)
    with lock_if(req.output, not req.dry_run):
        ref = resolve(req.teacher, allow_pickle=req.allow_pickle, trust_remote_code=req.trust_remote_code)
        info = ModelInfo.load(ref.path, req.trust_remote_code)
        summary = init_student(
            ref,
            plan_for(info.arch.num_layers),
            req.output,
            dtype=torch_dtype,
            max_shard_size=shard,
            overwrite=req.overwrite,
            dry_run=req.dry_run,
            teacher=info,
            progress=progress,
        )
    return StudentRun(summary, ref)
