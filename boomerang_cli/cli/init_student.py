"""``boomerang init-student``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .app import app
from .common import emit_json, err_console, handle_errors, human, out_console, progress
from .options import (AllowPickle, Dtype, Every, Json, Keep, KeepFirst, KeepLast, MaxShardSize,
                      Overwrite, Quiet, TrustRemoteCode, require_output)


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
        from ..arch import ModelInfo
        from ..plan import Plan
        from ..guard import lock_if
        from ..refs import pending_gguf, resolve
        from ..state import record
        from ..student import gguf_dry_run, init_student
        from ..atomic import check_output_dir
        from ..tensors import parse_dtype
        from ..units import parse_size

        require_output(output, dry_run)
        if output is not None and not dry_run:
            check_output_dir(output, overwrite)
        shard = parse_size(max_shard_size)
        torch_dtype = parse_dtype(dtype) if dtype else None
        gguf = pending_gguf(teacher) if dry_run else None
        if gguf is not None:  # a dry run converts nothing: the GGUF header says enough
            summary = gguf_dry_run(teacher, gguf, lambda n: Plan.from_flags(n, keep, keep_first, every, keep_last), output)
            plan = summary.plan
        else:
            with lock_if(output, not dry_run):
                ref = resolve(teacher, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
                info = ModelInfo.load(ref.path, trust_remote_code)
                plan = Plan.from_flags(info.arch.num_layers, keep, keep_first, every, keep_last)
                with progress(not (json_out or quiet)) as bar:
                    summary = init_student(ref, plan, output, dtype=torch_dtype, max_shard_size=shard,
                                           overwrite=overwrite, dry_run=dry_run, teacher=info, progress=bar)
        if not dry_run and output is not None:
            record(student=output, teacher=ref.stable_ref)
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
        t.add_row(str(b.index), f"{b.start}" if b.size == 1 else f"{b.start}-{b.end - 1}",
                  "patchable" if b.patchable else "singleton")
    out_console.print(t)
    out_console.print(
        f"{plan.num_student_layers} of {plan.num_teacher_layers} layers kept "
        f"({len(plan.patchable_blocks)} patchable blocks); "
        f"{human(summary.num_params)} of {human(summary.teacher_params)} parameters"
        + ("" if dry_run else f"; written to {output}")
    )
    for note in summary.notes:
        err_console.print(f"note: {note}")
