"""``boomerang demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from . import app
from .common import emit_json, handle_errors, human, out_console, progress
from .options import Json


@app.command("demo")
def demo_cmd(
    output: Path = typer.Option(Path("demo"), "-o", "--output", help="Directory for everything the demo writes."),
    teacher: str = typer.Option("smollm2-135m", "--teacher", help="Teacher (default: the embedded SmolLM2-135M)."),
    steps: int = typer.Option(40, "--steps", help="Distillation steps."),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(8, "--batch-size", help="Training sequences per step."),
    order: str = typer.Option("first-last", "--order", help="Patch order of the family: first-last (the paper's order for Llama) or last-first."),
    eval_tokens: int = typer.Option(4096, "--eval-tokens", help="Held-out tokens for perplexity."),
    json_out: bool = Json,
) -> None:
    """Run the whole pipeline on the embedded teacher: distill, family, eval with baselines, plot.

    The default budget is small (40 steps of 8 x 128 tokens). Rerun the same
    command to resume after an interruption: finished stages are skipped,
    distillation continues from its last checkpoint, members already written
    are kept.
    """
    with handle_errors():
        from ..demo import DemoConfig, run_demo
        from ..errors import BoomerangError

        for name, value in (("--steps", steps), ("--seq-len", seq_len), ("--batch-size", batch_size),
                            ("--eval-tokens", eval_tokens)):
            if value < 1:
                raise BoomerangError(f"{name} must be at least 1 (got {value})")
        cfg = DemoConfig(output=output, teacher=teacher, steps=steps, seq_len=seq_len,
                         batch_size=batch_size, order=order, eval_tokens=eval_tokens)
        with progress(not json_out) as bar:
            result = run_demo(cfg, bar)
    if json_out:
        emit_json(result.to_json())
        return
    t = Table(title="boomerang demo: perplexity on held-out standard-library text")
    for col in ("model", "kind", "layers", "params", "perplexity"):
        t.add_column(col, justify="right" if col in ("layers", "params", "perplexity") else "left")
    for r in sorted(result.rows, key=lambda r: (r["kind"] == "baseline", r["num_layers"], r["name"])):
        t.add_row(r["name"], r.get("method") or r["kind"], str(r["num_layers"]), human(r["num_params"]),
                  f"{r['ppl']:.3f}" if r.get("ppl") is not None else "-")
    out_console.print(t)
    for c in result.checks:
        mark = "[green]yes[/]" if c.passed else "[red]no[/]"
        out_console.print(f"{mark}  {c.name}: {c.detail}", highlight=False)
    out_console.print(
        f"student: {result.student}\nfamily:  {result.manifest}\nplot:    {result.plot}\n"
        + "stages:  " + ", ".join(f"{k} {v} ({result.seconds.get(k, 0):.0f} s)" for k, v in result.stages.items()),
        highlight=False,
    )
