"""``boomerang demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from ..demo import DemoConfig
from .app import app
from .common import emit_json, handle_errors, human, out_console, progress
from .options import Json, Quiet


@app.command("demo")
def demo_cmd(
    output: Path = typer.Option(Path("demo"), "-o", "--output", help="Directory for everything the demo writes."),
    teacher: str = typer.Option(DemoConfig.teacher, "--teacher", help="Teacher (default: the embedded SmolLM2-135M)."),
    steps: int = typer.Option(DemoConfig.steps, "--steps", help="Distillation steps."),
    seq_len: int = typer.Option(DemoConfig.seq_len, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(DemoConfig.batch_size, "--batch-size", help="Training sequences per step."),
    recipe: str = typer.Option(DemoConfig.recipe, "--recipe", help="Distillation recipe: short (tuned for small "
                               "budgets, docs/results.md) or paper."),
    order: str = typer.Option(DemoConfig.order, "--order", help="Patch order of the family: auto (per size the "
                              "lowest calibration KL of kl-dp, first-last and last-first), kl-dp, first-last, "
                              "last-first, kl-greedy or beam (docs/orders.md)."),
    calib_samples: int = typer.Option(DemoConfig.calib_samples, "--calib-samples", help="Calibrated orders: "
                                      "calibration sequences (train split of the distillation text)."),
    calib_seq_len: int = typer.Option(DemoConfig.calib_seq_len, "--calib-seq-len", help="Calibrated orders: "
                                      "tokens per calibration sequence."),
    eval_tokens: int = typer.Option(DemoConfig.eval_tokens, "--eval-tokens", help="Held-out tokens for perplexity."),
    json_out: bool = Json,
    quiet: bool = Quiet,
) -> None:
    """Run the whole pipeline on the embedded teacher: distill, family, eval with baselines, plot.

    The default budget is small (40 steps of 8 x 128 tokens, the short recipe,
    embeddings frozen so members stay tied, the auto order). Rerun the same
    command to resume after an interruption: finished stages are skipped,
    distillation continues from its last checkpoint, members already written
    are kept.
    """
    with handle_errors():
        from ..demo import run_demo
        from ..distill.recipes import get_recipe
        from ..errors import BoomerangError
        from ..orders.names import check_order

        for name, value in (("--steps", steps), ("--seq-len", seq_len), ("--batch-size", batch_size),
                            ("--eval-tokens", eval_tokens)):
            if value < 1:
                raise BoomerangError(f"{name} must be at least 1 (got {value})")
        from ..orders.calibration import check_sizes

        get_recipe(recipe)
        check_order(order)
        check_sizes(calib_samples, calib_seq_len)
        cfg = DemoConfig(output=output, teacher=teacher, steps=steps, seq_len=seq_len,
                         batch_size=batch_size, recipe=recipe, order=order, calib_samples=calib_samples,
                         calib_seq_len=calib_seq_len, eval_tokens=eval_tokens)
        with progress(not (json_out or quiet)) as bar:
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
        mark = Text("yes", style="green") if c.passed else Text("no", style="red")
        out_console.print(mark + Text(f"  {c.name}: {c.detail}"))
    out_console.print(
        f"student: {result.student}\nfamily:  {result.manifest}\nplot:    {result.plot}\n"
        + "stages:  " + ", ".join(f"{k} {v} ({result.seconds.get(k, 0):.0f} s)" for k, v in result.stages.items()),
        highlight=False,
    )
