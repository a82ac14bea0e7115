"""The distilled student's directory: weights, boomerang.json with its training, a card that says how."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import __version__
from ..arch import ModelInfo
from ..compose import fingerprint, model_card
from ..data import public_sources
from ..plan import Plan
from ..refs import ModelRef
from ..student import StudentRecord, write_trained_student
from ..tensors import parse_dtype
from ..units import parse_size
from .config import DistillConfig, DistillResult
from .metrics import METRICS

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def write_student(
    cfg: DistillConfig,
    t_ref: ModelRef,
    t_info: ModelInfo,
    plan: Plan,
    student_dir: Path | None,
    hf_model: PreTrainedModel,
    state_dict: dict[str, torch.Tensor],
    result: DistillResult,
) -> None:
    """The distilled student's directory: its training recorded in boomerang.json, a card that says how."""
    prefix = "model."
    sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    training = {
        "config": cfg.to_json(),
        "steps": result.steps,
        "tokens": result.tokens,
        "final_losses": result.final,
        "final_eval": result.eval,
        "world_size": result.world_size,
        "device": result.device,
        "precision": result.precision,
        "elapsed_s": round(result.elapsed_s, 1),
        "tokens_per_s": result.tokens_per_s,
        "resumed_from": result.resumed_from,
        "peak_memory_bytes": result.peak_memory_bytes,
        "frozen_embeddings": result.frozen_embeddings,
        "bos": result.bos,
    }
    record = StudentRecord(plan, t_ref.stable_ref, fingerprint(t_info), training=training)
    name = Path(cfg.output).name
    w = cfg.weights
    assert w is not None  # filled from the recipe (DistillConfig.__post_init__)
    meta = t_ref.card_metadata()
    teacher = t_ref.public_name
    card = model_card(
        f"{name}: boomerang-distilled student of {teacher}",
        meta["base_models"],
        f"Distilled by `boomerang distill` (boomerang {__version__}) from {teacher}, keeping "
        f"{plan.num_student_layers} of its {plan.num_teacher_layers} layers "
        f"(kept: {plan.describe()}).\n\n"
        f"Training: {result.steps} steps, {result.tokens:,} tokens of {public_sources(cfg.data)} in blocks of "
        f"{cfg.seq_len}{' starting with BOS' if result.bos else ''}; loss {w.ce} x CE + {w.kl} x T^2 x KL "
        f"(T={w.temperature}) + {w.cosine} x cosine over {plan.num_student_layers + 1} aligned hidden states; "
        f"AdamW lr {cfg.lr}, cosine schedule ({cfg.recipe} recipe)"
        + ("; input embeddings and LM head kept as the teacher's" if result.frozen_embeddings else "")
        + ".\n\n"
        "Final training losses: " + ", ".join(f"{k} {v:.4f}" for k, v in result.final.items()) + ".\n\n"
        "Build every size between this student and its teacher with `boomerang family`.",
        license=meta["license"],
    )
    write_trained_student(
        Path(cfg.output),
        hf_model,
        sd,
        record,
        card,
        aux_from=student_dir or t_ref.path,
        dtype=parse_dtype(cfg.dtype) if cfg.dtype else None,
        max_shard_size=parse_size(cfg.max_shard_size),
        overwrite=cfg.overwrite,
        extra_files=[cfg.ckpt_dir / METRICS],
    )
