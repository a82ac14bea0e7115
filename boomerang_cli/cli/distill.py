"""``boomerang distill``."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.table import Table
from rich.text import Text

from .app import app
from .common import emit_json, err_console, handle_errors, human, out_console, progress, say
from ..distill.config import DistillConfig, DistillResult
from ..distill.recipes import RECIPES
from ..units import parse_count
from .options import (
    AllowPickle,
    Bos,
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
    defaults,
)

D = defaults(DistillConfig)  # every flag's default, read from the config
#: Config fields set below from flags that are read or renamed first; every other field with a
#: flag of its own name takes that flag's value as is.
_BUILT = {"teacher", "student", "output", "data", "data_weights", "tokens", "weights", "compile", "report_to", "shard"}


def parse_tokens(text: str) -> int:
    """``--tokens 2B``/``500M``/``10k``/``1000`` to an integer."""
    from ..errors import BoomerangError

    n = parse_count(text)
    if n is None:
        raise BoomerangError(f"cannot read {text!r} as a number of tokens; write it like 2B, 500M or 100000")
    return n


def _name(ref: str) -> str:
    base = ref.partition("@")[0].rstrip("/").split("/")[-1]
    return re.sub(r"\.gguf$", "", base) or "student"


def resolve_short_form(
    teacher: Optional[str], student: Optional[Path], output: Optional[Path]
) -> tuple[str, Optional[Path], Path]:
    """Fill in what the short forms leave out.

    No TEACHER: the student is ``--student`` or the one the last step recorded
    (``boomerang init-student``), and the teacher the one its boomerang.json
    names. No ``-o``: ``<student dir>-distilled`` next to the student, or
    ``./<teacher name>-distilled`` when the student is made here.
    """
    from ..errors import BoomerangError
    from ..state import last
    from ..student import recorded_teacher

    if teacher is None:
        if student is None:
            remembered = last("student")
            student = Path(remembered) if remembered else None
        if student is None:
            raise BoomerangError(
                "no TEACHER given and no student from an earlier step; run "
                "`boomerang distill TEACHER` (e.g. smollm2-135m) or `boomerang init-student` first"
            )
        teacher = recorded_teacher(student)
        if teacher is None:
            raise BoomerangError(f"{student}: no boomerang.json names its teacher; pass TEACHER")
    if output is None:
        output = (
            (student.parent / f"{student.name}-distilled")
            if student is not None
            else Path(f"{_name(teacher)}-distilled")
        )
    return teacher, student, output


@app.command("distill")
def distill_cmd(
    teacher: Optional[str] = typer.Argument(
        None,
        help="Teacher: local dir, hub id (id@revision), .gguf or builtin (smollm2-135m). Optional when the "
        "student's boomerang.json names it or `boomerang init-student` ran before.",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "-o",
        "--output",
        help="Directory for the distilled student (default: <student>-distilled next to "
        "the student, or ./<teacher>-distilled).",
    ),
    student: Optional[Path] = typer.Option(
        None,
        "--student",
        help="Student directory to train (from init-student); without it one is "
        "initialized from the teacher with the plan flags.",
    ),
    keep_first: int = KeepFirst,
    every: int = Every,
    keep_last: int = KeepLast,
    keep: Optional[str] = Keep,
    data: List[str] = typer.Option(
        D["data"],
        "--data",
        help="Text files/directories, .jsonl, .parquet, a hub dataset (id, id:config, id@split) "
        "or a builtin corpus: 'stdlib' (Python's standard library), 'stdlib-docs' (its docstrings and pydoc's help "
        "topics); repeat for several, read one after the other unless --data-weights is given.",
    ),
    data_weights: Optional[str] = typer.Option(
        None,
        "--data-weights",
        help="Each --data source's share of the training text, one number per --data "
        "in order (e.g. 3,1): documents are interleaved to hold those shares (docs/distill.md).",
    ),
    shuffle: bool = typer.Option(
        D["shuffle"],
        "--shuffle/--no-shuffle",
        help="Read training documents in an "
        "order drawn from --seed, a new one each pass (default: as the sources list them).",
    ),
    mix: Optional[float] = typer.Option(
        None,
        "--mix",
        help="Member-aware training: the probability that a step trains a random member (each "
        "patchable block from the teacher with probability 1/2) instead of the student; only student layers "
        "learn (default: the recipe's; docs/distill.md).",
    ),
    text_field: str = typer.Option(
        D["text_field"], "--text-field", help="Field holding the text in .jsonl/.parquet/hub rows."
    ),
    seq_len: int = typer.Option(D["seq_len"], "--seq-len", help="Tokens per packed sequence."),
    bos: str = Bos,
    batch_size: int = typer.Option(D["batch_size"], "--batch-size", help="Sequences per process and micro-step."),
    grad_accum: int = typer.Option(D["grad_accum"], "--grad-accum", help="Micro-steps per optimizer step."),
    steps: Optional[int] = typer.Option(
        None, "--steps", help=f"Optimizer steps (default: {DistillConfig.DEFAULT_STEPS}, the paper's)."
    ),
    tokens: Optional[str] = typer.Option(
        None, "--tokens", help="Train on this many tokens instead of --steps, e.g. 50M."
    ),
    eval_every: int = typer.Option(
        D["eval_every"], "--eval-every", help="Evaluate on the held-out split every N steps and at the end (0: never)."
    ),
    eval_blocks: int = typer.Option(D["eval_blocks"], "--eval-blocks", help="Held-out sequences per evaluation."),
    log_every: int = typer.Option(D["log_every"], "--log-every", help="Write a metrics.jsonl row every N steps."),
    recipe: str = typer.Option(
        D["recipe"],
        "--recipe",
        help="Defaults for lr, warmup and loss weights: "
        + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values())
        + ".",
    ),
    freeze_embeddings: Optional[bool] = typer.Option(
        None,
        "--freeze-embeddings/--train-embeddings",
        help="Keep the student's input embeddings and LM head "
        "as the teacher's, so members stay tied and between student and teacher in size (default: freeze when "
        "the teacher ties its embeddings).",
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Peak learning rate (AdamW, cosine schedule; default: the recipe's)."
    ),
    weight_decay: float = typer.Option(D["weight_decay"], "--weight-decay", help="AdamW weight decay (matrices only)."),
    warmup: Optional[float] = typer.Option(
        None, "--warmup", help="Warmup, as a fraction of the steps (default: the recipe's)."
    ),
    grad_clip: float = typer.Option(D["grad_clip"], "--grad-clip", help="Clip the gradient norm to this (0: off)."),
    ce_weight: Optional[float] = typer.Option(
        None, "--ce-weight", help="Weight of the cross-entropy term (0: off; default: the recipe's, 1.0)."
    ),
    kl_weight: Optional[float] = typer.Option(
        None, "--kl-weight", help="Weight of the KL term (0: off; default: the recipe's, 0.1)."
    ),
    cos_weight: Optional[float] = typer.Option(
        None,
        "--cos-weight",
        help="Total weight of the cosine term, spread over the aligned pairs (0: off; default: the recipe's, 2.0).",
    ),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="KL temperature T (the term is scaled by T^2; default: the recipe's, 1.0)."
    ),
    no_ce: bool = typer.Option(False, "--no-ce", help="Switch the cross-entropy term off."),
    no_kl: bool = typer.Option(False, "--no-kl", help="Switch the KL term off."),
    no_cos: bool = typer.Option(False, "--no-cos", help="Switch the cosine term off."),
    loss_chunk: Optional[int] = typer.Option(
        None, "--loss-chunk", help="Tokens per CE/KL chunk (default: about 64 MB of fp32 logits)."
    ),
    device: str = typer.Option(D["device"], "--device", help="auto (CUDA if available), cuda or cpu."),
    precision: str = typer.Option(
        D["precision"], "--precision", help="auto (bf16 autocast on GPUs that support it), bf16 or fp32."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute student activations in backward (less memory)."
    ),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the student's decoder layers."),
    fsdp: bool = typer.Option(
        False,
        "--fsdp",
        help="Shard student and teacher with FSDP2 across the processes "
        "of torchrun/accelerate launch (the same as --shard student,teacher; default: DDP, whole copies).",
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="What FSDP2 shards: student, teacher or student,teacher (see docs/distill.md)."
    ),
    seed: int = typer.Option(
        D["seed"],
        "--seed",
        help="Seed of the document order (--shuffle) and of the "
        "members --mix trains. Without those, nothing in distillation is random (the student "
        "starts from the teacher's layers), so runs that differ only in --seed are identical.",
    ),
    save_every: int = typer.Option(D["save_every"], "--save-every", help="Checkpoint every N steps (0: never)."),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir", help="Where checkpoints and live metrics go (default: <output>-checkpoints)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint (start fresh if there is none)."
    ),
    keep_checkpoints: bool = typer.Option(
        False, "--keep-checkpoints", help="Keep the checkpoint directory after success."
    ),
    report_to: List[str] = typer.Option([], "--report-to", help="Also log to tensorboard or wandb (if installed)."),
    logging_dir: Optional[Path] = typer.Option(
        None, "--logging-dir", help="TensorBoard/W&B directory (default: runs/<output name>)."
    ),
    dtype: Optional[str] = Dtype,
    max_shard_size: str = MaxShardSize,
    overwrite: bool = Overwrite,
    json_out: bool = Json,
    quiet: bool = Quiet,
    allow_pickle: bool = AllowPickle,
    trust_remote_code: bool = TrustRemoteCode,
) -> None:
    """Distill a student from TEACHER: CE + KL + cosine on aligned hidden states (SPEC section 3).

    Runs as is on one device; under `torchrun` or `accelerate launch` it trains
    with DDP/FSDP across processes and nodes, rank 0 writing.
    """
    flags = dict(locals())  # the parsed flags, by name
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if not main_rank:
        err_console.quiet = True
    with handle_errors():
        from ..distill import distill
        from ..guard import lock_if
        from ..state import record

        cfg = _config(flags)
        with (
            lock_if(cfg.output, main_rank),
            lock_if(cfg.ckpt_dir, main_rank),  # one writer per output
            progress(not (json_out or quiet) and main_rank) as bar,
        ):
            result = distill(cfg, progress=bar)
        if main_rank:
            remember_warning = record(
                [("teacher", result.teacher), ("student", cfg.student), ("output", cfg.output)],
                student=cfg.output,
                teacher=result.teacher,
            )
            if remember_warning:
                say(f"warning: {remember_warning}", err_console)
    if main_rank:
        _render(result, cfg.teacher, cfg.output, json_out)


def _config(flags: dict[str, Any]) -> DistillConfig:
    """The run's config from ``distill_cmd``'s parsed flags: the short forms filled in, the loss
    weights from the recipe and the ``--no-*`` switches, every flag named like a field as is."""
    from ..data.mix import parse_weights
    from ..distill.recipes import get_recipe

    teacher, student, output = resolve_short_form(flags["teacher"], flags["student"], flags["output"])
    fsdp, shard, data_weights, tokens = flags["fsdp"], flags["shard"], flags["data_weights"], flags["tokens"]
    if fsdp and shard:
        from ..errors import BoomerangError

        raise BoomerangError("--fsdp means --shard student,teacher; pass one of them, not both")
    weights = get_recipe(flags["recipe"]).loss_weights(
        0.0 if flags["no_ce"] else flags["ce_weight"],
        0.0 if flags["no_kl"] else flags["kl_weight"],
        0.0 if flags["no_cos"] else flags["cos_weight"],
        flags["temperature"],
    )
    same = {f.name: flags[f.name] for f in dataclasses.fields(DistillConfig) if f.name in flags.keys() - _BUILT}
    return DistillConfig(
        **same,
        teacher=teacher,
        output=output,
        student=student,
        data=list(flags["data"]),
        data_weights=parse_weights(data_weights) if data_weights is not None else None,
        tokens=parse_tokens(tokens) if tokens else None,
        weights=weights,
        compile=flags["compile_"],
        report_to=list(flags["report_to"]),
        shard=["student", "teacher"] if fsdp else ([shard] if shard else []),
    )


def _render(result: DistillResult, teacher: str, output: Path, json_out: bool) -> None:
    """Warnings on stderr; the run as a table, or one JSON object."""
    for w in result.warnings:
        err_console.print(Text("warning: ", style="yellow") + Text(w), highlight=False, emoji=False)
    if json_out:
        emit_json(result.to_json())
        return
    t = Table(title=f"distilled {result.plan.num_student_layers}-layer student of {teacher}")
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("output", str(output))
    t.add_row("steps", f"{result.steps}" + (f" (resumed at {result.resumed_from})" if result.resumed_from else ""))
    t.add_row("tokens", f"{human(result.tokens)}")
    t.add_row("final loss", "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    if result.eval:
        t.add_row("held-out", "  ".join(f"{k} {v:.4f}" for k, v in result.eval.items() if k != "eval_tokens"))
    t.add_row(
        "throughput",
        f"{result.tokens_per_s:,.0f} tokens/s on {result.world_size} x {result.device} ({result.precision})",
    )
    t.add_row("time", f"{result.elapsed_s:.1f} s")
    out_console.print(t)
    say(f"written to {output}")
