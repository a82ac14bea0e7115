"""``boomerang distill``: train the student against the frozen teacher (SPEC section 3).

The recipe reads top to bottom like a nanoGPT/torchtune training script:
models and plan, data, optimizer and schedule, resume, the loop (teacher
forward, student forward + loss, backward, clip, step), evaluation,
checkpoints, and the final model directory. Accelerate is only the engine:
it picks the device, wraps the student for DDP or FSDP under ``accelerate
launch``/``torchrun``, and supplies autocast; everything else is plain PyTorch.

Batches: ``--batch-size`` sequences per process and micro-step, ``--grad-accum``
micro-steps per optimizer step, so a step sees ``batch x accum x processes``
packed blocks (the *global batch*). Every process reads the same block stream
and takes its own slice of each global batch; loss terms are sums divided by
counts over the whole global batch, so a run's losses do not depend on how
the batch is split across processes and micro-steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__, jsonio
from ..arch import ModelInfo, max_positions, text_config
from ..compose import fingerprint, model_card, require_same_family
from ..data import (DEFAULT_BOS, Block, BlockStream, StreamPosition, block_bos, check_bos_policy, check_source, collate, iter_blocks,
                    load_all_documents, public_sources)
from ..errors import BoomerangError, DataError, PairMismatchError, PlanError, TrainingDivergedError
from ..guard import check_disjoint, local_sources
from ..models import attention_mask, load_model, load_tokenizer, student_from_plan
from ..plan import Plan
from ..progress import NULL, Progress
from ..refs import ModelRef, copy_aux_files, resolve
from ..student import BOOMERANG_JSON, REFERENCE_JSON, StudentRecord, student_plan
from ..tensors import atomic_dir, check_output_dir, parse_dtype, parse_size
from . import checkpoint
from .losses import LogitHead, LossWeights, verify_head
from .recipes import DEFAULT_RECIPE, get_recipe
from .model import DistillStudent, Teacher

METRICS = "metrics.jsonl"
#: Config fields a resumed run must share with its checkpoint (they shape the trajectory).
TRAJECTORY_FIELDS = (
    "data", "text_field", "seq_len", "batch_size", "grad_accum", "seed", "lr", "betas", "eps",
    "weight_decay", "warmup", "grad_clip", "weights", "loss_chunk", "freeze_embeddings", "bos",
)


@dataclass
class DistillConfig:
    """Everything a distillation run depends on; recorded in boomerang.json."""

    teacher: str  # as later commands resolve it (absolute path for a local teacher)
    output: Path
    student: Path | None = None  # an existing student directory; else initialized from the plan
    keep: str | None = None
    keep_first: int = 1
    every: int = 2
    keep_last: int = 2
    data: list[str] = field(default_factory=lambda: ["stdlib"])
    text_field: str = "text"
    seq_len: int = 1024
    bos: str = DEFAULT_BOS  # BOS in front of every packed block: auto | always | never (data.block_bos)
    batch_size: int = 8
    grad_accum: int = 1
    steps: int | None = None
    tokens: int | None = None
    eval_every: int = 0
    eval_blocks: int = 32
    log_every: int = 1
    recipe: str = DEFAULT_RECIPE  # paper | short: where lr, warmup, weights and freezing default from
    lr: float | None = None  # None: the recipe's
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup: float | None = None  # fraction of steps; None: the recipe's
    grad_clip: float = 1.0
    weights: LossWeights | None = None  # None: the recipe's
    #: keep the student's input embeddings and LM head equal to the teacher's (its final
    #: norm still trains), so members are tied when the teacher is; None: freeze exactly
    #: when the teacher ties them (docs/distill.md says why)
    freeze_embeddings: bool | None = None
    loss_chunk: int | None = None  # tokens per CE/KL chunk; None: automatic
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | bf16 | fp32
    gradient_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    save_every: int = 100
    checkpoint_dir: Path | None = None
    resume: bool = False
    keep_checkpoints: bool = False
    report_to: list[str] = field(default_factory=list)
    logging_dir: Path | None = None
    dtype: str | None = None  # dtype of the saved student; None: as trained (fp32)
    max_shard_size: str = "5GB"
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False

    DEFAULT_STEPS = 500  # the paper's step count

    def __post_init__(self) -> None:
        r = get_recipe(self.recipe)
        if self.lr is None:
            self.lr = r.lr
        if self.warmup is None:
            self.warmup = r.warmup
        if self.weights is None:
            self.weights = r.weights
        if self.freeze_embeddings is None:
            self.freeze_embeddings = r.freeze_embeddings

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(f"{self.output}-checkpoints")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, LossWeights):
                v = v.to_json()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


@dataclass
class DistillResult:
    output: str
    teacher: str  # as later commands resolve it (absolute path for a local teacher)
    student_init: str  # the student directory, or "plan" when initialized here
    plan: Plan
    steps: int
    tokens: int
    final: dict[str, float]  # last logged training losses
    eval: dict[str, float] | None
    tokens_per_s: float
    elapsed_s: float
    resumed_from: int | None
    checkpoint_dir: str | None  # kept checkpoints, if any
    world_size: int
    device: str
    precision: str
    warnings: list[str]
    peak_memory_bytes: int | None = None  # CUDA: the most memory torch allocated on this process's GPU
    frozen_embeddings: bool = False  # input embeddings and LM head kept as the teacher's
    bos: bool = False  # every training and validation block started with BOS

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["plan"] = self.plan.to_json()
        return d


# -- setup helpers ----------------------------------------------------------------------------


def _accelerator(cfg: DistillConfig):
    from accelerate import Accelerator

    if cfg.device not in {"auto", "cpu", "cuda"}:
        raise BoomerangError(f"--device must be auto, cpu or cuda (got {cfg.device!r})")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise BoomerangError("--device cuda: no CUDA device is available; use --device cpu")
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    if cfg.precision not in {"auto", "bf16", "fp32"}:
        raise BoomerangError(f"--precision must be auto, bf16 or fp32 (got {cfg.precision!r})")
    bf16_ok = not cpu and torch.cuda.is_bf16_supported()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_ok)
    from accelerate.state import AcceleratorState, GradientState

    # Accelerate keeps its settings in process-wide singletons; a second run in one
    # process (library use, tests) may ask for other ones. The process group stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no"), bf16


@dataclass
class Pair:
    teacher_ref: ModelRef
    teacher_info: ModelInfo
    plan: Plan
    student_dir: Path | None
    record: StudentRecord | None
    warnings: list[str]


def resolve_pair(cfg: DistillConfig) -> Pair:
    """Resolve the teacher, find the plan, and check the student belongs to the teacher."""
    ref = resolve(cfg.teacher, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    info = ModelInfo.load(ref.path, cfg.trust_remote_code)
    L = info.arch.num_layers
    warnings: list[str] = []
    if cfg.student is None:
        return Pair(ref, info, Plan.from_flags(L, cfg.keep, cfg.keep_first, cfg.every, cfg.keep_last), None, None,
                    warnings)
    sdir = Path(cfg.student)
    if not sdir.is_dir():
        raise PairMismatchError(f"--student {sdir}: no such directory")
    s_ref = resolve(str(sdir), allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    s_info = ModelInfo.load(s_ref.path, cfg.trust_remote_code)
    require_same_family(info, s_info)
    if cfg.keep is not None:
        plan, record = Plan.from_keep(L, Plan.parse_keep(cfg.keep)), StudentRecord.read(sdir)
        if record is not None and record.plan.kept != plan.kept:
            raise PlanError(f"--keep {plan.describe()} contradicts {sdir}/boomerang.json "
                            f"(kept {record.plan.describe()}); drop --keep")
    else:
        plan, record = student_plan(sdir, L)
    if plan.num_teacher_layers != L:
        raise PairMismatchError(f"student {sdir} was made from a {plan.num_teacher_layers}-layer teacher, "
                                f"but {cfg.teacher} has {L} layers; pass its own teacher")
    if s_info.arch.num_layers != plan.num_student_layers:
        raise PairMismatchError(f"student {sdir} has {s_info.arch.num_layers} layers but its plan keeps "
                                f"{plan.num_student_layers}; pass --keep with the layers it was built from")
    if record is not None and record.teacher_fingerprint and record.teacher_fingerprint != fingerprint(info):
        warnings.append(f"student {sdir} was initialized from a teacher with other weights "
                        f"({record.teacher_ref}); distilling from {cfg.teacher} anyway")
    return Pair(ref, info, plan, s_ref.path, record, warnings)


def validate(cfg: DistillConfig) -> None:
    """Check every flag that needs no model or data, and the outputs.

    Runs first, so that a typo costs no model loading and leaves nothing on disk.
    """
    for name in ("seq_len", "batch_size", "grad_accum", "log_every", "eval_blocks"):
        if getattr(cfg, name) < 1:
            raise BoomerangError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    for name in ("eval_every", "save_every"):
        if getattr(cfg, name) < 0:
            raise BoomerangError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(cfg, name)})")
    if cfg.steps is not None and cfg.tokens is not None:
        raise BoomerangError("pass --steps or --tokens, not both")
    if (cfg.steps is not None and cfg.steps < 1) or (cfg.tokens is not None and cfg.tokens < 1):
        raise BoomerangError("--steps/--tokens must be at least 1")
    if not (cfg.lr > 0 and 0 <= cfg.warmup <= 1 and cfg.weight_decay >= 0 and cfg.grad_clip >= 0):
        raise BoomerangError("--lr must be > 0, --warmup in [0, 1], --weight-decay and --grad-clip >= 0")
    if cfg.dtype:
        parse_dtype(cfg.dtype)
    check_bos_policy(cfg.bos)
    parse_size(cfg.max_shard_size)
    MetricSink.check(cfg.report_to)
    if not cfg.data:
        raise DataError("no --data given")
    for source in cfg.data:
        check_source(source)
    _check_writable(Path(cfg.output))
    _check_writable(cfg.ckpt_dir)
    check_output_dir(Path(cfg.output), cfg.overwrite)
    if checkpoint.latest(cfg.ckpt_dir) is not None and not cfg.resume and not cfg.overwrite:
        raise BoomerangError(f"{cfg.ckpt_dir} holds checkpoints of an earlier run; pass --resume to continue "
                             "it or --overwrite to start over")


def _check_writable(path: Path) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable directory."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise BoomerangError(f"cannot write to {path} ({p} is not a writable directory); "
                             "choose another -o or --checkpoint-dir")


def _prepare_run_dir(cfg: DistillConfig) -> Path | None:
    """Create the checkpoint directory; returns the checkpoint to resume from, if any."""
    ckpt = cfg.ckpt_dir
    if cfg.overwrite and not cfg.resume:
        _remove_run_files(ckpt)
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoomerangError(f"cannot write to {ckpt} ({exc.strerror or exc}); choose another --checkpoint-dir") from None
    return checkpoint.latest(ckpt) if cfg.resume else None


def _remove_run_files(ckpt: Path) -> None:
    """Remove what a run wrote to its checkpoint directory, and the directory if that empties it."""
    if not ckpt.is_dir():
        return
    for p in ckpt.iterdir():
        if p.name.startswith(("step-", ".step-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name in {checkpoint.LATEST, METRICS}:
            p.unlink()
    with contextlib.suppress(OSError):
        ckpt.rmdir()


def _on_main(acc: Any, fn: Any) -> Any:
    """Run ``fn`` on rank 0 only; a BoomerangError there is raised on every rank."""
    result, error = None, None
    if acc.is_main_process:
        try:
            result = fn()
        except BoomerangError as exc:
            error = exc
    if acc.num_processes > 1:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error
    return result


def freeze_embeddings(model: torch.nn.Module) -> None:
    """Keep input embeddings and LM head (weight and bias) as they are: the teacher's.

    Members then carry one embedding matrix, tied exactly when the teacher is
    (the writer ties by content), so every member's saved size lies between the
    student's and the teacher's. The final norm is small and keeps training.
    """
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.requires_grad_(False)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only, not on biases and norm weights (as HF Trainer does)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_schedule(steps: int, warmup: int):
    """Linear warmup to the peak over ``warmup`` steps, then cosine decay to 0 at ``steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class MetricSink:
    """metrics.jsonl plus optional TensorBoard / W&B; only rank 0 writes."""

    def __init__(self, path: Path, report_to: list[str], logging_dir: Path, run_name: str,
                 config: dict[str, Any], enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.tb = self.wandb = None
        if enabled and "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(logging_dir))
        if enabled and "wandb" in report_to:
            import wandb

            self.wandb = wandb.init(project="boomerang", name=run_name, config=config, dir=str(logging_dir))

    @staticmethod
    def check(report_to: list[str]) -> None:
        """Each ``--report-to`` target is known and its package installed."""
        for target in report_to:
            if target not in {"tensorboard", "wandb"}:
                raise BoomerangError(f"--report-to {target!r}: use tensorboard or wandb")
            try:
                if target == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
                else:
                    import wandb  # noqa: F401
            except ImportError:
                raise BoomerangError(f"--report-to {target} needs the {target} package; run: pip install {target}") from None

    def truncate(self, step: int) -> None:
        """Forget rows after ``step`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(r + "\n" for r in rows))

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(jsonio.dumps(row) + "\n")
        prefix = row.get("split", "train")
        scalars = {f"{prefix}/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# -- the run ----------------------------------------------------------------------------------


def distill(cfg: DistillConfig, progress: Progress = NULL) -> DistillResult:
    """Distill the student of ``cfg`` and write it to ``cfg.output`` (rank 0)."""
    t_start = time.time()
    acc, bf16 = _accelerator(cfg)
    rank, world, is_main = acc.process_index, acc.num_processes, acc.is_main_process
    device = acc.device
    progress = progress if is_main else NULL
    _on_main(acc, lambda: validate(cfg))

    # 1. Teacher, plan and student; refuse a mismatched pair early.
    pair = resolve_pair(cfg)
    plan = pair.plan
    inputs = [("teacher", pair.teacher_ref.path), ("student", pair.student_dir), *local_sources(cfg.data)]
    check_disjoint(cfg.output, inputs)
    check_disjoint(cfg.ckpt_dir, inputs, "--checkpoint-dir")
    max_pos = max_positions(pair.teacher_info.config)
    if max_pos is not None and cfg.seq_len > max_pos:
        raise BoomerangError(f"--seq-len {cfg.seq_len} is longer than the model's {max_pos} positions; "
                             f"use --seq-len {max_pos} or less")

    # 2. Data: one packed block stream, read by every process; each takes its slice of a step.
    tokenizer = load_tokenizer(pair.teacher_ref.path, cfg.trust_remote_code,
                               why="distill tokenizes --data with the teacher's tokenizer")
    per_rank = cfg.batch_size * cfg.grad_accum
    global_blocks = per_rank * world
    steps = cfg.steps if cfg.steps is not None else (
        math.ceil(cfg.tokens / (global_blocks * cfg.seq_len)) if cfg.tokens is not None else cfg.DEFAULT_STEPS)

    bos_id = block_bos(tokenizer, cfg.bos)

    def train_stream(position: StreamPosition | None = None, repeat: bool = True) -> BlockStream:
        return BlockStream(lambda: load_all_documents(cfg.data, "train", cfg.text_field), tokenizer, cfg.seq_len,
                           repeat=repeat, pad_last=not repeat, position=position,
                           describe=f"training split of {', '.join(cfg.data)}", bos_id=bos_id)

    next(iter(train_stream(repeat=False)))  # empty or unreadable data fails here, before the models load
    val_blocks: list[Block] = []
    if cfg.eval_every > 0:
        val_blocks = list(iter_blocks(cfg.data, "validation", tokenizer, cfg.seq_len,
                                      text_field=cfg.text_field, max_blocks=cfg.eval_blocks, bos_id=bos_id))

    # 3. Models. The student is trained in fp32 (bf16 autocast on GPU); the teacher is frozen.
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    w = cfg.weights
    teacher_dtype = torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32
    teacher_model = load_model(pair.teacher_ref.path, teacher_dtype, device, cfg.trust_remote_code)
    layers_path = pair.teacher_info.arch.layers_path
    student_model = (load_model(pair.student_dir, torch.float32, "cpu", cfg.trust_remote_code) if pair.student_dir
                     else student_from_plan(pair.teacher_info, plan, cfg.trust_remote_code))
    verify_head(student_model, LogitHead.of(student_model), int(text_config(student_model.config).vocab_size))
    frozen = (cfg.freeze_embeddings if cfg.freeze_embeddings is not None else pair.teacher_info.arch.tied)
    if frozen:
        freeze_embeddings(student_model)
    if cfg.gradient_checkpointing:
        student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student_model.train()
    need_teacher = bool(w.kl or w.cosine)
    teacher = Teacher(teacher_model, layers_path, plan.aligned_teacher_hidden(), keep_hidden=bool(w.cosine))
    model = DistillStudent(student_model, layers_path, ce_weight=w.ce, kl_weight=w.kl, cos_weight=w.cosine,
                           temperature=w.temperature, teacher_head=teacher.head if w.kl else None,
                           chunk=cfg.loss_chunk)
    if cfg.compile:
        for layer in student_model.get_submodule(layers_path):
            layer.forward = torch.compile(layer.forward)

    # 4. Optimizer and schedule (paper defaults), then the distributed wrapping.
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                  eps=cfg.eps, fused=False)
    warmup = math.ceil(cfg.warmup * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(steps, warmup))
    model, optimizer = acc.prepare(model, optimizer)

    # 5. The checkpoint directory; resume: weights, optimizer, schedule, RNG and data position.
    resume_from = _on_main(acc, lambda: _prepare_run_dir(cfg))
    if not is_main and cfg.resume:
        resume_from = checkpoint.latest(cfg.ckpt_dir)
    try:
        start_step, tokens_seen, position = 0, 0, StreamPosition()
        resumed_from = None
        run_name = Path(cfg.output).name
        sink = MetricSink(cfg.ckpt_dir / METRICS, cfg.report_to, Path(cfg.logging_dir or Path("runs") / run_name),
                          run_name, cfg.to_json(), is_main)
        if resume_from is not None:
            state = checkpoint.read_trainer_state(resume_from)
            _check_resumable(cfg, state, world, steps)
            checkpoint.load(resume_from, model, optimizer, scheduler, rank, is_main)
            start_step, tokens_seen = int(state["step"]), int(state["tokens"])
            position = StreamPosition.from_json(state["position"])
            resumed_from = start_step
            sink.truncate(start_step)
        stream = train_stream(position)
        blocks_iter = iter(stream)

        # 6. The loop.
        last_good: Path | None = resume_from
        final: dict[str, float] = {}
        last_eval: dict[str, float] | None = None
        train_time, train_tokens = 0.0, 0
        task = progress.task("distilling", steps, unit="step")
        task.advance(start_step)
        if val_blocks and start_step == 0:  # the starting point, to compare the end with
            last_eval = evaluate(model, teacher, acc, val_blocks, cfg.batch_size, need_teacher)
            sink.log({"step": 0, "split": "validation", "tokens": 0, **last_eval})
        for step in range(start_step, steps):
            t0 = time.time()
            ids, labels, mask = collate([next(blocks_iter) for _ in range(global_blocks)])
            tok_denom = int(mask.sum())
            totals = forward_backward(model, teacher, acc, ids, labels, mask, cfg.batch_size, cfg.grad_accum,
                                      need_teacher)
            loss, ce, kl, cos = (float(v) for v in totals)
            if not math.isfinite(loss):
                raise _diverged(f"the loss became {loss}", step, last_good, cfg)
            grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
            if not math.isfinite(grad_norm):
                raise _diverged(f"the gradient norm became {grad_norm}", step, last_good, cfg)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.time() - t0
            tokens_seen += tok_denom
            train_time += dt
            train_tokens += tok_denom
            done = step + 1
            final = {"loss": loss, "ce": ce, "kl": kl, "cosine": cos}
            task.advance(1)
            task.update(loss=loss, ce=ce, kl=kl, cos=cos, tok_s=f"{tok_denom / dt:,.0f}")
            if done % cfg.log_every == 0 or done == steps:
                sink.log({"step": done, "split": "train", "tokens": tokens_seen, **final, "lr": lr,
                          "grad_norm": grad_norm, "tokens_per_s": tok_denom / dt,
                          "elapsed_s": round(time.time() - t_start, 3)})
            if val_blocks and (done % cfg.eval_every == 0 or done == steps):
                last_eval = evaluate(model, teacher, acc, val_blocks, cfg.batch_size, need_teacher)
                sink.log({"step": done, "split": "validation", "tokens": tokens_seen, **last_eval})
            if cfg.save_every and done % cfg.save_every == 0 and done < steps:
                trainer_state = {"step": done, "tokens": tokens_seen, "position": stream.position.to_json(),
                                 "world_size": world, "steps": steps, "config": cfg.to_json(),
                                 "boomerang_version": __version__}
                last_good = checkpoint.save(cfg.ckpt_dir, done, model, optimizer, scheduler, trainer_state, is_main)
        progress.finish(task)
        sink.close()

        # 7. The distilled student, a standard HF directory (rank 0 writes; FSDP gathers on all ranks).
        state_dict = acc.get_state_dict(model)
        elapsed = time.time() - t_start
        result = DistillResult(
            output=str(cfg.output), teacher=pair.teacher_ref.stable_ref,
            student_init=str(cfg.student) if cfg.student else "plan", plan=plan, steps=steps, tokens=tokens_seen,
            final=final, eval=last_eval, tokens_per_s=train_tokens / train_time if train_time else 0.0,
            elapsed_s=elapsed, resumed_from=resumed_from,
            checkpoint_dir=str(cfg.ckpt_dir) if cfg.keep_checkpoints else None, world_size=world,
            device=str(device.type), precision="bf16" if bf16 else "fp32", warnings=pair.warnings,
            peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            frozen_embeddings=frozen,
            bos=bos_id is not None,
        )
        if is_main:
            _write_student(cfg, pair, acc.unwrap_model(model).model, state_dict, result)
            if not cfg.keep_checkpoints:
                _remove_run_files(cfg.ckpt_dir)
    except BaseException:
        if is_main and checkpoint.latest(cfg.ckpt_dir) is None:
            _remove_run_files(cfg.ckpt_dir)  # nothing worth resuming: leave nothing behind
        raise
    acc.wait_for_everyone()
    return result


def forward_backward(model: Any, teacher: Teacher, acc: Any, ids: torch.Tensor, labels: torch.Tensor,
                     mask: torch.Tensor, batch_size: int, grad_accum: int, need_teacher: bool) -> torch.Tensor:
    """Forward and backward of this process's share of one global batch ``(ids, labels, mask)``.

    Returns ``[loss, ce, kl, cosine]`` of the whole global batch (summed over
    processes); gradients are left in the parameters for the optimizer step.
    """
    rank, world = acc.process_index, acc.num_processes
    device = acc.device
    ce_denom, tok_denom = int((labels != -100).sum()), int(mask.sum())
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    per_rank = batch_size * grad_accum
    for m in range(grad_accum):
        lo = rank * per_rank + m * batch_size
        x, y, msk = (t[lo:lo + batch_size].to(device) for t in (ids, labels, mask))
        sync = m == grad_accum - 1
        with contextlib.nullcontext() if sync else acc.no_sync(model):
            out = _micro_batch(model, teacher, acc, x, y, msk, ce_denom, tok_denom, need_teacher)
            # DDP/FSDP average gradients over processes; our terms are already
            # global means split into per-process sums, so undo the average.
            acc.backward(out["loss"] * world)
        totals += _terms(out)
        del out
    if world > 1:
        torch.distributed.all_reduce(totals)
    return totals


def _micro_batch(model: Any, teacher: Teacher, acc: Any, x: torch.Tensor, y: torch.Tensor, msk: torch.Tensor,
                 ce_denom: int, tok_denom: int, need_teacher: bool) -> dict[str, torch.Tensor]:
    """Teacher forward (if a term needs it), then the student's forward and loss, on one micro-batch."""
    attn = attention_mask(msk)
    t_out = None
    if need_teacher:
        with acc.autocast():
            t_out = teacher(x, attn)
    return model(x, y, msk, attn, t_out.final if t_out else None, t_out.aligned if t_out else [],
                 ce_denom, tok_denom)


def _terms(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([out[k].detach().double() for k in ("loss", "ce", "kl", "cosine")])


def _diverged(what: str, step: int, last_good: Path | None, cfg: DistillConfig) -> TrainingDivergedError:
    kept = (f"the last good checkpoint ({last_good.name}) is kept in {cfg.ckpt_dir}; lower --lr and rerun "
            "with --resume" if last_good else "no checkpoint was saved yet; lower --lr and rerun")
    return TrainingDivergedError(f"{what} at step {step + 1}; {kept}")


def _check_resumable(cfg: DistillConfig, state: dict[str, Any], world: int, steps: int) -> None:
    old = {"bos": "never", **state.get("config", {})}  # checkpoints from before --bos packed without it
    new = cfg.to_json()
    diffs = [k for k in TRAJECTORY_FIELDS if old.get(k) != new.get(k)]
    if int(state.get("steps", steps)) != steps:
        diffs.append("steps/tokens")
    if diffs:
        raise BoomerangError(f"cannot resume: {', '.join(diffs)} differ from the checkpoint's run; "
                             "pass the same flags (or --overwrite to start over)")
    if int(state.get("world_size", world)) != world:
        raise BoomerangError(f"the checkpoint was written by {state['world_size']} processes; "
                             f"resume with the same number (now {world})")


def evaluate(model: Any, teacher: Teacher, acc: Any, blocks: list[Block], batch_size: int,
             need_teacher: bool) -> dict[str, float]:
    """Loss terms on held-out blocks, each process scoring its share (collective)."""
    rank, world = acc.process_index, acc.num_processes
    ids, labels, mask = collate(blocks)
    ce_denom, tok_denom = int((labels != -100).sum()), int(mask.sum())
    mine = list(range(rank, len(blocks), world))
    n_real = len(mine)
    mine += [0] * (math.ceil(len(blocks) / world) - n_real)  # equal work per rank: masked-out fillers
    keep = torch.arange(len(mine)) < n_real
    totals = torch.zeros(4, dtype=torch.float64, device=acc.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(mine), batch_size):
            sel = torch.tensor(mine[s:s + batch_size])
            x = ids[sel].to(acc.device)
            msk = (mask[sel] & keep[s:s + batch_size].unsqueeze(1)).to(acc.device)
            y = torch.where(msk, labels[sel].to(acc.device), torch.full_like(x, -100))
            totals += _terms(_micro_batch(model, teacher, acc, x, y, msk, ce_denom, tok_denom, need_teacher))
    if was_training:
        model.train()
    if world > 1:
        torch.distributed.all_reduce(totals)
    loss, ce, kl, cos = (float(v) for v in totals)
    return {"loss": loss, "ce": ce, "kl": kl, "cosine": cos, "perplexity": math.exp(min(ce, 50.0)),
            "eval_tokens": tok_denom}


def _write_student(cfg: DistillConfig, pair: Pair, hf_model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                   result: DistillResult) -> None:
    prefix = "model."
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    dtype = parse_dtype(cfg.dtype) if cfg.dtype else None
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    training = {
        "config": cfg.to_json(), "steps": result.steps, "tokens": result.tokens,
        "final_losses": result.final, "final_eval": result.eval, "world_size": result.world_size,
        "device": result.device, "precision": result.precision, "elapsed_s": round(result.elapsed_s, 1),
        "tokens_per_s": result.tokens_per_s, "resumed_from": result.resumed_from,
        "peak_memory_bytes": result.peak_memory_bytes, "frozen_embeddings": result.frozen_embeddings,
        "bos": result.bos,
    }
    record = StudentRecord(pair.plan, pair.teacher_ref.stable_ref, fingerprint(pair.teacher_info), training=training)
    name = Path(cfg.output).name
    w = cfg.weights
    meta = pair.teacher_ref.card_metadata()
    teacher = pair.teacher_ref.public_name
    card = model_card(
        f"{name}: boomerang-distilled student of {teacher}",
        meta["base_models"],
        f"Distilled by `boomerang distill` (boomerang {__version__}) from {teacher}, keeping "
        f"{pair.plan.num_student_layers} of its {pair.plan.num_teacher_layers} layers "
        f"(kept: {pair.plan.describe()}).\n\n"
        f"Training: {result.steps} steps, {result.tokens:,} tokens of {public_sources(cfg.data)} in blocks of "
        f"{cfg.seq_len}{' starting with BOS' if result.bos else ''}; loss {w.ce} x CE + {w.kl} x T^2 x KL (T={w.temperature}) + {w.cosine} x cosine "
        f"over {pair.plan.num_student_layers + 1} aligned hidden states; AdamW lr {cfg.lr}, cosine schedule ({cfg.recipe} recipe)"
        + ("; input embeddings and LM head kept as the teacher's" if result.frozen_embeddings else "") + ".\n\n"
        "Final training losses: " + ", ".join(f"{k} {v:.4f}" for k, v in result.final.items()) + ".\n\n"
        "Build every size between this student and its teacher with `boomerang family`.",
        license=meta["license"],
    )
    with atomic_dir(Path(cfg.output), cfg.overwrite) as tmp:
        copy_aux_files(pair.student_dir or pair.teacher_ref.path, tmp)
        hf_model.save_pretrained(str(tmp), state_dict=sd, max_shard_size=parse_size(cfg.max_shard_size))
        if dtype is not None:
            cfg_path = tmp / "config.json"
            data = json.loads(cfg_path.read_text())
            data["dtype"] = str(dtype).removeprefix("torch.")
            cfg_path.write_text(json.dumps(data, indent=2) + "\n")
        (tmp / "README.md").write_text(card)
        (tmp / BOOMERANG_JSON).write_text(json.dumps(record.to_json(), indent=2) + "\n")
        (tmp / REFERENCE_JSON).write_text(json.dumps(pair.plan.reference_student_config(), indent=2) + "\n")
        metrics = cfg.ckpt_dir / METRICS
        if metrics.exists():
            shutil.copy2(metrics, tmp / METRICS)
