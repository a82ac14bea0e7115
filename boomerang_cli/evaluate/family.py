"""``eval`` of a family: its members, teacher and student, pruning baselines and other orders, on one
set of tokens, recorded in the family's manifest."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..arch import ModelInfo
from ..compose import compose
from ..errors import BoomerangError
from ..family.open import check_family_models, load_family_models, member_of, read_complete_manifest, select_names
from ..guard import check_written_file, local_sources
from ..integrity import member_problem
from ..manifest import FamilyManifest
from ..member import Member
from ..models import load_model, load_tokenizer, model_from_composition
from ..progress import NULL, Progress
from . import lmeval
from .baselines import Baseline, block_influence, plan_baselines
from .options import EvalOptions, EvalReport, Row, TrunkInfo, bounded_seq_len, now
from ..forward.perplexity import EvalData, load_eval_data
from .results import perplexity_entry, write_family
from .stacks import stack_perplexities
from ..forward.trunk import LayerRunner, Stack


@dataclass
class _Family:
    """A manifest opened for evaluation: its models on disk and in memory."""

    path: Path
    manifest: FamilyManifest
    infos: dict[str, ModelInfo]
    models: dict[str, Any]
    runners: dict[str, LayerRunner]
    dtype: torch.dtype
    device: torch.device

    def stack(self, name: str) -> Stack:
        n_s = self.manifest.plan.num_student_layers
        if name == "teacher":
            return Stack.whole("teacher", self.manifest.plan.num_teacher_layers)
        if name == "student":
            return Stack.whole("student", n_s)
        return Stack.of_member(member_of(self.manifest, name))

    def build(self, stack: Stack) -> Any:
        """A stack as a standalone model: teacher/student themselves, anything else composed in memory."""
        for role in ("teacher", "student"):
            if stack == Stack.whole(role, self.runners[role].num_layers):
                return self.models[role]
        comp = compose(self.infos, stack.layers, stack.embed_from, stack.head_from)
        return model_from_composition(comp, self.dtype, self.device)


def open_family(path: Path, opts: EvalOptions, members: Sequence[str] | None = None) -> _Family:
    mpath, manifest = read_complete_manifest(path)
    check_written_file(
        opts.plot,
        [
            ("teacher", manifest.teacher.path),
            ("student", manifest.student.path),
            *[(f"member {m.name}", mpath.parent / m.path) for m in manifest.members if m.path],
            *local_sources(opts.sources),
        ],
        "--plot",
    )
    check_member_dirs(mpath, manifest, select_names(manifest, members), opts.verify)
    infos = load_family_models(manifest, mpath.parent)
    check_family_models(manifest, infos)
    dtype, device = opts.dtype, opts.torch_device()
    models = {role: load_model(infos[role], dtype, device, opts.trust_remote_code) for role in ("teacher", "student")}
    runners = {role: LayerRunner(models[role], infos[role].arch.layers_path) for role in models}
    return _Family(mpath, manifest, infos, models, runners, dtype, device)


def check_member_dirs(mpath: Path, manifest: FamilyManifest, names: Sequence[str], full: bool = False) -> None:
    """Results are recorded only for members whose directories are the ones the manifest describes."""
    for name in names:
        if name in ("teacher", "student"):
            continue  # checked by fingerprint (family.open.check_family_models)
        problem = member_problem(mpath.parent, manifest.member(name), full)
        if problem is not None:
            raise BoomerangError(
                f"member {name} of {mpath}: {problem}; rerun `boomerang family` to rewrite it, "
                "or leave it out with --members"
            )


def evaluate_family(
    path: Path,
    opts: EvalOptions,
    members: Sequence[str] | None = None,
    progress: Progress = NULL,
    write: bool = True,
) -> EvalReport:
    """Evaluate a family's members (teacher and student included) and record the results in its manifest."""
    opts.check()
    t0 = time.perf_counter()
    fam = open_family(path, opts, members)
    manifest = fam.manifest
    names = select_names(manifest, members)
    notes: list[str] = []
    tokenizer = load_tokenizer(fam.infos["teacher"].path, opts.trust_remote_code)
    seq_len = bounded_seq_len(opts, fam.infos["teacher"].config, notes)
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}

    stacks: dict[str, Stack] = {name: fam.stack(name) for name in names}
    rows = _member_rows(manifest, names)

    data: EvalData | None = None
    if opts.perplexity:
        t = time.perf_counter()
        data = load_eval_data(
            opts.sources, opts.split, tokenizer, seq_len, opts.max_tokens, opts.text_field, opts.bos, opts.window
        )
        seconds["data"] = time.perf_counter() - t

    if opts.baselines:
        t = time.perf_counter()
        for key, stack, row in _baseline_rows(fam, _plan_baselines(fam, names, opts, tokenizer, seq_len, progress)):
            stacks[key], rows[key] = stack, row
        seconds["calibration"] = time.perf_counter() - t

    searches: dict[str, dict[str, Any]] = {}
    if opts.compare_orders:
        t = time.perf_counter()
        for order in opts.compare_orders:
            order_members, searches[order] = _order_members(fam, order, opts, progress)
            for key, stack, row in _order_rows(fam, order, order_members, searches[order]):
                stacks[key], rows[key] = stack, row
        seconds["orders"] = time.perf_counter() - t

    trunk: TrunkInfo | None = None
    if opts.perplexity:
        assert data is not None
        t = time.perf_counter()
        results, trunk = stack_perplexities(
            stacks, fam.runners, data, opts.batch_size, fam.build, trunk=opts.trunk, dtype=fam.dtype, progress=progress
        )
        seconds["perplexity"] = time.perf_counter() - t
        stamp = now()
        for key, nll in results.items():
            rows[key].perplexity = perplexity_entry(nll, data, fam.dtype, trunk.used, stamp)

    if opts.tasks:
        t = time.perf_counter()
        _run_tasks(rows, stacks, fam.build, tokenizer, opts, fam.device, progress)
        seconds["tasks"] = time.perf_counter() - t

    written = None
    if write:
        write_family(fam.path, rows)
        written = str(fam.path)
    seconds["total"] = time.perf_counter() - t0
    return EvalReport(
        target=str(fam.path),
        kind="family",
        rows=_ordered(rows.values()),
        data=data.describe() if data is not None else None,
        trunk=trunk,
        seconds=seconds,
        written=written,
        device=str(fam.device),
        dtype=str(fam.dtype).removeprefix("torch."),
        tasks=list(opts.tasks),
        notes=notes,
        orders=searches,
    )


def _member_rows(manifest: FamilyManifest, names: Sequence[str]) -> dict[str, Row]:
    """The rows of the family's own models: teacher, student and the members asked for."""
    rows: dict[str, Row] = {}
    for name in names:
        kind = name if name in ("teacher", "student") else "member"
        entry = (
            manifest.teacher if name == "teacher" else manifest.student if name == "student" else manifest.member(name)
        )
        rows[name] = Row(name, kind, entry.num_params, entry.num_layers)
    return rows


def _baseline_rows(fam: _Family, baselines: Sequence[Baseline]) -> Iterator[tuple[str, Stack, Row]]:
    """Each pruning baseline's key, stack and row (its size as the teacher's layers it keeps)."""
    for b in baselines:
        comp = compose(fam.infos, b.stack().layers, "teacher", "teacher")
        row = Row(b.name, "baseline", comp.num_params, b.num_layers, b.method, b.teacher_layers, selection=b.selection)
        yield f"baseline:{b.name}", b.stack(), row


def _order_rows(
    fam: _Family, order: str, members: Sequence[Member], search: Mapping[str, Any]
) -> Iterator[tuple[str, Stack, Row]]:
    """Each member of a compared order: its key, stack and row (its blocks, and its KL when searched)."""
    for m in members:
        comp = m.composition(fam.infos)
        selection = {"teacher_blocks": sorted(m.teacher_blocks), "kl": search.get("kl", {}).get(m.num_layers)}
        row = Row(f"{order}/{m.name}", "order", comp.num_params, m.num_layers, order, selection=selection)
        yield f"order:{order}:{m.name}", Stack.of_member(m), row


def _ordered(rows: Any) -> list[Row]:
    """Family rows student first, members by size, teacher last; then each compared order's
    members by size; baselines last, by size and method."""
    rows = list(rows)
    rank = {"student": 0, "teacher": 2}
    fam = sorted(
        (r for r in rows if r.kind not in ("baseline", "order")),
        key=lambda r: (rank.get(r.kind, 1), r.num_layers, r.num_params, r.name),
    )
    methods = list(dict.fromkeys(r.method for r in rows if r.kind == "order"))
    orders = sorted(
        (r for r in rows if r.kind == "order"), key=lambda r: (methods.index(r.method), r.num_layers, r.num_params)
    )
    base = sorted((r for r in rows if r.kind == "baseline"), key=lambda r: (r.num_layers, r.method or "", r.name))
    return fam + orders + base


def _order_members(
    fam: _Family, order: str, opts: EvalOptions, progress: Progress
) -> tuple[list[Member], dict[str, Any]]:
    """Every member of ``order`` between student and teacher, and how they were chosen.

    A calibrated order reuses the family's own search when the family was built
    with it (same method and beam, no --calib-* given); otherwise it is searched
    here on --calib-data, else the family's calibration data, else the train
    split of the evaluation data (--calib-samples/--calib-seq-len, else the
    family's, else 64 x 128 tokens).
    """
    from ..orders.calibration import CalibrationSpec
    from ..orders.cost import reusable
    from ..orders.kl import search
    from ..orders.names import CALIBRATED_ORDERS, beam_width, sequential_members
    from ..orders.search import order_info, result_from_order_info

    plan = fam.manifest.plan
    if order not in CALIBRATED_ORDERS:
        members = sequential_members(plan, order)
        return [m for m in members if not (m.is_student or m.is_teacher)], {"method": order}
    recorded = fam.manifest.order
    width = beam_width(order, opts.beam if opts.beam is not None else recorded.beam)
    asked = bool(opts.calib_data) or opts.calib_samples is not None or opts.calib_seq_len is not None
    if reusable(recorded, order, width) and not asked:
        result = result_from_order_info(plan, recorded)
        how = "the family's own search"
    else:
        c = recorded.calibration or {}
        if opts.calib_data:
            data, split, field_ = tuple(opts.calib_data), "train", opts.text_field
        elif c.get("data"):
            data, split, field_ = tuple(c["data"]), c.get("split", "train"), c.get("text_field", "text")
        else:
            data, split, field_ = tuple(opts.sources), "train", opts.text_field
        spec = CalibrationSpec(
            data,
            opts.calib_samples or c.get("samples") or CalibrationSpec.samples,
            opts.calib_seq_len or c.get("seq_len") or CalibrationSpec.seq_len,
            split,
            field_,
            opts.bos,
        )
        result = search(
            fam.infos,
            plan,
            order,
            spec,
            beam=width,
            device=fam.device,
            batch_size=opts.batch_size,
            progress=progress,
            loaded=fam.models,
        )
        how = "searched for this comparison"
    info = order_info(result)
    members = [m for m in result.members() if not (m.is_student or m.is_teacher)]
    return members, {
        "method": order,
        "beam": info.beam,
        "calibration": info.calibration,
        "source": how,
        "kl": {s["num_layers"]: s["kl"] for s in info.steps},
    }


def _plan_baselines(
    fam: _Family, names: Sequence[str], opts: EvalOptions, tokenizer: Any, seq_len: int, progress: Progress
) -> list[Baseline]:
    members: list[Member] = [member_of(fam.manifest, n) for n in names]
    if all(m.is_teacher for m in members):
        raise BoomerangError(
            "--baseline prunes the teacher to each member's size; select a member other than the teacher"
        )
    influence = None
    calibration = None
    if "shortgpt" in opts.baselines:
        calib = load_eval_data(
            opts.sources, "train", tokenizer, seq_len, opts.calibration_tokens, opts.text_field, opts.bos
        )
        task = progress.task("block influence (ShortGPT)", calib.num_batches(opts.batch_size), unit="batches")
        influence = block_influence(fam.runners["teacher"], calib, opts.batch_size, on_batch=lambda: task.advance(1))
        progress.finish(task)
        calibration = {
            "calibration": calib.key,
            "calibration_tokens": calib.num_tokens,
            "seq_len": calib.seq_len,
            "bos": calib.bos,
        }
    return plan_baselines(opts.baselines, members, influence, calibration)


def _run_tasks(
    rows: Mapping[str, Row],
    stacks: Mapping[str, Stack],
    build: Callable[[Stack], Any],
    tokenizer: Any,
    opts: EvalOptions,
    device: torch.device,
    progress: Progress,
) -> None:
    manager = lmeval.task_manager(opts.tasks, opts.task_dir)
    task = progress.task("lm-eval tasks", len(stacks), unit="models")
    stamp = now()
    for key, stack in stacks.items():
        task.update(description=f"lm-eval on {rows[key].name}")
        model = build(stack)
        scores = lmeval.run_tasks(
            model,
            tokenizer,
            opts.tasks,
            manager,
            batch_size=opts.batch_size,
            limit=opts.limit,
            num_fewshot=opts.num_fewshot,
            device=str(device),
        )
        for s in scores.values():
            s.setdefault("limit", opts.limit)
            s["evaluated"] = stamp
        rows[key].tasks = scores
        del model
        task.advance(1)
    progress.finish(task)
