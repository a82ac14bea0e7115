"""``boomerang distill``: train the student against the frozen teacher (SPEC section 3).

The recipe reads top to bottom like a nanoGPT/torchtune training script:
models and plan, data, optimizer and schedule (:mod:`.setup`), resume, the
loop (teacher forward, student forward + loss, backward, clip, step),
evaluation, checkpoints, and the final model directory. Accelerate is only
the engine: it picks the device, wraps the student for DDP under ``accelerate
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data import BlockStream, StreamPosition, collate
from ..errors import TrainingDivergedError
from ..progress import NULL, Progress
from . import checkpoint, fsdp, sharded_checkpoint
from .config import DistillConfig, DistillResult, check_resumable, run_identity
from .members import describe as describe_member
from .metrics import METRICS, MetricSink
from .output import write_student
from .setup import Run, on_main, setup
from .step import evaluate, forward_backward


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

    Like a torchtune recipe: :func:`.setup.setup` (inputs, data, models, optimizer),
    :func:`_train` (the loop) and :func:`_finish` (the student directory).
    """
    run = setup(cfg)
    progress = progress if run.is_main else NULL
    # The checkpoint directory; resume: weights, optimizer, schedule, RNG and data position.
    resume_from = on_main(
        run.acc, lambda: checkpoint.prepare_run_dir(cfg.ckpt_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    )
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


def _resume(run: Run, resume_from: Path | None) -> _Loop:
    """The metrics sink, and where the loop starts: step 0, or a checkpoint's step, data position and state."""
    cfg, acc = run.cfg, run.acc
    run_name = Path(cfg.output).name
    sink = MetricSink(
        cfg.ckpt_dir / METRICS,
        cfg.report_to,
        Path(cfg.logging_dir or Path("runs") / run_name),
        run_name,
        cfg.to_json(),
        run.is_main,
    )
    start_step, tokens_seen, position, resumed_from = 0, 0, StreamPosition(), None
    saves = bool(cfg.save_every) and cfg.save_every < run.steps
    # Teacher and student by content: hashed on rank 0 only (once; rank 0 writes the checkpoints).
    identity = (
        on_main(acc, lambda: run_identity(run.t_ref.path, run.t_ref.stable_ref, run.student_dir, run.plan, cfg.data))
        if (resume_from is not None or saves)
        else None
    )
    if resume_from is not None:
        state = checkpoint.read_trainer_state(resume_from)
        on_main(
            acc,
            lambda: check_resumable(
                cfg,
                state,
                acc.num_processes,
                run.steps,
                identity,
                {"teacher": run.t_ref.path, "student": run.student_dir, "data": cfg.data},
            ),
        )
        sharded_checkpoint.load(
            resume_from, run.model, run.optimizer, run.scheduler, acc.process_index, run.is_main
        )  # either kind
        start_step, tokens_seen = int(state["step"]), int(state["tokens"])
        position = StreamPosition.from_json(state["position"])
        resumed_from = start_step
        sink.truncate(start_step)
    return _Loop(
        run.train_stream(position),
        sink,
        start_step,
        tokens_seen,
        resumed_from,
        last_good=resume_from,
        identity=identity,
    )


def _train(run: Run, loop: _Loop, progress: Progress) -> None:
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
        member = run.draw.at(step)
        totals = forward_backward(
            model, run.teacher, acc, ids, labels, mask, cfg.batch_size, cfg.grad_accum, run.need_teacher, member
        )
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
            trained = describe_member(member, run.plan) if cfg.mix else {}
            loop.sink.log(
                {
                    "step": done,
                    "split": "train",
                    "tokens": loop.tokens_seen,
                    **loop.final,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tok_denom / dt,
                    "elapsed_s": round(time.time() - run.t_start, 3),
                    **trained,
                }
            )
        if run.val_blocks and (done % cfg.eval_every == 0 or done == steps):
            loop.last_eval = evaluate(model, run.teacher, acc, run.val_blocks, cfg.batch_size, run.need_teacher)
            loop.sink.log({"step": done, "split": "validation", "tokens": loop.tokens_seen, **loop.last_eval})
        if cfg.save_every and done % cfg.save_every == 0 and done < steps:
            _save(run, loop, done)
    progress.finish(task)
    loop.sink.close()


def _save(run: Run, loop: _Loop, done: int) -> None:
    """A checkpoint after ``done`` steps: the last good one a diverged run names."""
    cfg = run.cfg
    trainer_state = {
        "step": done,
        "tokens": loop.tokens_seen,
        "position": loop.stream.position.to_json(),
        "world_size": run.acc.num_processes,
        "steps": run.steps,
        "config": cfg.to_json(),
        "identity": loop.identity,
        "boomerang_version": __version__,
    }
    save = sharded_checkpoint.save if run.sharding.dcp else checkpoint.save
    loop.last_good = save(cfg.ckpt_dir, done, run.model, run.optimizer, run.scheduler, trainer_state, run.is_main)


def _finish(run: Run, loop: _Loop) -> DistillResult:
    """The distilled student, a standard HF directory (rank 0 writes; FSDP gathers on all ranks)."""
    cfg, acc, device = run.cfg, run.acc, run.acc.device
    # Done with the teacher: freed, with the AdamW state, before the gather (fsdp.release).
    del run.teacher, run.teacher_model
    fsdp.release(run.model, run.optimizer)
    state_dict = run.sharding.state_dict(acc, run.model)
    elapsed = time.time() - run.t_start
    result = DistillResult(
        output=str(cfg.output),
        teacher=run.t_ref.stable_ref,
        student_init=str(cfg.student) if cfg.student else "plan",
        plan=run.plan,
        steps=run.steps,
        tokens=loop.tokens_seen,
        final=loop.final,
        eval=loop.last_eval,
        tokens_per_s=loop.train_tokens / loop.train_time if loop.train_time else 0.0,
        elapsed_s=elapsed,
        resumed_from=loop.resumed_from,
        checkpoint_dir=str(cfg.ckpt_dir) if cfg.keep_checkpoints else None,
        world_size=acc.num_processes,
        device=str(device.type),
        precision="bf16" if run.bf16 else "fp32",
        warnings=run.warnings,
        peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        frozen_embeddings=run.frozen,
        bos=run.bos_id is not None,
        memory=loop.memory,
    )
    if run.is_main:
        write_student(
            cfg, run.t_ref, run.t_info, run.plan, run.student_dir, acc.unwrap_model(run.model).model, state_dict, result
        )
        if not cfg.keep_checkpoints:
            checkpoint.remove_run_files(cfg.ckpt_dir)
    return result


def _diverged(what: str, step: int, last_good: Path | None, cfg: DistillConfig) -> TrainingDivergedError:
    kept = (
        f"the last good checkpoint ({last_good.name}) is kept in {cfg.ckpt_dir}; lower --lr and rerun with --resume"
        if last_good
        else "no checkpoint was saved yet; lower --lr and rerun"
    )
    return TrainingDivergedError(f"{what} at step {step + 1}; {kept}")
