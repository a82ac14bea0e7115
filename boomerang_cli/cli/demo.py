"""``boomerang demo``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..demo import DEFAULT_DATA_WEIGHTS, DEFAULT_PROSE, DemoConfig, DemoResult
from .app import app
from .common import emit_json, handle_errors, human, out_console, progress
from .options import Json, Quiet


@app.command("demo")
def demo_cmd(
    output: Path = typer.Option(Path("demo"), "-o", "--output", help="Directory for everything the demo writes."),
    teacher: str = typer.Option(DemoConfig.teacher, "--teacher", help="Teacher (default: the embedded SmolLM2-135M)."),
    data: List[str] = typer.Option(
        list(DemoConfig.data), "--data", help="Training text (as distill --data); repeat for several."
    ),
    data_weights: Optional[str] = typer.Option(
        None,
        "--data-weights",
        help="Each --data source's share of the training text, e.g. 1,1 (as distill --data-weights); "
        f"default: {','.join(f'{w:g}' for w in DEFAULT_DATA_WEIGHTS)} for the default data, "
        "else each source in turn.",
    ),
    shuffle: bool = typer.Option(
        DemoConfig.shuffle,
        "--shuffle/--no-shuffle",
        help="Read training documents in an order drawn from --seed (as distill --shuffle).",
    ),
    mix: Optional[float] = typer.Option(
        None, "--mix", help="Probability that a step trains a random member (as distill --mix; default: the recipe's)."
    ),
    seed: int = typer.Option(
        DemoConfig.seed, "--seed", help="Seed of the document order and of the members --mix trains."
    ),
    steps: int = typer.Option(DemoConfig.steps, "--steps", help="Distillation steps."),
    seq_len: int = typer.Option(DemoConfig.seq_len, "--seq-len", help="Tokens per training sequence."),
    batch_size: int = typer.Option(DemoConfig.batch_size, "--batch-size", help="Training sequences per step."),
    recipe: str = typer.Option(
        DemoConfig.recipe,
        "--recipe",
        help="Distillation recipe: short (tuned for small budgets, docs/results.md) or paper.",
    ),
    order: str = typer.Option(
        DemoConfig.order,
        "--order",
        help="Patch order of the family: auto (per size the "
        "lowest calibration KL of kl-dp, first-last and last-first), kl-dp, first-last, "
        "last-first, kl-greedy or beam (docs/orders.md).",
    ),
    calib_samples: int = typer.Option(
        DemoConfig.calib_samples,
        "--calib-samples",
        help="Calibrated orders: calibration sequences (train split of the distillation text).",
    ),
    calib_seq_len: int = typer.Option(
        DemoConfig.calib_seq_len, "--calib-seq-len", help="Calibrated orders: tokens per calibration sequence."
    ),
    eval_tokens: int = typer.Option(
        DemoConfig.eval_tokens, "--eval-tokens", help="Held-out tokens for perplexity, in each domain."
    ),
    prose_data: str = typer.Option(
        DEFAULT_PROSE,
        "--prose-data",
        help="English text (a file or directory, all of it) the family is judged on beside the held-out code.",
    ),
    no_prose: bool = typer.Option(False, "--no-prose", help="Judge on the held-out code only."),
    json_out: bool = Json,
    quiet: bool = Quiet,
) -> None:
    """Run the whole pipeline on the embedded teacher: distill, family, eval with baselines, plots.

    The default budget is small (40 steps of 8 x 128 tokens of stdlib code and
    its docstrings, the short recipe, embeddings frozen so members stay tied,
    the auto order); the family is judged on held-out code and on English
    prose. Rerun the same command to resume after an interruption: finished
    stages are skipped, distillation continues from its last checkpoint,
    members already written are kept.
    """
    with handle_errors():
        from ..data.mix import parse_weights
        from ..demo import run_demo

        cfg = DemoConfig(
            output=output,
            teacher=teacher,
            data=tuple(data),
            shuffle=shuffle,
            mix=mix,
            seed=seed,
            data_weights=tuple(parse_weights(data_weights)) if data_weights else None,
            steps=steps,
            seq_len=seq_len,
            batch_size=batch_size,
            recipe=recipe,
            order=order,
            calib_samples=calib_samples,
            calib_seq_len=calib_seq_len,
            eval_tokens=eval_tokens,
            prose_data=None if no_prose else prose_data,
        )
        cfg.check()
        with progress(not (json_out or quiet)) as bar:
            result = run_demo(cfg, bar)
    _render(result, json_out)


def _render(result: DemoResult, json_out: bool) -> None:
    """One table per domain, the checks, and where everything is; or one JSON object."""
    if json_out:
        emit_json(result.to_json())
        return
    titles = {"code": "held-out standard-library code", "prose": "English prose (never trained on)"}
    for domain, rows in (result.domains or {"code": result.rows}).items():
        t = Table(title=f"boomerang demo: perplexity on {titles.get(domain, domain)}")
        for col in ("model", "kind", "layers", "params", "perplexity"):
            t.add_column(col, justify="right" if col in ("layers", "params", "perplexity") else "left")
        for r in sorted(rows, key=lambda r: (r["kind"] == "baseline", r["num_layers"], r["name"])):
            t.add_row(
                r["name"],
                r.get("method") or r["kind"],
                str(r["num_layers"]),
                human(r["num_params"]),
                f"{r['ppl']:.3f}" if r.get("ppl") is not None else "-",
            )
        out_console.print(t)
    for c in result.checks:
        mark = Text("yes", style="green") if c.passed else Text("no", style="red")
        out_console.print(mark + Text(f"  {c.name}: {c.detail}"))
    plots = ", ".join(result.plots.values()) if result.plots else result.plot
    out_console.print(
        f"student: {result.student}\nfamily:  {result.manifest}\nplots:   {plots}\n"
        + "stages:  "
        + ", ".join(f"{k} {v} ({result.seconds.get(k, 0):.0f} s)" for k, v in result.stages.items()),
        highlight=False,
    )
