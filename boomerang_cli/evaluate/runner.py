"""``eval`` end to end: what to evaluate, on which tokens, and where the results go.

Two kinds of target: a family manifest (its members, teacher and student, and
optionally pruning baselines; results go into the manifest's entries) or plain
model references (results go into a results JSON). Perplexity of a family runs
through the shared trunk (:mod:`.trunk`), checked on the first batch against
one member built as a standalone model; if that check fails, or the
architecture cannot be run layer by layer, every model is evaluated on its own
and the results say ``"trunk": false`` with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import __version__, jsonio
from ..arch import ModelInfo, max_positions
from ..compose import compose
from ..data import DEFAULT_BOS, STDLIB, check_bos_policy
from ..errors import BoomerangError, DataError, UnsupportedArchitectureError
from ..guard import check_disjoint, local_sources
from ..loader import check_family_models, load_family_models, member_of, read_complete_manifest, select_names
from ..manifest import BaselineEntry, FamilyManifest, migrate_metrics_v1, perplexity_key
from ..member import Member
from ..models import attention_mask, load_model, load_tokenizer, model_from_composition, resolve_device
from ..progress import NULL, Progress
from ..tensors import atomic_write_text
from . import lmeval
from .baselines import METHODS, Baseline, block_influence, plan_baselines
from .perplexity import NLL, EvalData, batch_nll, load_eval_data, model_logits, model_nll, relative_difference
from .trunk import LayerRunner, Stack, TrunkEvaluator

RESULTS_FORMAT = "boomerang-eval"
RESULTS_VERSION = 2  # 2: perplexity keyed by manifest.perplexity_key; 1 is migrated on read
DEFAULT_RESULTS = "eval-results.json"
#: Largest relative NLL difference between the trunk and a standalone member on the check batch.
TRUNK_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
TRUNK_TOLERANCE_LOW_PRECISION = 1e-2


@dataclass
class EvalOptions:
    """Everything ``eval`` can be asked; defaults are the CLI's."""

    sources: list[str] = field(default_factory=lambda: [STDLIB])
    split: str = "validation"
    text_field: str = "text"
    seq_len: int = 512
    max_tokens: int = 32768
    bos: str = DEFAULT_BOS  # --bos: BOS in front of every block (data.block_bos)
    batch_size: int = 8
    dtype: torch.dtype = torch.float32
    device: str = "auto"
    trunk: bool = True
    perplexity: bool = True
    tasks: list[str] = field(default_factory=list)
    task_dir: Path | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    baselines: list[str] = field(default_factory=list)
    calibration_tokens: int = 8192
    trust_remote_code: bool = False
    allow_pickle: bool = False
    compare_orders: list[str] = field(default_factory=list)  # every member of each order, in memory
    # Calibrated orders in --compare-orders; None/empty: the family's own calibration, else --data's train split.
    calib_data: list[str] = field(default_factory=list)
    calib_samples: int | None = None
    calib_seq_len: int | None = None
    beam: int | None = None
    verify: bool = False  # members' full checksums, not only their files' sizes

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def check(self) -> None:
        if self.batch_size < 1:
            raise BoomerangError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.seq_len < 2:
            raise BoomerangError(f"--seq-len must be at least 2 (got {self.seq_len})")
        if self.max_tokens < 1:
            raise DataError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.split not in ("train", "validation", "all"):
            raise DataError(f"unknown --split {self.split!r}; use validation (held out), train or all")
        if not self.sources:
            raise DataError("no evaluation data; pass --data (files, a directory, a hub dataset or stdlib)")
        check_bos_policy(self.bos)
        bad = [m for m in self.baselines if m not in METHODS]
        if bad:
            raise BoomerangError(f"unknown baseline {bad[0]!r}; use prune (= {', '.join(METHODS)}) or one of them")
        if not self.perplexity and not self.tasks:
            raise BoomerangError("nothing to evaluate: perplexity is off and no --tasks were given")
        from ..orders import ALL_ORDERS, check_beam

        bad = [o for o in self.compare_orders if o not in ALL_ORDERS]
        if bad:
            raise BoomerangError(f"unknown order {bad[0]!r} in --compare-orders; use {', '.join(ALL_ORDERS)}")
        if self.compare_orders and not self.perplexity:
            raise BoomerangError("--compare-orders compares perplexity; drop --no-perplexity")
        check_beam(self.beam)
        from ..calibrate import check_sizes

        check_sizes(self.calib_samples, self.calib_seq_len)


@dataclass
class Row:
    """One evaluated model and its fresh results."""

    name: str
    kind: str  # teacher | student | member | baseline | model
    num_params: int
    num_layers: int
    method: str | None = None  # baselines: shortgpt | plan-prune
    teacher_layers: list[int] | None = None
    perplexity: dict[str, Any] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    @property
    def ppl(self) -> float | None:
        return None if self.perplexity is None else self.perplexity["ppl"]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "num_params": self.num_params,
                               "num_layers": self.num_layers}
        if self.method:
            out["method"] = self.method
            out["teacher_layers"] = self.teacher_layers
            out["selection"] = self.selection
        out["perplexity"] = self.perplexity
        out["tasks"] = self.tasks
        return out

    def plot_point(self) -> dict[str, Any]:
        tasks = {}
        for task, scores in self.tasks.items():
            primary = lmeval.primary_metric(scores)
            if primary is not None:
                tasks[task] = primary
        return {"name": self.name, "kind": self.kind, "method": self.method, "num_params": self.num_params,
                "num_layers": self.num_layers, "ppl": self.ppl, "tasks": tasks}


@dataclass
class TrunkInfo:
    """How perplexity was computed: shared trunk or member by member, and what the trunk saved."""

    used: bool
    reason: str | None = None
    layer_passes: int | None = None  # decoder layers run per batch through the trunk
    flat_layer_passes: int | None = None  # the same models one by one
    check: dict[str, Any] | None = None  # the first-batch comparison with a standalone member

    def to_json(self) -> dict[str, Any]:
        return {"used": self.used, "reason": self.reason, "layer_passes": self.layer_passes,
                "flat_layer_passes": self.flat_layer_passes, "check": self.check}


@dataclass
class EvalReport:
    target: str
    kind: str  # family | models
    rows: list[Row]
    data: dict[str, Any] | None
    trunk: TrunkInfo | None
    seconds: dict[str, float]
    written: str | None  # manifest or results file updated
    device: str
    dtype: str
    tasks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    orders: dict[str, Any] = field(default_factory=dict)  # --compare-orders: how each order's members were chosen

    @property
    def teacher_ppl(self) -> float | None:
        for r in self.rows:
            if r.kind == "teacher":
                return r.ppl
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "kind": self.kind, "written": self.written, "device": self.device,
            "dtype": self.dtype, "data": self.data, "trunk": self.trunk.to_json() if self.trunk else None,
            "tasks": list(self.tasks), "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": list(self.notes), "orders": self.orders, "results": [r.to_json() for r in self.rows],
        }


# -- loading --------------------------------------------------------------------------


def bounded_seq_len(opts: EvalOptions, config: Any, notes: list[str]) -> int:
    limit = max_positions(config)
    if limit is not None and opts.seq_len > limit:
        notes.append(f"--seq-len {opts.seq_len} is beyond the model's {limit} positions; using {limit}")
        return limit
    return opts.seq_len


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- perplexity of many stacks ----------------------------------------------------------


class TrunkMismatch(Exception):
    """The shared trunk disagreed with a standalone member: do not trust it for this model."""


def _check_key(stacks: Mapping[str, Stack]) -> str:
    """The stack the trunk is checked on: one mixing sources (head and embeddings apart if any), smallest."""
    return min(stacks, key=lambda k: (not stacks[k].mixed, stacks[k].embed_from == stacks[k].head_from,
                                      len(stacks[k].layers)))


def trunk_perplexities(
    stacks: Mapping[str, Stack],
    runners: Mapping[str, LayerRunner],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    tolerance: float,
    progress: Progress = NULL,
) -> tuple[dict[str, NLL], TrunkInfo]:
    """Perplexity of every stack through the prefix tree, checked on the first block.

    The check builds one member (mixing sources, smallest) as a standalone model
    and compares its NLL on the first block with the trunk's; a mismatch beyond
    ``tolerance`` raises :class:`TrunkMismatch`.
    """
    ev = TrunkEvaluator(runners, stacks)
    check_key = _check_key(stacks)
    results = {k: NLL() for k in stacks}
    nb = data.num_batches(batch_size)
    task = progress.task("perplexity (shared trunk)", nb * (ev.layer_passes + len(stacks)), unit="layers")
    check: dict[str, Any] = {}
    for i, (ids, labels, mask) in enumerate(data.batches(batch_size)):
        am = attention_mask(mask)
        batch: dict[str, tuple[float, int]] = {}
        first: list[tuple[float, int]] = []

        def on_leaf(key: str, logits: torch.Tensor) -> None:
            batch[key] = batch_nll(logits, labels)
            if i == 0 and key == check_key:
                first.append(batch_nll(logits[:1], labels[:1]))
            task.advance(1)

        ev.run(ids, am, on_leaf, on_layer=lambda: task.advance(1))
        if i == 0:  # the check: the first block through the standalone model
            model = build(stacks[check_key])
            ref = batch_nll(model_logits(model, ids[:1], mask[:1]), labels[:1])
            del model
            diff = relative_difference(ref[0], first[0][0])
            check = {"member": check_key, "relative_difference": diff, "tolerance": tolerance}
            if not diff <= tolerance:
                raise TrunkMismatch(
                    f"shared trunk disagrees with standalone {check_key} (relative NLL difference "
                    f"{diff:.2e} > {tolerance:.0e})"
                )
        for key, (total, n) in batch.items():
            results[key].add(total, n)
    progress.finish(task)
    return results, TrunkInfo(True, None, ev.layer_passes, ev.flat_passes, check)


def separate_perplexities(
    stacks: Mapping[str, Stack],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    progress: Progress = NULL,
) -> dict[str, NLL]:
    """Perplexity of every stack as its own model, one after the other (nothing shared)."""
    nb = data.num_batches(batch_size)
    task = progress.task("perplexity (member by member)", nb * len(stacks), unit="batches")
    out: dict[str, NLL] = {}
    for key, stack in stacks.items():
        task.update(description=f"perplexity of {key}")
        model = build(stack)
        out[key] = model_nll(model, data, batch_size, on_batch=lambda: task.advance(1))
        del model
    progress.finish(task)
    return out


def stack_perplexities(
    stacks: Mapping[str, Stack],
    runners: Mapping[str, LayerRunner],
    data: EvalData,
    batch_size: int,
    build: Callable[[Stack], Any],
    *,
    trunk: bool,
    dtype: torch.dtype,
    progress: Progress = NULL,
) -> tuple[dict[str, NLL], TrunkInfo]:
    """Shared trunk when asked and it works for this architecture, else member by member (said so)."""
    reason = "disabled (--no-trunk)"
    if trunk:
        tol = TRUNK_TOLERANCE.get(dtype, TRUNK_TOLERANCE_LOW_PRECISION)
        try:
            return trunk_perplexities(stacks, runners, data, batch_size, build, tol, progress)
        except (TrunkMismatch, UnsupportedArchitectureError) as exc:
            reason = str(exc)
    flat = sum(len(s.layers) for s in stacks.values())
    results = separate_perplexities(stacks, data, batch_size, build, progress)
    return results, TrunkInfo(False, reason, None, flat, None)


# -- families ---------------------------------------------------------------------------


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
    check_member_dirs(mpath, manifest, select_names(manifest, members), opts.verify)
    infos = load_family_models(manifest, mpath.parent)
    check_family_models(manifest, infos)
    dtype, device = opts.dtype, opts.torch_device()
    models = {role: load_model(infos[role], dtype, device, opts.trust_remote_code) for role in ("teacher", "student")}
    runners = {role: LayerRunner(models[role], infos[role].arch.layers_path) for role in models}
    return _Family(mpath, manifest, infos, models, runners, dtype, device)


def check_member_dirs(mpath: Path, manifest: FamilyManifest, names: Sequence[str], full: bool = False) -> None:
    """Results are recorded only for members whose directories are the ones the manifest describes."""
    from ..family import member_problem

    for name in names:
        if name in ("teacher", "student"):
            continue  # checked by fingerprint (loader.check_family_models)
        problem = member_problem(mpath.parent, manifest.member(name), full)
        if problem is not None:
            raise BoomerangError(f"member {name} of {mpath}: {problem}; rerun `boomerang family` to rewrite it, "
                                 "or leave it out with --members")


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
    rows: dict[str, Row] = {}
    for name in names:
        kind = name if name in ("teacher", "student") else "member"
        entry = (manifest.teacher if name == "teacher" else manifest.student if name == "student"
                 else manifest.member(name))
        rows[name] = Row(name, kind, entry.num_params, entry.num_layers)

    data: EvalData | None = None
    if opts.perplexity:
        t = time.perf_counter()
        data = load_eval_data(opts.sources, opts.split, tokenizer, seq_len, opts.max_tokens, opts.text_field,
                              opts.bos)
        seconds["data"] = time.perf_counter() - t

    baselines: list[Baseline] = []
    if opts.baselines:
        t = time.perf_counter()
        baselines = _plan_baselines(fam, names, opts, tokenizer, seq_len, progress)
        for b in baselines:
            key = f"baseline:{b.name}"
            stacks[key] = b.stack()
            comp = compose(fam.infos, b.stack().layers, "teacher", "teacher")
            rows[key] = Row(b.name, "baseline", comp.num_params, b.num_layers, b.method, b.teacher_layers,
                            selection=b.selection)
        seconds["calibration"] = time.perf_counter() - t

    searches: dict[str, dict[str, Any]] = {}
    if opts.compare_orders:
        t = time.perf_counter()
        for order in opts.compare_orders:
            members, searches[order] = _order_members(fam, order, opts, progress)
            for m in members:
                key = f"order:{order}:{m.name}"
                stacks[key] = Stack.of_member(m)
                comp = m.composition(fam.infos)
                rows[key] = Row(f"{order}/{m.name}", "order", comp.num_params, m.num_layers, order,
                                selection={"teacher_blocks": sorted(m.teacher_blocks),
                                           "kl": searches[order].get("kl", {}).get(m.num_layers)})
        seconds["orders"] = time.perf_counter() - t

    trunk: TrunkInfo | None = None
    if opts.perplexity:
        assert data is not None
        t = time.perf_counter()
        results, trunk = stack_perplexities(stacks, fam.runners, data, opts.batch_size, fam.build,
                                            trunk=opts.trunk, dtype=fam.dtype, progress=progress)
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
        _write_family(fam.path, rows)
        written = str(fam.path)
    seconds["total"] = time.perf_counter() - t0
    return EvalReport(
        target=str(fam.path), kind="family", rows=_ordered(rows.values()),
        data=data.describe() if data is not None else None, trunk=trunk, seconds=seconds, written=written,
        device=str(fam.device), dtype=str(fam.dtype).removeprefix("torch."), tasks=list(opts.tasks), notes=notes,
        orders=searches,
    )


def _ordered(rows: Any) -> list[Row]:
    """Family rows student first, members by size, teacher last; then each compared order's
    members by size; baselines last, by size and method."""
    rows = list(rows)
    rank = {"student": 0, "teacher": 2}
    fam = sorted((r for r in rows if r.kind not in ("baseline", "order")),
                 key=lambda r: (rank.get(r.kind, 1), r.num_layers, r.num_params, r.name))
    methods = list(dict.fromkeys(r.method for r in rows if r.kind == "order"))
    orders = sorted((r for r in rows if r.kind == "order"),
                    key=lambda r: (methods.index(r.method), r.num_layers, r.num_params))
    base = sorted((r for r in rows if r.kind == "baseline"), key=lambda r: (r.num_layers, r.method or "", r.name))
    return fam + orders + base


def _order_members(fam: _Family, order: str, opts: EvalOptions, progress: Progress) -> tuple[list[Member], dict[str, Any]]:
    """Every member of ``order`` between student and teacher, and how they were chosen.

    A calibrated order reuses the family's own search when the family was built
    with it (same method and beam, no --calib-* given); otherwise it is searched
    here on --calib-data, else the family's calibration data, else the train
    split of the evaluation data (--calib-samples/--calib-seq-len, else the
    family's, else 64 x 128 tokens).
    """
    from ..calibrate import CalibrationSpec, search
    from ..member import sequential_members
    from ..orders import CALIBRATED_ORDERS, beam_width, order_info, result_from_order_info

    plan = fam.manifest.plan
    if order not in CALIBRATED_ORDERS:
        members = sequential_members(plan, order)
        return [m for m in members if not (m.is_student or m.is_teacher)], {"method": order}
    recorded = fam.manifest.order
    width = beam_width(order, opts.beam if opts.beam is not None else recorded.beam)
    asked = bool(opts.calib_data) or opts.calib_samples is not None or opts.calib_seq_len is not None
    if recorded.method == order and recorded.steps and (recorded.beam or 1) == width and not asked:
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
        spec = CalibrationSpec(data, opts.calib_samples or c.get("samples") or CalibrationSpec.samples,
                               opts.calib_seq_len or c.get("seq_len") or CalibrationSpec.seq_len, split, field_,
                               opts.bos)
        result = search(fam.infos, plan, order, spec, beam=width, device=fam.device, batch_size=opts.batch_size,
                        progress=progress, loaded=fam.models)
        how = "searched for this comparison"
    info = order_info(result)
    members = [m for m in result.members() if not (m.is_student or m.is_teacher)]
    return members, {"method": order, "beam": info.beam, "calibration": info.calibration, "source": how,
                     "kl": {s["num_layers"]: s["kl"] for s in info.steps}}


def _plan_baselines(fam: _Family, names: Sequence[str], opts: EvalOptions, tokenizer: Any, seq_len: int,
                    progress: Progress) -> list[Baseline]:
    members: list[Member] = [member_of(fam.manifest, n) for n in names]
    if all(m.is_teacher for m in members):
        raise BoomerangError("--baseline prunes the teacher to each member's size; select a member other than the teacher")
    influence = None
    calibration = None
    if "shortgpt" in opts.baselines:
        calib = load_eval_data(opts.sources, "train", tokenizer, seq_len, opts.calibration_tokens, opts.text_field,
                               opts.bos)
        task = progress.task("block influence (ShortGPT)", calib.num_batches(opts.batch_size), unit="batches")
        influence = block_influence(fam.runners["teacher"], calib, opts.batch_size, on_batch=lambda: task.advance(1))
        progress.finish(task)
        calibration = {"calibration": calib.key, "calibration_tokens": calib.num_tokens, "seq_len": calib.seq_len,
                       "bos": calib.bos}
    return plan_baselines(opts.baselines, members, influence, calibration)


def _run_tasks(rows: Mapping[str, Row], stacks: Mapping[str, Stack], build: Callable[[Stack], Any], tokenizer: Any,
               opts: EvalOptions, device: torch.device, progress: Progress) -> None:
    manager = lmeval.task_manager(opts.tasks, opts.task_dir)
    task = progress.task("lm-eval tasks", len(stacks), unit="models")
    stamp = now()
    for key, stack in stacks.items():
        task.update(description=f"lm-eval on {rows[key].name}")
        model = build(stack)
        scores = lmeval.run_tasks(model, tokenizer, opts.tasks, manager, batch_size=opts.batch_size,
                                  limit=opts.limit, num_fewshot=opts.num_fewshot, device=str(device))
        for t, s in scores.items():
            s.setdefault("limit", opts.limit)
            s["evaluated"] = stamp
        rows[key].tasks = scores
        del model
        task.advance(1)
    progress.finish(task)


def perplexity_entry(nll: NLL, data: EvalData, dtype: torch.dtype, trunk: bool, stamp: str) -> dict[str, Any]:
    """A perplexity result with every setting that identifies it (``manifest.perplexity_key``)."""
    return nll.to_json(data=data.key, seq_len=data.seq_len, bos=data.bos, blocks=data.num_blocks,
                       data_fingerprint=data.fingerprint(), trunk=trunk, dtype=str(dtype).removeprefix("torch."),
                       evaluated=stamp)


def _merge(metrics: dict[str, Any], row: Row) -> dict[str, Any]:
    """Fresh results added to old ones: a perplexity measured another way goes beside, not over."""
    out = dict(metrics)
    if row.perplexity is not None:
        out["perplexity"] = {**out.get("perplexity", {}), perplexity_key(row.perplexity): row.perplexity}
    if row.tasks:
        out["tasks"] = {**out.get("tasks", {}), **row.tasks}
    return out


def _write_family(path: Path, rows: Mapping[str, Row]) -> None:
    """Merge fresh results into the manifest as it is now on disk, atomically."""
    manifest = FamilyManifest.read(path)
    for row in rows.values():
        if row.kind == "teacher":
            manifest.teacher.metrics = _merge(manifest.teacher.metrics, row)
        elif row.kind == "student":
            manifest.student.metrics = _merge(manifest.student.metrics, row)
        elif row.kind == "member":
            entry = manifest.member(row.name)
            entry.metrics = _merge(entry.metrics, row)
        elif row.kind == "order":
            continue  # members of other orders are not part of this family: reported, not recorded
        else:
            old = next((b for b in manifest.baselines if b.name == row.name), None)
            same = old is not None and old.teacher_layers == row.teacher_layers and old.method == row.method
            metrics = _merge(old.metrics if same and old is not None else {}, row)
            if row.selection:
                metrics["selection"] = row.selection
            entry = BaselineEntry(row.name, row.method or "", row.num_layers, row.num_params,
                                  list(row.teacher_layers or []), metrics)
            manifest.baselines = [b for b in manifest.baselines if b.name != row.name] + [entry]
    manifest.baselines.sort(key=lambda b: (b.num_layers, b.method, b.name))
    manifest.write(path)


# -- plain models -----------------------------------------------------------------------


def evaluate_models(
    refs: Sequence[str],
    opts: EvalOptions,
    output: Path | None = None,
    progress: Progress = NULL,
) -> EvalReport:
    """Evaluate model references one by one; results merged into ``output`` (a results JSON)."""
    from ..refs import resolve

    opts.check()
    if opts.baselines:
        raise BoomerangError("--baseline prunes a teacher to its family's member sizes; give a family manifest")
    t0 = time.perf_counter()
    device = opts.torch_device()
    notes: list[str] = []
    rows: list[Row] = []
    described: dict[str, Any] | None = None
    trunk_reason = "plain models share no layers"
    resolved = [resolve(r, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code) for r in refs]
    out = Path(output) if output is not None else Path(DEFAULT_RESULTS)
    check_results_output(out, [("model", r.path) for r in resolved] + local_sources(opts.sources))
    manager = lmeval.task_manager(opts.tasks, opts.task_dir) if opts.tasks else None
    seconds: dict[str, float] = {"perplexity": 0.0, "tasks": 0.0}
    task = progress.task("evaluating models", len(resolved), unit="models")
    for ref in resolved:
        task.update(description=f"evaluating {ref.ref}")
        info = ModelInfo.load(ref.path, opts.trust_remote_code)
        comp = compose({"teacher": info}, Stack.whole("teacher", info.arch.num_layers).layers, "teacher", "teacher")
        row = Row(ref.ref, "model", comp.num_params, info.arch.num_layers)
        model = load_model(info, opts.dtype, device, opts.trust_remote_code)
        tokenizer = load_tokenizer(ref.path, opts.trust_remote_code)
        if opts.perplexity:
            t = time.perf_counter()
            seq_len = bounded_seq_len(opts, info.config, notes)
            data = load_eval_data(opts.sources, opts.split, tokenizer, seq_len, opts.max_tokens, opts.text_field,
                                  opts.bos)
            nll = model_nll(model, data, opts.batch_size)
            row.perplexity = perplexity_entry(nll, data, opts.dtype, False, now())
            described = described or data.describe()
            seconds["perplexity"] += time.perf_counter() - t
        if manager is not None:
            t = time.perf_counter()
            row.tasks = lmeval.run_tasks(model, tokenizer, opts.tasks, manager, batch_size=opts.batch_size,
                                         limit=opts.limit, num_fewshot=opts.num_fewshot, device=str(device))
            for s in row.tasks.values():
                s.setdefault("limit", opts.limit)
            seconds["tasks"] += time.perf_counter() - t
        rows.append(row)
        del model
        task.advance(1)
    progress.finish(task)
    write_results(out, rows, resolved)
    seconds["total"] = time.perf_counter() - t0
    return EvalReport(
        target=", ".join(refs), kind="models", rows=rows, data=described,
        trunk=TrunkInfo(False, trunk_reason) if opts.perplexity else None, seconds=seconds, written=str(out),
        device=str(device), dtype=str(opts.dtype).removeprefix("torch."), tasks=list(opts.tasks), notes=notes,
    )


def check_results_output(path: Path, inputs: Sequence[tuple[str, Any]] = ()) -> None:
    """Refuse a results file ``eval`` could not write, before minutes of evaluation, not after."""
    import os

    path = Path(path)
    check_disjoint(path, inputs)
    if path.is_dir():
        raise BoomerangError(f"-o {path} is a directory; give a results .json file")
    read_results(path)  # an existing file must be a results file this run can merge into
    p = path.absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise BoomerangError(f"-o {path}: cannot write there ({p} is not a writable directory); "
                             "choose another -o")


def read_results(path: Path) -> dict[str, Any]:
    """A results JSON written by ``eval`` for plain models (empty when there is none yet)."""
    path = Path(path)
    if not path.exists():
        return {"format": RESULTS_FORMAT, "schema_version": RESULTS_VERSION, "models": []}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise BoomerangError(f"{path}: not valid JSON ({exc}); pass another --output") from None
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise BoomerangError(f"{path}: not a boomerang eval results file; pass another --output")
    if data.get("schema_version") == 1:  # perplexity keyed by data alone: re-key it
        data["models"] = [{**e, "metrics": migrate_metrics_v1(e.get("metrics", {}))} if isinstance(e, dict) else e
                          for e in data.get("models", [])]
        data["schema_version"] = RESULTS_VERSION
    if data.get("schema_version") != RESULTS_VERSION:
        raise BoomerangError(f"{path}: results schema version {data.get('schema_version')} but this boomerang "
                             f"writes {RESULTS_VERSION}; pass another --output")
    return data


def write_results(path: Path, rows: Sequence[Row], refs: Sequence[Any]) -> None:
    data = read_results(path)
    entries = {e["ref"]: e for e in data.get("models", []) if isinstance(e, dict) and "ref" in e}
    for row, ref in zip(rows, refs):
        old = entries.get(row.name, {})
        entries[row.name] = {
            "ref": row.name, "path": str(ref.path), "num_params": row.num_params, "num_layers": row.num_layers,
            "metrics": _merge(old.get("metrics", {}), row),
        }
    data.update(format=RESULTS_FORMAT, schema_version=RESULTS_VERSION, tool_version=__version__, updated=now(),
                models=sorted(entries.values(), key=lambda e: (e["num_params"], e["ref"])))
    atomic_write_text(path, jsonio.dumps(data, indent=2) + "\n")
