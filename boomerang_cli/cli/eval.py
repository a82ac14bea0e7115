"""``boomerang eval``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List, Optional, cast

import typer
from rich.console import JustifyMethod
from rich.table import Table

from ..orders.calibration import CalibrationSpec
from ..evaluate.options import EvalOptions
from ..orders.names import DEFAULT_BEAM
from .app import app
from .common import emit_json, err_console, handle_errors, human, out_console, progress, split_list, say
from .options import AllowPickle, Bos, Json, Quiet, TrustRemoteCode, defaults

D = defaults(EvalOptions)  # every flag's default, read from the options


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "-"
    if x >= 1e4:
        return f"{x:.3g}"
    return f"{x:.{digits}f}" if x < 100 else f"{x:.1f}"


@app.command("eval")
def eval_cmd(
    targets: List[str] = typer.Argument(
        None,
        help="A family (family.json or its directory; default: the last `boomerang family` here) or "
        "model references (local dirs, hub ids, .gguf, builtins).",
    ),
    members: Optional[str] = typer.Option(
        None,
        "--members",
        help="Only these members of the family, e.g. member-18L,teacher (default: all, teacher and student included).",
    ),
    data: List[str] = typer.Option(
        D["sources"],
        "--data",
        help="Text files/directories, .jsonl, .parquet, a hub dataset id (name:config@split) "
        "or stdlib (repeat for several); the same sources as distill.",
    ),
    split: str = typer.Option(
        D["split"], "--split", help="validation (the held-out 2%, default), train, or all (every document of --data)."
    ),
    text_field: str = typer.Option(
        D["text_field"], "--text-field", help="Field holding the text in .jsonl/.parquet/hub rows."
    ),
    max_tokens: int = typer.Option(
        D["max_tokens"], "--max-tokens", help="Tokens to score (whole blocks: rounded up to --seq-len)."
    ),
    seq_len: int = typer.Option(D["seq_len"], "--seq-len", help="Tokens per block (at most the model's positions)."),
    bos: str = Bos,
    window: str = typer.Option(
        D["window"],
        "--window",
        help="packed (blocks of --seq-len over the token stream, "
        "default) or rolling (lm-eval's loglikelihood_rolling windows, document by document).",
    ),
    metric: str = typer.Option(
        D["metric"],
        "--metric",
        help="What the table and --plot show: ppl (token "
        "perplexity), bits-per-byte, word-ppl or byte-ppl (every record holds all four).",
    ),
    batch_size: int = typer.Option(
        D["batch_size"], "--batch-size", help="Blocks per forward pass (also lm-eval's batch size)."
    ),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="lm-evaluation-harness tasks, e.g. arc_easy,hellaswag (needs the eval extra)."
    ),
    task_dir: Optional[Path] = typer.Option(
        None, "--task-dir", help="Directory of local lm-eval task YAML files (offline evaluation on local data)."
    ),
    limit: Optional[float] = typer.Option(
        None, "--limit", help="lm-eval: at most this many examples per task (a fraction if below 1)."
    ),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", help="lm-eval: few-shot examples per prompt."),
    baseline: List[str] = typer.Option(
        [],
        "--baseline",
        help="prune: also evaluate the teacher pruned without training to each member's layer "
        "count (ShortGPT and the plan's layers); or just shortgpt / plan-prune.",
    ),
    calibration_tokens: int = typer.Option(
        D["calibration_tokens"],
        "--calibration-tokens",
        help="ShortGPT: train-split tokens its block influence is measured on.",
    ),
    compare_orders: Optional[str] = typer.Option(
        None,
        "--compare-orders",
        help="Also evaluate every member of these orders in memory (nothing written), "
        "e.g. last-first,first-last,kl-greedy,beam; one line per order on --plot. docs/orders.md.",
    ),
    calib_data: List[str] = typer.Option(
        [],
        "--calib-data",
        help="calibrated orders (kl-greedy, beam, kl-dp, auto) in --compare-orders: calibration text (default: the family's own "
        "calibration, else the train split of --data).",
    ),
    calib_samples: Optional[int] = typer.Option(
        None,
        "--calib-samples",
        help=f"calibrated orders: calibration sequences (default: the family's, else {CalibrationSpec.samples}).",
    ),
    calib_seq_len: Optional[int] = typer.Option(
        None,
        "--calib-seq-len",
        help="calibrated orders: tokens per calibration sequence (default: the family's, "
        f"else {CalibrationSpec.seq_len}).",
    ),
    beam: Optional[int] = typer.Option(
        None, "--beam", help=f"beam in --compare-orders: its width (default: the family's, else {DEFAULT_BEAM})."
    ),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="Draw parameters against perplexity (and task scores) into FILE.png."
    ),
    no_trunk: bool = typer.Option(
        False, "--no-trunk", help="Evaluate every member on its own instead of sharing common layers."
    ),
    no_perplexity: bool = typer.Option(False, "--no-perplexity", help="Skip perplexity (only --tasks)."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Check every member file's sha256 against the manifest "
        "first (default: that each recorded file is there with its recorded size).",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "-o",
        "--output",
        help="Results JSON for plain model references (default: ./eval-results.json); "
        "a family's results go into its manifest.",
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="Compute in fp32 (default), bf16 or fp16."),
    device: str = typer.Option(D["device"], "--device", help="auto (CUDA if available), cuda or cpu."),
    json_out: bool = Json,
    quiet: bool = Quiet,
    allow_pickle: bool = AllowPickle,
    trust_remote_code: bool = TrustRemoteCode,
) -> None:
    """Measure perplexity (and lm-eval tasks) of a family or of models; record, print and plot the results.

    A family is evaluated as a prefix tree: members that share their leading
    layers compute them once (results are identical to evaluating each member
    on its own; --no-trunk does that).
    """
    flags = dict(locals())  # the parsed flags, by name
    from ..evaluate.run import EvalRequest

    req = EvalRequest(
        targets=list(targets or []),
        dtype=dtype,
        tasks=tasks,
        baselines=split_list(baseline),
        compare_orders=compare_orders,
        members=members,
        output=output,
        plot=plot,
        options=_options(flags),
    )
    with handle_errors():
        from ..evaluate.run import run_eval

        with progress(not (json_out or quiet)) as bar:
            report = run_eval(req, bar)
    if json_out:
        out = report.to_json()
        out["plot"] = str(plot) if plot is not None else None
        emit_json(out)
        return
    _table(report, metric)
    if plot is not None:
        say(f"plot: {plot}")


#: EvalOptions fields the request sets itself (dtype, tasks, compare_orders, plot) or that are built below
#: from flags read or renamed first; every other field with a flag of its own name takes that flag's value as is.
_BUILT = {"dtype", "tasks", "compare_orders", "plot", "sources", "trunk", "perplexity", "limit", "calib_data"}


def _options(flags: dict[str, Any]) -> dict[str, Any]:
    """``EvalRequest.options`` from ``eval_cmd``'s parsed flags: lists split, ``--no-*`` switches turned
    round, a ``--limit`` of 1 or more counted in examples."""
    limit = flags["limit"]
    same = {f.name: flags[f.name] for f in dataclasses.fields(EvalOptions) if f.name in flags.keys() - _BUILT}
    return dict(
        same,
        sources=split_list(flags["data"]) or ["stdlib"],
        trunk=not flags["no_trunk"],
        perplexity=not flags["no_perplexity"],
        limit=int(limit) if limit is not None and limit >= 1 else limit,
        calib_data=split_list(flags["calib_data"]),
    )


METRIC_COLUMNS = {"ppl": "ppl", "bits-per-byte": "bpb", "word-ppl": "word ppl", "byte-ppl": "byte ppl"}


def _table(report: Any, metric: str = "ppl") -> None:
    from ..evaluate.lmeval import primary_metric

    d = report.data
    title = f"eval of {report.target}"
    if d:
        shape = ("lm-eval rolling windows of " if d.get("window") == "rolling" else "") + f"{d['seq_len']}-token"
        title += (
            f" on {d['key']} ({d['tokens']:,} tokens, {d.get('bytes', 0):,} bytes, {shape} blocks"
            f"{', each starting with BOS' if d.get('bos') and d.get('window') != 'rolling' else ''})"
        )
    t = Table(title=title)
    t.add_column("name", no_wrap=True, min_width=max(len(r.name) for r in report.rows))
    for col, just in (
        ("kind", "left"),
        ("layers", "right"),
        ("params", "right"),
        (METRIC_COLUMNS[metric], "right"),
        ("Δ teacher", "right"),
    ):
        t.add_column(col, justify=cast(JustifyMethod, just), no_wrap=True)
    metric_of: dict[str, str] = {}
    for task in report.tasks:
        names = {p[0] for r in report.rows if task in r.tasks for p in [primary_metric(r.tasks[task])] if p}
        metric_of[task] = names.pop() if len(names) == 1 else "score"
        t.add_column(f"{task} {metric_of[task]}", justify="right")
    teacher = report.teacher_metric(metric)
    for r in report.rows:
        delta = ""
        value = r.metric(metric)
        if value is not None and teacher and r.kind != "teacher":
            delta = f"{value / teacher - 1:+.1%}"
        kind = r.kind
        cells = [
            r.name,
            kind,
            str(r.num_layers),
            human(r.num_params),
            _fmt(value, 4 if metric == "bits-per-byte" else 3),
            delta,
        ]
        for task in report.tasks:
            p = primary_metric(r.tasks.get(task, {}))
            cells.append(_fmt(p[1]) if p else "-")
        style = (
            "italic dim"
            if r.kind == "baseline"
            else "italic"
            if r.kind == "order"
            else ("bold" if r.kind in ("teacher", "student") else None)
        )
        t.add_row(*cells, style=style)
    out_console.print(t)
    tr = report.trunk
    if tr is not None and tr.used:
        saved = tr.flat_layer_passes / tr.layer_passes if tr.layer_passes else 1.0
        check = tr.check or {}
        out_console.print(
            f"shared trunk: {tr.layer_passes} decoder-layer passes per batch instead of {tr.flat_layer_passes} "
            f"({saved:.2f}x fewer); checked against standalone {check.get('member')}: relative NLL difference "
            f"{check.get('relative_difference', 0):.1e}",
            highlight=False,
        )
    elif tr is not None and report.kind == "family":
        out_console.print(f"member by member: {tr.reason}", highlight=False)
    for order, info in report.orders.items():
        cal = info.get("calibration")
        if cal:
            width = f", beam {info['beam']}" if info.get("beam") else ""
            out_console.print(
                f"{order}{width}: {info['source']} (KL on {cal.get('key')}, {cal.get('tokens', 0):,} "
                f"tokens, {cal.get('evaluated', '?')} members scored)",
                highlight=False,
            )
    for note in report.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, emoji=False)
    secs = report.seconds
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in secs.items() if k != "total")
    say(f"results written to {report.written} ({timing}; total {secs.get('total', 0):.1f}s)")
