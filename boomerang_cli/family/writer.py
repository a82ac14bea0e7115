"""Writing a family: members streamed to disk one by one, the manifest after each, resume on rerun.

Each member is written atomically and tensor by tensor from the teacher's and
student's files (never a whole model in memory); the manifest is rewritten
after every member with its file checksums, so rerunning an interrupted
command verifies what is on disk and writes only what is missing.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..compose import Composition, write_model_dir
from ..errors import BoomerangError, OutputExistsError
from ..guard import check_disjoint
from ..integrity import checksums, file_sizes, identity_problem, verify_member
from ..manifest import MANIFEST_NAME, FamilyManifest, MemberEntry, OrderInfo
from ..orders.names import CALIBRATED_ORDERS, DEFAULT_ORDER, check_order
from ..pair import Pair
from ..progress import NULL, Progress
from ..atomic import atomic_dir
from ..tensor_writer import TensorDigests
from ..tensors import dtype_flag
from .card import member_card
from .select import Candidate, Pick, SizeTarget


def member_entry(
    pair: Pair,
    cand: Candidate,
    comp: Composition,
    path: str | None,
    targets: Sequence[SizeTarget],
    files: dict[str, str] | None = None,
) -> MemberEntry:
    m = cand.member
    return MemberEntry(
        name=m.name,
        path=path,
        num_params=comp.num_params,
        num_layers=m.num_layers,
        teacher_blocks=sorted(m.teacher_blocks),
        layers=[ls.to_json() for ls in m.layers],
        embed_from=m.embed_from,
        head_from=m.head_from,
        tied=comp.tied,
        targets=[t.label for t in targets],
        files=dict(files or {}),
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


def prior_manifest(output: Path, pair: Pair, order: str, overwrite: bool) -> FamilyManifest | None:
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
    for role, entry, fp in (
        ("teacher", prior.teacher, pair.teacher_fingerprint),
        ("student", prior.student, pair.student_fingerprint),
    ):
        why = identity_problem(pair.inputs[role], entry.identity) if entry.identity else None
        if entry.fingerprint != fp or why is not None:
            diffs.append(f"{role} ({why})" if why else role)
    if prior.plan != pair.plan:
        diffs.append("plan")
    if prior.order.method != order:
        diffs.append(f"order ({prior.order.method})")
    if prior.dtype != dtype_flag(pair.dtype):
        diffs.append(f"dtype ({prior.dtype or 'as stored'})")
    if diffs:
        raise OutputExistsError(
            f"{output} holds a family with another {', '.join(diffs)}; pass --overwrite to rebuild it "
            "or choose another -o"
        )
    return prior


def check_output(pair: Pair, output: Path, order: str, overwrite: bool = False) -> FamilyManifest | None:
    """Fail now if ``build_family`` would refuse ``output``: before a calibrated search, not after it.

    Returns the manifest a resumed run builds on (None: none, or ``overwrite``).
    """
    check_order(order)
    return prior_manifest(Path(output), pair, order, overwrite)


def build_family(
    pair: Pair,
    picks: Sequence[Pick],
    output: Path,
    *,
    order: str | OrderInfo = DEFAULT_ORDER,
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
    prior = prior_manifest(output, pair, info.method, overwrite)
    return write_family(
        pair, picks, output, info, prior, max_shard_size=max_shard_size, overwrite=overwrite, progress=progress
    )


def write_family(
    pair: Pair,
    picks: Sequence[Pick],
    output: Path,
    info: OrderInfo,
    prior: FamilyManifest | None,
    *,
    max_shard_size: int,
    overwrite: bool,
    progress: Progress,
) -> FamilyResult:
    """:func:`build_family` once every check has passed and ``prior`` (:func:`prior_manifest`) is read."""
    # Every check passed: from here on the output directory changes.
    if overwrite and output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    _clean_stale(output)
    manifest_path = output / MANIFEST_NAME

    manifest, entries = _fresh_manifest(pair, info, prior, output)

    def save() -> None:
        manifest.members = sorted(entries.values(), key=lambda e: (e.num_params, e.name))
        manifest.write(manifest_path)

    save()
    comps = {p.name: p.candidate.member.composition(pair.models, dtype=pair.dtype) for p in picks}
    todo, reused = _reuse(picks, pair, comps, entries, output, progress)
    save()
    written = _write_members(todo, pair, comps, entries, output, info, max_shard_size, progress, save)
    manifest.complete = True
    save()
    notes = list(pair.notes)
    for p in picks:
        if len(p.targets) > 1:
            notes.append(f"sizes {', '.join(t.label for t in p.targets)} all chose {p.name}; written once")
    return FamilyResult(manifest, manifest_path, list(picks), written, reused, notes)


def _fresh_manifest(
    pair: Pair, info: OrderInfo, prior: FamilyManifest | None, output: Path
) -> tuple[FamilyManifest, dict[str, MemberEntry]]:
    """The manifest this run writes, keeping what a prior run of the same family recorded."""
    manifest = FamilyManifest(
        teacher=pair.entry("teacher", True),
        student=pair.entry("student", True),
        plan=pair.plan,
        order=info,
        members=[],
        forced=pair.forced,
        forced_reasons=list(pair.forced_reasons),
        dtype=dtype_flag(pair.dtype),
        plan_source=pair.plan_source,
        complete=False,
    )
    entries: dict[str, MemberEntry] = {}
    if prior is not None:
        manifest.created = prior.created
        manifest.teacher.metrics = prior.teacher.metrics
        manifest.student.metrics = prior.student.metrics
        manifest.baselines = prior.baselines
        entries = {m.name: m for m in prior.members if m.path and (output / m.path).is_dir()}
    return manifest, entries


def _reuse(
    picks: Sequence[Pick],
    pair: Pair,
    comps: dict[str, Composition],
    entries: dict[str, MemberEntry],
    output: Path,
    progress: Progress,
) -> tuple[list[Pick], list[str]]:
    """Members a prior run wrote that are the same and verify are kept; the others are to write."""
    todo: list[Pick] = []
    reused: list[str] = []
    check = [p for p in picks if p.name in entries]
    dirs = {p.name: output / (entries[p.name].path or "") for p in check}  # entries all have a path
    verify_bytes = sum(
        sum((dirs[p.name] / f).stat().st_size for f in entries[p.name].files if (dirs[p.name] / f).is_file())
        for p in check
    )
    vtask = progress.task("verifying members", verify_bytes, unit="B") if check else None
    for p in picks:
        prev = entries.get(p.name)
        new = member_entry(pair, p.candidate, comps[p.name], p.name, p.targets)
        same = (
            prev is not None
            and prev.path == p.name
            and prev.layers == new.layers
            and prev.embed_from == new.embed_from
            and prev.head_from == new.head_from
            and prev.tied == new.tied
        )
        if same and prev is not None and verify_member(output / p.name, prev):
            prev.targets = prev.targets + [t for t in new.targets if t not in prev.targets]
            reused.append(p.name)
        else:
            entries.pop(p.name, None)
            todo.append(p)
        if vtask is not None and prev is not None:
            vtask.advance(
                sum(
                    (output / prev.path / f).stat().st_size
                    for f in prev.files
                    if prev.path and (output / prev.path / f).is_file()
                )
            )
    if vtask is not None:
        progress.finish(vtask)
    return todo, reused


def _write_members(
    todo: Sequence[Pick],
    pair: Pair,
    comps: dict[str, Composition],
    entries: dict[str, MemberEntry],
    output: Path,
    info: OrderInfo,
    max_shard_size: int,
    progress: Progress,
    save: Callable[[], None],
) -> list[str]:
    """Each member to write, atomically, recorded (``save``) as soon as it is in place."""
    total = sum(t.out_nbytes for p in todo for t in comps[p.name].tensors)
    task = progress.task("writing members", total, unit="B")
    written: list[str] = []
    # Weight files get a sha256-tensors digest (tensor_writer.TensorDigests): each source
    # tensor is hashed once for the whole family and the copy stays kernel-side, so
    # no member is read back. The small files (config, tokenizer, card) are hashed
    # from disk inside the temporary directory. A member enters the manifest
    # only after its directory is renamed into place; a directory renamed but not
    # yet recorded (killed in between) is simply rewritten by a resumed run.
    tensor_digests = TensorDigests()
    for p in todo:
        comp = comps[p.name]
        task.update(description=f"writing {p.name}")
        with atomic_dir(output / p.name, overwrite=True) as tmp:
            result = write_model_dir(
                tmp,
                comp,
                pair.teacher.path,
                member_card(pair, p.candidate, comp, info),
                None,
                max_shard_size,
                task.advance,
                tensor_digests,
            )
            files, sizes = checksums(tmp, known=result.digests), file_sizes(tmp)
        entries[p.name] = member_entry(pair, p.candidate, comp, p.name, p.targets, files)
        entries[p.name].sizes = sizes
        written.append(p.name)
        save()
    progress.finish(task)
    return written


def dry_run_json(
    pair: Pair, order: str | OrderInfo, cands: Sequence[Candidate], picks: Sequence[Pick]
) -> dict[str, Any]:
    """What ``--dry-run --json`` prints: the manifest this run would write, listing every achievable
    member between student and teacher (``path`` null), plus ``dry_run`` and the ``selected`` names."""
    chosen = {p.name: p for p in picks}
    manifest = FamilyManifest(
        teacher=pair.entry("teacher"),
        student=pair.entry("student"),
        plan=pair.plan,
        order=order if isinstance(order, OrderInfo) else OrderInfo(method=order),
        forced=pair.forced,
        forced_reasons=list(pair.forced_reasons),
        dtype=dtype_flag(pair.dtype),
        plan_source=pair.plan_source,
        complete=False,
        members=[
            member_entry(
                pair,
                c,
                c.member.composition(pair.models, dtype=pair.dtype),
                None,
                chosen[c.name].targets if c.name in chosen else [],
            )
            for c in cands
            if not (c.member.is_student or c.member.is_teacher)
        ],
    )
    data = manifest.to_json()
    data["dry_run"] = True
    data["selected"] = [p.name for p in picks]
    return data
