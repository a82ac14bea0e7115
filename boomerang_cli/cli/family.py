"""``boomerang family``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, cast

import typer
from rich.console import JustifyMethod
from rich.table import Table

from ..orders.calibration import CalibrationSpec
from ..orders.names import DEFAULT_BEAM, DEFAULT_ORDER
from .app import app
from .common import emit_json, err_console, handle_errors, out_console, progress, split_list, say
from .options import AllowPickle, Bos, Dtype, Json, MaxShardSize, Overwrite, Quiet, TrustRemoteCode

if TYPE_CHECKING:
    from ..family.run import FamilyRun

ORDER_HELP = (
    "last-first: patch the last blocks first (head from the teacher); first-last: the "
    "first blocks first (embeddings from the teacher); kl-greedy: at each step patch the block "
    "whose member is closest to the teacher (KL on --calib-data); beam: the same keeping --beam "
    "choices per size; kl-dp: each block scored once from each end, the best member of every size by dynamic "
    "programming (linear cost); auto: per size the lowest-KL member of kl-dp, first-last and last-first. "
    "See docs/orders.md."
)


@app.command("family")
def family_cmd(
    teacher: Optional[str] = typer.Argument(
        None,
        help="Teacher: local dir, hub id[@rev], .gguf or builtin. Omitted: the one the student's boomerang.json names.",
    ),
    student: Optional[str] = typer.Argument(
        None,
        help="Student (init-student/distill output, a reference-code student, or any model with --keep). "
        "Omitted: the last student init-student/distill recorded here.",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "-o",
        "--output",
        help="Family directory (members + family.json). Default: <student>-family next to the student.",
    ),
    sizes: Optional[str] = typer.Option(
        None,
        "--sizes",
        help="Target sizes, e.g. 2B,3.5B,500M (K/M/B/T): each picks the member with the closest parameter count.",
    ),
    num: Optional[int] = typer.Option(None, "--num", help="N members evenly spaced along the order."),
    all_members: bool = typer.Option(False, "--all", help="Every member between student and teacher."),
    order: str = typer.Option(DEFAULT_ORDER, "--order", help=ORDER_HELP),
    calib_data: List[str] = typer.Option(
        [],
        "--calib-data",
        help="calibrated orders: calibration text (same sources as distill; repeatable). "
        "Default: the data the student was distilled on (its boomerang.json).",
    ),
    calib_samples: int = typer.Option(
        CalibrationSpec.samples, "--calib-samples", help="calibrated orders: calibration sequences (train split)."
    ),
    calib_seq_len: int = typer.Option(
        CalibrationSpec.seq_len, "--calib-seq-len", help="calibrated orders: tokens per calibration sequence."
    ),
    bos: str = Bos,
    beam: Optional[int] = typer.Option(
        None, "--beam", help=f"beam: choices kept per size (default {DEFAULT_BEAM}; 1 = kl-greedy)."
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="calibrated orders: where candidates are scored: auto (CUDA if "
        "available), cuda or cpu. Writing members never needs a GPU.",
    ),
    keep: Optional[str] = typer.Option(
        None,
        "--keep",
        help="The plan (teacher layers the student kept, e.g. 0,2,4,7,9,11) for a student "
        "with no boomerang.json or student_config.json, e.g. gpt2 + distilgpt2.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Build even if the pair check fails on identity (fingerprint, "
        "architecture name); recorded in the manifest. Shape mismatches cannot be forced.",
    ),
    dtype: Optional[str] = Dtype,
    max_shard_size: str = MaxShardSize,
    overwrite: bool = Overwrite,
    dry_run: bool = typer.Option(False, "--dry-run", help="List every achievable member; write nothing."),
    json_out: bool = Json,
    quiet: bool = Quiet,
    allow_pickle: bool = AllowPickle,
    trust_remote_code: bool = TrustRemoteCode,
) -> None:
    """Write family members between STUDENT and TEACHER with no training (docs/family.md).

    Rerunning the same command resumes: members already written and verified are kept.
    """
    from ..family.run import FamilyRequest

    req = FamilyRequest(
        teacher,
        student,
        output,
        sizes,
        num,
        all_members,
        order,
        split_list(calib_data),
        calib_samples,
        calib_seq_len,
        bos,
        beam,
        device,
        keep,
        force,
        dtype,
        max_shard_size,
        overwrite,
        dry_run,
        allow_pickle,
        trust_remote_code,
    )
    with handle_errors():
        from ..family.run import make_family
        from ..state import record

        with progress(not (json_out or quiet)) as bar:
            run = make_family(req, bar)
        if run.result is not None:
            remember_warning = record(
                [*run.pair.inputs.items(), ("family", run.result.manifest_path.parent)], family=run.result.manifest_path
            )
            if remember_warning:
                say(f"warning: {remember_warning}", err_console)
    _render(run, json_out)


def _render(run: FamilyRun, json_out: bool) -> None:
    """The family (or the dry run's plan) as a table and a summary, or one JSON object; notes on stderr."""
    from ..family import dry_run_json

    if json_out:
        emit_json(
            dry_run_json(run.pair, run.order, run.every, run.picks)
            if run.result is None
            else run.result.manifest.to_json()
        )
        for note in run.pair.notes if run.result is None else run.result.notes:
            err_console.print(f"note: {note}", highlight=False, markup=False, emoji=False)
        return
    _search_line(run.order, run.search_reused)
    if run.result is None:
        _dry_table(run.pair, run.order, run.every, run.picks, run.teacher, run.student)
    else:
        _result_table(run.result, run.ref_student, run.ref_teacher, run.teacher, run.student, run.order)


def _blocks(c) -> tuple[str, str]:
    from ..family import describe_blocks

    return describe_blocks(c.member)


def _short(ref: str) -> str:
    """A path's last component, for titles (the manifest keeps full references)."""
    p = Path(ref)
    return p.name if p.exists() and p.name else ref


def _src(c) -> str:
    return f"{c.member.embed_from[0].upper()}/{c.member.head_from[0].upper()}"


LEGEND = (
    "blocks: student-layer indices of the plan; emb/head: where embeddings / final norm + head "
    "come from (S student, T teacher), saved untied when they differ"
)


def _table(title: str, columns: list[tuple[str, str]]) -> Table:
    t = Table(title=title)
    for i, (col, just) in enumerate(columns):
        t.add_column(col, justify=cast(JustifyMethod, just), no_wrap=i == 0)
    return t


def _search_line(info, reused: bool) -> None:
    """What a calibrated search measured (nothing for fixed orders)."""
    if not info.steps:
        return
    cal = info.calibration or {}
    how = (
        "reused from the family's manifest"
        if reused
        else f"{cal.get('evaluated', '?')} members scored in {cal.get('seconds', 0):.0f} s"
    )
    width = f", beam {info.beam}" if info.beam else ""
    out_console.print(
        f"{info.method} search{width}: KL to the teacher on {cal.get('key')} ({cal.get('tokens', 0):,} tokens); {how}",
        highlight=False,
    )


def _kl(info, c) -> str:
    for step in info.steps:
        if step.get("num_layers") == c.member.num_layers and step.get("teacher_blocks") == sorted(
            c.member.teacher_blocks
        ):
            return f"{step['kl']:.4f}"
    return ""


def _dry_table(pair, info, every, picks, teacher: str, student: str) -> None:
    from ..family import format_params

    chosen = {p.name: p for p in picks}
    cols = [
        ("name", "left"),
        ("layers", "right"),
        ("params", "right"),
        ("teacher blocks", "left"),
        ("student blocks", "left"),
        ("emb/head", "left"),
    ]
    if info.steps:
        cols.append(("KL", "right"))
    t = _table(
        f"{info.method} family of {_short(teacher)} + {_short(student)} (dry run, nothing written)",
        cols + [("chosen", "left")],
    )
    for c in every:
        tb, sb = _blocks(c)
        ref = c.member.is_student or c.member.is_teacher
        if ref:
            sel = "reference"
        elif c.name in chosen:
            sel = ", ".join(x.label for x in chosen[c.name].targets) or "yes"
        else:
            sel = ""
        kl = [_kl(info, c)] if info.steps else []
        t.add_row(
            c.name,
            str(c.member.num_layers),
            format_params(c.num_params),
            tb,
            sb,
            _src(c),
            *kl,
            sel,
            style="dim" if ref else None,
        )
    out_console.print(t)
    blocks = " ".join(
        f"{b.index}:{b.start}" if b.size == 1 else f"{b.index}:{b.start}-{b.end - 1}" for b in pair.plan.blocks
    )
    out_console.print(f"plan ({pair.plan_source}), block:teacher layers: {blocks}", highlight=False)
    out_console.print(LEGEND, highlight=False, style="dim")
    out_console.print(
        f"{len(every) - 2} achievable members between student and teacher"
        + (f"; {len(picks)} chosen" if picks else ""),
        highlight=False,
    )
    for note in pair.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, emoji=False)


def _result_table(result, ref_student, ref_teacher, teacher: str, student: str, info) -> None:
    from ..family import format_params

    t = _table(
        f"{info.method} family of {_short(teacher)} + {_short(student)}",
        [
            ("name", "left"),
            ("layers", "right"),
            ("params", "right"),
            ("asked", "right"),
            ("blocks teacher | student", "left"),
        ]
        + ([("KL", "right")] if info.steps else [])
        + [("status", "left")],
    )

    def blocks(c) -> str:
        tb, sb = _blocks(c)
        return f"{tb} | {sb}"

    def kl(c) -> list[str]:
        return [_kl(info, c)] if info.steps else []

    def ref_row(c) -> None:
        t.add_row(
            c.name,
            str(c.member.num_layers),
            format_params(c.num_params),
            "",
            blocks(c),
            *kl(c),
            "reference",
            style="dim",
        )

    ref_row(ref_student)
    for p in result.picks:
        c = p.candidate
        asked = "\n".join(f"{x.label} ({(c.num_params - x.params) / x.params:+.1%})" for x in p.targets)
        status = "written" if p.name in result.written else "reused"
        t.add_row(c.name, str(c.member.num_layers), format_params(c.num_params), asked, blocks(c), *kl(c), status)
    ref_row(ref_teacher)
    out_console.print(t)
    for note in result.notes:
        out_console.print(f"note: {note}", highlight=False, markup=False, emoji=False)
    m = result.manifest
    if result.reused:
        out_console.print("reused: already written and verified against the manifest's checksums", style="dim")
    say(
        f"{len(result.picks)} member(s) in {result.manifest_path.parent} ({len(result.written)} written, "
        f"{len(result.reused)} reused); manifest {result.manifest_path}" + (" [forced]" if m.forced else ""),
    )
