"""The Typer application every command registers on (``cli/__init__`` imports the commands)."""

from __future__ import annotations

from typing import Optional

import typer

from .. import __version__

app = typer.Typer(
    name="boomerang",
    help="Turn one language model into a whole family of sizes (boomerang distillation).\n\n"
    "init-student prunes a teacher, distill trains the student, family writes every size in "
    "between with no training, eval measures and plots them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"boomerang {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """boomerang: zero-shot model size interpolation."""
    from .common import quiet_environment

    quiet_environment()
