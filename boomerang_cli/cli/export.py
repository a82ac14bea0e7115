"""``boomerang export``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, cast

import typer
from rich.console import JustifyMethod
from rich.table import Table

from ..export.request import ExportRequest
from .app import app
from .common import emit_json, handle_errors, human, out_console, progress, split_list, say
from .options import Json, Overwrite, Quiet, defaults

if TYPE_CHECKING:
    from ..export.writer import ExportResult

D = defaults(ExportRequest)  # every flag's default, read from the request


@app.command("export")
def export_cmd(
    family: Optional[str] = typer.Argument(
        None, help="A family (family.json or its directory; default: the last `boomerang family` here)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to write the files and export.json into."),
    file_format: str = typer.Option(D["file_format"], "--format", help="File format: gguf (llama.cpp, Ollama)."),
    type_name: str = typer.Option(
        D["type_name"],
        "--type",
        help="Tensor type: f32, f16, bf16, q8_0 (default), q4_0, q4_1, q5_0 or q5_1. Norms stay "
        "f32; at 4-5 bits embeddings and head are q8_0.",
    ),
    members: Optional[str] = typer.Option(
        None,
        "--members",
        help="Only these members of the family, e.g. member-18L,teacher (default: all, teacher and student included).",
    ),
    no_modelfile: bool = typer.Option(
        not D["modelfiles"], "--no-modelfile", help="Do not write an Ollama Modelfile per file."
    ),
    overwrite: bool = Overwrite,
    json_out: bool = Json,
    quiet: bool = Quiet,
) -> None:
    """Write every member of a family as a GGUF file for llama.cpp and Ollama.

    Each distinct teacher or student tensor is converted and quantized once and
    reused by every member that contains it. export.json lists each file's path,
    type, size and sha256. See docs/export.md.
    """
    req = ExportRequest(
        family,
        output,
        type_name,
        split_list([members]) if members is not None else None,
        file_format,
        not no_modelfile,
        overwrite,
    )
    with handle_errors():
        from ..export.writer import run_export

        with progress(not (json_out or quiet)) as bar:
            result = run_export(req, bar)
    _render(result, json_out)


def _render(result: ExportResult, json_out: bool) -> None:
    """The files written, as a table and a summary line, or one JSON object."""
    if json_out:
        emit_json(result.to_json())
        return
    t = Table(title=f"GGUF export of {result.family} ({result.type})")
    for col, just in (
        ("file", "left"),
        ("layers", "right"),
        ("params", "right"),
        ("tied", "left"),
        ("size", "right"),
        ("sha256", "left"),
    ):
        t.add_column(col, justify=cast(JustifyMethod, just), no_wrap=True)
    for f in result.files:
        t.add_row(
            f.path,
            str(f.num_layers),
            human(f.num_params),
            "yes" if f.tied else "no",
            f"{f.size / 1e6:.1f} MB",
            f.sha256.removeprefix("sha256:")[:12],
        )
    out_console.print(t)
    secs = result.seconds
    say(
        f"{result.unique_tensors} unique tensors converted once for {result.tensor_references} tensors written "
        f"({secs.get('convert', 0):.1f}s converting, {secs.get('write', 0):.1f}s writing); "
        f"manifest: {result.output / 'export.json'}"
    )
