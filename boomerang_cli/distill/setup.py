"""The setup of a ``boomerang distill`` run: inputs checked, data read, models loaded and wrapped.

What :func:`setup` hands the loop (:mod:`.train`) is one :class:`Run`: the
accelerator (device, DDP, autocast), the teacher, plan and student checked as
a pair, the data read once, the student and teacher loaded (sharded under
``--fsdp``/``--shard``), the optimizer and its schedule (paper defaults).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..arch import ModelInfo, max_positions
from ..data import Block, BlockStream, StreamPosition, block_bos, iter_blocks, mixed_documents
from ..errors import BoomerangError, PairMismatchError
from ..guard import check_disjoint, local_sources
from ..models import load_tokenizer
from ..pair import Pair, open_pair
from ..plan import Plan
from ..refs import ModelRef, resolve
from . import fsdp, sharded_checkpoint, sharded_load
from .config import DistillConfig, validate
from .members import MemberDraw, MemberModels
from .model import DistillStudent, Teacher

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
    from accelerate.utils import DistributedDataParallelKwargs

    # Accelerate keeps its settings in process-wide singletons; a second run in one
    # process (library use, tests) may ask for other ones. The process group stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # --mix: a member step leaves the student layers it replaced without gradients; DDP must expect that.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.mix else []
    return Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no", kwargs_handlers=handlers), bf16


def open_models(cfg: DistillConfig) -> tuple[ModelRef, ModelInfo, Plan, Pair | None]:
    """The teacher, the plan, and with ``--student`` the pair, checked as ``family`` checks it
    (except that a student made from another checkpoint of the teacher is a warning)."""
    ref = resolve(cfg.teacher, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if cfg.student is None:
        info = ModelInfo.load(ref.path, cfg.trust_remote_code)
        return (
            ref,
            info,
            Plan.from_flags(info.arch.num_layers, cfg.keep, cfg.keep_first, cfg.every, cfg.keep_last),
            None,
        )
    sdir = Path(cfg.student)
    if not sdir.is_dir():
        raise PairMismatchError(f"--student {sdir}: no such directory")
    s_ref = resolve(str(sdir), allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    keep = Plan.parse_keep(cfg.keep) if cfg.keep is not None else None
    pair = open_pair(
        ref, s_ref, keep=keep, trust_remote_code=cfg.trust_remote_code, other_teacher="warn", force_flag=None
    )
    return ref, pair.teacher, pair.plan, pair


def on_main(acc: Any, fn: Any) -> Any:
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
class Run:
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
    student_info: ModelInfo | None = field(init=False)  # a --student directory's; None: made from the plan
    draw: MemberDraw = field(init=False)  # which member each step trains (--mix), or the student

    @property
    def is_main(self) -> bool:
        return bool(self.acc.is_main_process)

    def train_stream(self, position: StreamPosition | None = None, repeat: bool = True) -> BlockStream:
        cfg = self.cfg

        def documents(epoch: int) -> Any:
            return mixed_documents(
                cfg.data,
                "train",
                cfg.text_field,
                weights=cfg.data_weights,
                seed=cfg.seed if cfg.shuffle else None,
                epoch=epoch,
            )

        return BlockStream(
            documents,
            self.tokenizer,
            cfg.seq_len,
            repeat=repeat,
            pad_last=not repeat,
            position=position,
            describe=f"training split of {', '.join(cfg.data)}",
            bos_id=self.bos_id,
        )


def setup(cfg: DistillConfig) -> Run:
    """Inputs checked, data read once, models loaded and wrapped, optimizer and schedule made."""
    t_start = time.time()
    acc, bf16 = _accelerator(cfg)
    on_main(acc, lambda: validate(cfg))
    run = Run(cfg, acc, bf16, fsdp.Sharding.create(cfg.shard, acc.num_processes, acc.device, bf16), t_start)
    on_main(acc, lambda: sharded_checkpoint.check_resume(cfg.ckpt_dir, cfg.resume, run.sharding.dcp))
    _setup_inputs(run)
    _setup_models(run)
    return run


def _setup_inputs(run: Run) -> None:
    """Teacher, plan and student (a mismatched pair refused early); the data, read by every process."""
    cfg = run.cfg
    # Rank 0 first: it converts a GGUF or pickle source into the cache once, which every rank then
    # reads (its rows when sharded).
    if run.acc.num_processes > 1:
        on_main(run.acc, lambda: open_models(cfg))
    run.t_ref, run.t_info, run.plan, pair = open_models(cfg)
    run.student_dir = Path(pair.student_ref.path) if pair is not None else None
    run.student_info = pair.student if pair is not None else None
    run.draw = MemberDraw(cfg.mix or 0.0, cfg.seed, run.plan)
    run.warnings = (list(pair.warnings) if pair is not None else []) + run.sharding.warnings
    inputs = [("teacher", run.t_ref.path), ("student", run.student_dir), *local_sources(cfg.data)]
    check_disjoint(cfg.output, inputs)
    check_disjoint(cfg.ckpt_dir, inputs, "--checkpoint-dir")
    max_pos = max_positions(run.t_info.config)
    if max_pos is not None and cfg.seq_len > max_pos:
        raise BoomerangError(
            f"--seq-len {cfg.seq_len} is longer than the model's {max_pos} positions; use --seq-len {max_pos} or less"
        )

    # One packed block stream, read by every process; each takes its slice of a step.
    run.tokenizer = load_tokenizer(
        run.t_ref.path, cfg.trust_remote_code, why="distill tokenizes --data with the teacher's tokenizer"
    )
    run.global_blocks = cfg.batch_size * cfg.grad_accum * run.acc.num_processes
    run.steps = (
        cfg.steps
        if cfg.steps is not None
        else (
            math.ceil(cfg.tokens / (run.global_blocks * cfg.seq_len)) if cfg.tokens is not None else cfg.DEFAULT_STEPS
        )
    )
    run.bos_id = block_bos(run.tokenizer, cfg.bos)
    next(iter(run.train_stream(repeat=False)))  # empty or unreadable data fails here, before the models load
    run.val_blocks = []
    if cfg.eval_every > 0:
        run.val_blocks = list(
            iter_blocks(
                cfg.data,
                "validation",
                run.tokenizer,
                cfg.seq_len,
                text_field=cfg.text_field,
                max_blocks=cfg.eval_blocks,
                bos_id=run.bos_id,
            )
        )


def _setup_models(run: Run) -> None:
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
        sharded_load.teacher(run.sharding, t_info, teacher_dtype, cfg.trust_remote_code), layers_path
    )
    student_model = sharded_load.student(run.sharding, t_info, run.plan, run.student_dir, cfg.trust_remote_code)
    run.frozen = cfg.freeze_embeddings if cfg.freeze_embeddings is not None else t_info.arch.tied
    if run.frozen:
        freeze_embeddings(student_model)
    if cfg.gradient_checkpointing:
        student_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student_model.train()
    run.need_teacher = bool(w.kl or w.cosine)
    run.teacher = Teacher(run.teacher_model, layers_path, run.plan.aligned_teacher_hidden(), keep_hidden=bool(w.cosine))
    model = DistillStudent(
        student_model,
        layers_path,
        ce_weight=w.ce,
        kl_weight=w.kl,
        cos_weight=w.cosine,
        temperature=w.temperature,
        teacher_head=run.teacher.head if w.kl else None,
        chunk=cfg.loss_chunk,
    )
    if cfg.mix:
        model.members = MemberModels.of_pair(
            student_model,
            run.teacher_model,
            run.t_info,
            run.student_info,
            run.plan,
            cfg.gradient_checkpointing,
            cfg.trust_remote_code,
        )
    if cfg.compile:
        for layer in student_model.get_submodule(layers_path):
            layer.forward = torch.compile(layer.forward)

    model = run.sharding.shard_student(model, layers_path)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=cast(tuple[float, float], tuple(cfg.betas)),
        eps=cfg.eps,
        fused=False,
    )
    warmup = math.ceil(cfg.warmup * run.steps)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(run.steps, warmup))
    if not run.sharding.student:
        model, optimizer = run.acc.prepare(model, optimizer)
    run.model, run.optimizer = model, optimizer
