"""``boomerang init-student``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .app import app
from .common import emit_json, err_console, handle_errors, human, out_console, progress, say
from .options import (
    AllowPickle,
    Dtype,
    Every,
    Json,
    Keep,
    KeepFirst,
    KeepLast,
    MaxShardSize,
    Overwrite,
    Quiet,
    TrustRemoteCode,
)


@app.command("init-student")
def init_student_cmd(
    teacher: str = typer.Argument(..., help="Teacher: local dir, hub id[@rev], .gguf file or builtin (smollm2-135m)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory to write the student to."),
    keep_first: int = KeepFirst,
    every: int = Every,
    keep_last: int = KeepLast,
    keep: Optional[str] = Keep,
    dtype: Optional[str] = Dtype,
    max_shard_size: str = MaxShardSize,
    overwrite: bool = Overwrite,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    json_out: bool = Json,
    quiet: bool = Quiet,
    allow_pickle: bool = AllowPickle,
    trust_remote_code: bool = TrustRemoteCode,
) -> None:
    """Prune TEACHER to a student by keeping one layer of every block (SPEC section 2)."""
    with handle_errors():
        from ..state import record
        from ..student import StudentRequest, make_student

        req = StudentRequest(
            teacher,
            output,
            keep,
            keep_first,
            every,
            keep_last,
            dtype,
            max_shard_size,
            overwrite,
            dry_run,
            allow_pickle,
            trust_remote_code,
        )
        with progress(not (json_out or quiet)) as bar:
            run = make_student(req, bar)
        summary, plan = run.summary, run.summary.plan
        if not dry_run and output is not None and run.teacher_ref is not None:
            remember_warning = record(
                [("teacher", run.teacher_ref.path), ("student", output)],
                student=output,
                teacher=run.teacher_ref.stable_ref,
            )
            if remember_warning:
                say(f"warning: {remember_warning}", err_console)
    _render(summary, plan, teacher, output, dry_run, json_out)


def _render(summary: Any, plan: Any, teacher: str, output: Optional[Path], dry_run: bool, json_out: bool) -> None:
    """The plan as a table and a summary line (notes on stderr), or one JSON object."""
    if json_out:
        emit_json(summary.to_json())
        return
    t = Table(title=f"student of {teacher}" + (" (dry run)" if dry_run else ""))
    t.add_column("student layer", justify="right")
    t.add_column("teacher block", justify="left")
    t.add_column("kind")
    for b in plan.blocks:
        t.add_row(
            str(b.index),
            f"{b.start}" if b.size == 1 else f"{b.start}-{b.end - 1}",
            "patchable" if b.patchable else "singleton",
        )
    out_console.print(t)
    say(
        f"{plan.num_student_layers} of {plan.num_teacher_layers} layers kept "
        f"({len(plan.patchable_blocks)} patchable blocks); "
        f"{human(summary.num_params)} of {human(summary.teacher_params)} parameters"
        + ("" if dry_run else f"; written to {output}")
    )
    for note in summary.notes:
        err_console.print(f"note: {note}")
