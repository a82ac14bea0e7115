"""``boomerang distill``: train the student against the frozen teacher (SPEC section 3).

The recipe reads top to bottom like a nanoGPT/torchtune training script:
models and plan, data, optimizer and schedule, resume, the loop (teacher
forward, student forward + loss, backward, clip, step), evaluation,
checkpoints, and the final model directory. Accelerate is only the engine:
it picks the device, wraps the student for DDP under ``accelerate
launch``/``torchrun``, and supplies autocast; everything else is plain PyTorch.
``--fsdp`` shards student and teacher with FSDP2 instead (:mod:`.fsdp`).

Batches: ``--batch-size`` sequences per process and micro-step, ``--grad-accum``
micro-steps per optimizer step, so a step sees ``batch x accum x processes``
packed blocks (the *global batch*). Every process reads the same block stream
and takes its own slice of each global batch; loss terms are sums divided by
counts over the whole global batch, so a run's losses do not depend on how
the batch is split across processes and micro-steps.
"""


from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from .. import __version__
from ..arch import ModelInfo, max_positions
from ..data import Block, BlockStream, StreamPosition, block_bos, collate, iter_blocks, load_all_documents
from ..errors import BoomerangError, PairMismatchError, TrainingDivergedError
from ..guard import check_disjoint, local_sources
from ..models import load_tokenizer
from ..pair import Pair, open_pair
from ..plan import Plan
from ..progress import NULL, Progress
from ..refs import ModelRef, resolve
from . import checkpoint, fsdp, sharded_checkpoint, sharded_load
from .config import DistillConfig, DistillResult, check_resumable, run_identity, validate
from .metrics import METRICS, MetricSink
from .model import DistillStudent, Teacher
from .output import write_student
from .step import evaluate, forward_backward

if TYPE_CHECKING:
    from transformers import PreTrainedModel


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

def open_models(cfg: DistillConfig) -> tuple[ModelRef, ModelInfo, Plan, Pair | None]:
    """The teacher, the plan, and with ``--student`` the pair, checked as ``family`` checks it
    (except that a student made from another checkpoint of the teacher is a warning)."""
    ref = resolve(cfg.teacher, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if cfg.student is None:
        info = ModelInfo.load(ref.path, cfg.trust_remote_code)
        return ref, info, Plan.from_flags(info.arch.num_layers, cfg.keep, cfg.keep_first, cfg.every,
                                          cfg.keep_last), None
    sdir = Path(cfg.student)
    if not sdir.is_dir():
        raise PairMismatchError(f"--student {sdir}: no such directory")
    s_ref = resolve(str(sdir), allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    keep = Plan.parse_keep(cfg.keep) if cfg.keep is not None else None
    pair = open_pair(ref, s_ref, keep=keep, trust_remote_code=cfg.trust_remote_code, other_teacher="warn",
                     force_flag=None)
    return ref, pair.teacher, pair.plan, pair


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


def freeze_embeddings(model: PreTrainedModel) -> None:
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
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


# -- the run ----------------------------------------------------------------------------------


@dataclass
class _Run:
    """What setup hands to the loop and the finish: one run's accelerator, models, data and optimizer."""

    cfg: DistillConfig
    acc: Any
    bf16: bool
    sharding: fsdp.Sharding
    t_start: float
    t_ref: ModelRef = field(init=False)
    t_info: ModelInfo = field(init=False)
    plan: Plan = field(init=False)
    student_dir: Path | None = field(init=False)
    warnings: list[str] = field(init=False)
    steps: int = field(init=False)
    global_blocks: int = field(init=False)
    bos_id: int | None = field(init=False)
    tokenizer: Any = field(init=False)
    val_blocks: list[Block] = field(init=False)
    teacher_model: Any = field(init=False)
    teacher: Teacher = field(init=False)
    model: Any = field(init=False)
    optimizer: Any = field(init=False)
    scheduler: Any = field(init=False)
    frozen: bool = field(init=False)
    need_teacher: bool = field(init=False)

    @property
    def is_main(self) -> bool:
        return bool(self.acc.is_main_process)

    def train_stream(self, position: StreamPosition | None = None, repeat: bool = True) -> BlockStream:
        cfg = self.cfg
        return BlockStream(lambda: load_all_documents(cfg.data, "train", cfg.text_field), self.tokenizer, cfg.seq_len,
                           repeat=repeat, pad_last=not repeat, position=position,
                           describe=f"training split of {', '.join(cfg.data)}", bos_id=self.bos_id)


@dataclass
class _Loop:
    """Where the loop stands: resumed or fresh, and what it has measured so far."""

    stream: BlockStream
    sink: MetricSink
    start_step: int = 0
    tokens_seen: int = 0
    resumed_from: int | None = None
    last_good: Path | None = None
    final: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] | None = None
    train_time: float = 0.0
    train_tokens: int = 0
    memory: Any = None
    identity: dict[str, Any] | None = None  # teacher, student, plan and data by content (config.run_identity)


def distill(cfg: DistillConfig, progress: Progress = NULL) -> DistillResult:
    """Distill the student of ``cfg`` and write it to ``cfg.output`` (rank 0).

    Like a torchtune recipe: :func:`_setup` (inputs, data, models, optimizer),
    :func:`_train` (the loop) and :func:`_finish` (the student directory).
    """
    run = _setup(cfg)
    progress = progress if run.is_main else NULL
    # The checkpoint directory; resume: weights, optimizer, schedule, RNG and data position.
    resume_from = _on_main(run.acc, lambda: checkpoint.prepare_run_dir(cfg.ckpt_dir, overwrite=cfg.overwrite,
                                                                       resume=cfg.resume))
    if not run.is_main and cfg.resume:
        resume_from = checkpoint.latest(cfg.ckpt_dir)
    try:
        loop = _resume(run, resume_from)
        _train(run, loop, progress)
        result = _finish(run, loop)
    except BaseException:
        if run.is_main and resume_from is None and checkpoint.latest(cfg.ckpt_dir) is None:
            checkpoint.remove_run_files(cfg.ckpt_dir)  # nothing worth resuming: leave nothing behind
        raise
    run.acc.wait_for_everyone()
    return result


def _setup(cfg: DistillConfig) -> _Run:
    """Inputs checked, data read once, models loaded and wrapped, optimizer and schedule made."""
    t_start = time.time()
    acc, bf16 = _accelerator(cfg)
    _on_main(acc, lambda: validate(cfg))
    run = _Run(cfg, acc, bf16, fsdp.Sharding.create(cfg.shard, acc.num_processes, acc.device, bf16), t_start)
    _on_main(acc, lambda: sharded_checkpoint.check_resume(cfg.ckpt_dir, cfg.resume, run.sharding.dcp))
    _setup_inputs(run)
    _setup_models(run)
    return run


def _setup_inputs(run: _Run) -> None:
    """Teacher, plan and student (a mismatched pair refused early); the data, read by every process."""
    cfg = run.cfg
    # Rank 0 first: it converts a GGUF or pickle source into the cache once, which every rank then
    # reads (its rows when sharded).
    if run.acc.num_processes > 1:
        _on_main(run.acc, lambda: open_models(cfg))
    run.t_ref, run.t_info, run.plan, pair = open_models(cfg)
    run.student_dir = Path(pair.student_ref.path) if pair is not None else None
    run.warnings = (list(pair.warnings) if pair is not None else []) + run.sharding.warnings
    inputs = [("teacher", run.t_ref.path), ("student", run.student_dir), *local_sources(cfg.data)]
    check_disjoint(cfg.output, inputs)
    check_disjoint(cfg.ckpt_dir, inputs, "--checkpoint-dir")
    max_pos = max_positions(run.t_info.config)
    if max_pos is not None and cfg.seq_len > max_pos:
        raise BoomerangError(f"--seq-len {cfg.seq_len} is longer than the model's {max_pos} positions; "
                             f"use --seq-len {max_pos} or less")

    # One packed block stream, read by every process; each takes its slice of a step.
    run.tokenizer = load_tokenizer(run.t_ref.path, cfg.trust_remote_code,
                                   why="distill tokenizes --data with the teacher's tokenizer")
    run.global_blocks = cfg.batch_size * cfg.grad_accum * run.acc.num_processes
    run.steps = cfg.steps if cfg.steps is not None else (
        math.ceil(cfg.tokens / (run.global_blocks * cfg.seq_len)) if cfg.tokens is not None else cfg.DEFAULT_STEPS)
    run.bos_id = block_bos(run.tokenizer, cfg.bos)
    next(iter(run.train_stream(repeat=False)))  # empty or unreadable data fails here, before the models load
    run.val_blocks = []
    if cfg.eval_every > 0:
        run.val_blocks = list(iter_blocks(cfg.data, "validation", run.tokenizer, cfg.seq_len,
                                          text_field=cfg.text_field, max_blocks=cfg.eval_blocks, bos_id=run.bos_id))


def _setup_models(run: _Run) -> None:
    """The student is trained in fp32 (bf16 autocast on GPU), the teacher frozen; then the optimizer
    and schedule (paper defaults) and the distributed wrapping (FSDP2: before the optimizer)."""
    cfg, device, t_info = run.cfg, run.acc.device, run.t_info
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    w = cfg.weights
    assert w is not None and cfg.lr is not None and cfg.warmup is not None  # filled from the recipe (__post_init__)
    teacher_dtype = torch.bfloat16 if run.bf16 and device.type == "cuda" else torch.float32
    layers_path = t_info.arch.layers_path
    # Sharded (--fsdp/--shard): built on meta, each rank reads only its rows when sharded (sharded_load).
    run.teacher_model = run.sharding.shard_teacher(
        sharded_load.teacher(run.sharding, t_info, teacher_dtype, cfg.trust_remote_code), layers_path)
    student_model = sharded_load.student(run.sharding, t_info, run.plan, run.student_dir, cfg.trust_remote_code)
    run.frozen = (cfg.freeze_embeddings if cfg.freeze_embeddings is not None else t_info.arch.tied)
    if run.frozen:
        freeze_embeddings(student_model)
    if cfg.gradient_checkpointing:
        student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student_model.train()
    run.need_teacher = bool(w.kl or w.cosine)
    run.teacher = Teacher(run.teacher_model, layers_path, run.plan.aligned_teacher_hidden(),
                          keep_hidden=bool(w.cosine))
    model = DistillStudent(student_model, layers_path, ce_weight=w.ce, kl_weight=w.kl, cos_weight=w.cosine,
                           temperature=w.temperature, teacher_head=run.teacher.head if w.kl else None,
                           chunk=cfg.loss_chunk)
    if cfg.compile:
        for layer in student_model.get_submodule(layers_path):
            layer.forward = torch.compile(layer.forward)

    model = run.sharding.shard_student(model, layers_path)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cast(tuple[float, float], tuple(cfg.betas)),
                                  eps=cfg.eps, fused=False)
    warmup = math.ceil(cfg.warmup * run.steps)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(run.steps, warmup))
    if not run.sharding.student:
        model, optimizer = run.acc.prepare(model, optimizer)
    run.model, run.optimizer = model, optimizer


def _resume(run: _Run, resume_from: Path | None) -> _Loop:
    """The metrics sink, and where the loop starts: step 0, or a checkpoint's step, data position and state."""
    cfg, acc = run.cfg, run.acc
    run_name = Path(cfg.output).name
    sink = MetricSink(cfg.ckpt_dir / METRICS, cfg.report_to, Path(cfg.logging_dir or Path("runs") / run_name),
                      run_name, cfg.to_json(), run.is_main)
    start_step, tokens_seen, position, resumed_from = 0, 0, StreamPosition(), None
    saves = bool(cfg.save_every) and cfg.save_every < run.steps
    # Teacher and student by content: hashed on rank 0 only (once; rank 0 writes the checkpoints).
    identity = _on_main(acc, lambda: run_identity(run.t_ref.path, run.t_ref.stable_ref, run.student_dir, run.plan,
                                                  cfg.data)) if (resume_from is not None or saves) else None
    if resume_from is not None:
        state = checkpoint.read_trainer_state(resume_from)
        _on_main(acc, lambda: check_resumable(cfg, state, acc.num_processes, run.steps, identity, {
            "teacher": run.t_ref.path, "student": run.student_dir, "data": cfg.data}))
        sharded_checkpoint.load(resume_from, run.model, run.optimizer, run.scheduler, acc.process_index,
                                run.is_main)  # either kind
        start_step, tokens_seen = int(state["step"]), int(state["tokens"])
        position = StreamPosition.from_json(state["position"])
        resumed_from = start_step
        sink.truncate(start_step)
    return _Loop(run.train_stream(position), sink, start_step, tokens_seen, resumed_from, last_good=resume_from,
                 identity=identity)


def _train(run: _Run, loop: _Loop, progress: Progress) -> None:
    """The loop: one global batch per step, logged, evaluated and checkpointed on schedule."""
    cfg, acc, model, optimizer, steps = run.cfg, run.acc, run.model, run.optimizer, run.steps
    blocks_iter = iter(loop.stream)
    task = progress.task("distilling", steps, unit="step")
    task.advance(loop.start_step)
    if run.val_blocks and loop.start_step == 0:  # the starting point, to compare the end with
        loop.last_eval = evaluate(model, run.teacher, acc, run.val_blocks, cfg.batch_size, run.need_teacher)
        loop.sink.log({"step": 0, "split": "validation", "tokens": 0, **loop.last_eval})
    for step in range(loop.start_step, steps):
        t0 = time.time()
        ids, labels, mask = collate([next(blocks_iter) for _ in range(run.global_blocks)])
        tok_denom = int(mask.sum())
        totals = forward_backward(model, run.teacher, acc, ids, labels, mask, cfg.batch_size, cfg.grad_accum,
                                  run.need_teacher)
        loss, ce, kl, cos = (float(v) for v in totals)
        if not math.isfinite(loss):
            raise _diverged(f"the loss became {loss}", step, loop.last_good, cfg)
        grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        if not math.isfinite(grad_norm):
            raise _diverged(f"the gradient norm became {grad_norm}", step, loop.last_good, cfg)
        lr = run.scheduler.get_last_lr()[0]
        optimizer.step()
        if step == loop.start_step:
            loop.memory = fsdp.memory_report(model, optimizer, run.teacher_model, acc.device)
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0
        loop.tokens_seen += tok_denom
        loop.train_time += dt
        loop.train_tokens += tok_denom
        done = step + 1
        loop.final = {"loss": loss, "ce": ce, "kl": kl, "cosine": cos}
        task.advance(1)
        task.update(loss=loss, ce=ce, kl=kl, cos=cos, tok_s=f"{tok_denom / dt:,.0f}")
        if done % cfg.log_every == 0 or done == steps:
            loop.sink.log({"step": done, "split": "train", "tokens": loop.tokens_seen, **loop.final, "lr": lr,
                           "grad_norm": grad_norm, "tokens_per_s": tok_denom / dt,
                           "elapsed_s": round(time.time() - run.t_start, 3)})
        if run.val_blocks and (done % cfg.eval_every == 0 or done == steps):
            loop.last_eval = evaluate(model, run.teacher, acc, run.val_blocks, cfg.batch_size, run.need_teacher)
            loop.sink.log({"step": done, "split": "validation", "tokens": loop.tokens_seen, **loop.last_eval})
        if cfg.save_every and done % cfg.save_every == 0 and done < steps:
            _save(run, loop, done)
    progress.finish(task)
    loop.sink.close()


def _save(run: _Run, loop: _Loop, done: int) -> None:
    """A checkpoint after ``done`` steps: the last good one a diverged run names."""
    cfg = run.cfg
    trainer_state = {"step": done, "tokens": loop.tokens_seen, "position": loop.stream.position.to_json(),
                     "world_size": run.acc.num_processes, "steps": run.steps, "config": cfg.to_json(),
                     "identity": loop.identity, "boomerang_version": __version__}
    save = sharded_checkpoint.save if run.sharding.dcp else checkpoint.save
    loop.last_good = save(cfg.ckpt_dir, done, run.model, run.optimizer, run.scheduler, trainer_state, run.is_main)


def _finish(run: _Run, loop: _Loop) -> DistillResult:
    """The distilled student, a standard HF directory (rank 0 writes; FSDP gathers on all ranks)."""
    cfg, acc, device = run.cfg, run.acc, run.acc.device
    # Done with the teacher: freed, with the AdamW state, before the gather (fsdp.release).
    del run.teacher, run.teacher_model
    fsdp.release(run.model, run.optimizer)
    state_dict = run.sharding.state_dict(acc, run.model)
    elapsed = time.time() - run.t_start
    result = DistillResult(
        output=str(cfg.output), teacher=run.t_ref.stable_ref,
        student_init=str(cfg.student) if cfg.student else "plan", plan=run.plan, steps=run.steps,
        tokens=loop.tokens_seen, final=loop.final, eval=loop.last_eval,
        tokens_per_s=loop.train_tokens / loop.train_time if loop.train_time else 0.0,
        elapsed_s=elapsed, resumed_from=loop.resumed_from,
        checkpoint_dir=str(cfg.ckpt_dir) if cfg.keep_checkpoints else None, world_size=acc.num_processes,
        device=str(device.type), precision="bf16" if run.bf16 else "fp32", warnings=run.warnings,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        frozen_embeddings=run.frozen,
        bos=run.bos_id is not None, memory=loop.memory,
    )
    if run.is_main:
        write_student(cfg, run.t_ref, run.t_info, run.plan, run.student_dir, acc.unwrap_model(run.model).model,
                       state_dict, result)
        if not cfg.keep_checkpoints:
            checkpoint.remove_run_files(cfg.ckpt_dir)
    return result


def _diverged(what: str, step: int, last_good: Path | None, cfg: DistillConfig) -> TrainingDivergedError:
    kept = (f"the last good checkpoint ({last_good.name}) is kept in {cfg.ckpt_dir}; lower --lr and rerun "
            "with --resume" if last_good else "no checkpoint was saved yet; lower --lr and rerun")
    return TrainingDivergedError(f"{what} at step {step + 1}; {kept}")
