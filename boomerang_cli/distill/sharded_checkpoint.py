"""Sharded training checkpoints for an FSDP student (``boomerang distill --fsdp``).

The layout of :mod:`.checkpoint`, with the weights and optimizer state as a
distributed checkpoint: ``step-0000100/dcp/`` holds one ``.distcp`` file per
rank plus ``.metadata`` (``torch.distributed.checkpoint``, every rank writing
its own shards, nothing gathered), ``state.pt`` the scheduler and every
rank's RNG states, ``trainer_state.json`` step, data position and config.
Every rank writes into one temporary directory that rank 0 then renames into
place, so a kill at any moment leaves the previous checkpoint intact.

:func:`load` reads either kind: a sharded checkpoint into a sharded or an
unsharded student, as ``torch.distributed.checkpoint`` reshards on load: a
run saved on 2 ranks resumes on 1 and again on 2 (``config.check_resumable``
asks only for the same global batch). A full checkpoint (``state.pt`` with
weights) resumes unsharded only (:func:`check_resume`): sharded, every rank
would read the whole student. The data position is one for all ranks (every
rank reads the same block stream), so it does not depend on the world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..errors import BoomerangError
from . import checkpoint
from .checkpoint import STATE

DCP_DIR = "dcp"


def is_sharded(path: Path) -> bool:
    return (Path(path) / DCP_DIR).is_dir()


def check_resume(ckpt_dir: Path, resume: bool, dcp_run: bool) -> None:
    """Refuse, before anything loads or is written, to resume a sharded run from a full checkpoint."""
    latest = checkpoint.latest(ckpt_dir) if resume else None
    if latest is not None and dcp_run and not is_sharded(latest):
        raise BoomerangError(
            f"{latest} is a full (unsharded) checkpoint, not a distributed one; resume it "
            "without --fsdp/--shard student, or start over with --overwrite"
        )


def _broadcast(obj: Any) -> Any:
    box = [obj]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    is_main: bool,
) -> Path | None:
    """Write sharded checkpoint ``step`` (collective: every rank writes its shards)."""
    tmp = Path(_broadcast(str(checkpoint.temp_dir(root, step)) if is_main else None))
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(tmp / DCP_DIR))
    rngs = checkpoint._gather_rng()
    final = None
    if is_main:
        extra = {"scheduler": scheduler.state_dict(), "rng": rngs}
        final = checkpoint.commit(root, step, tmp, trainer_state, lambda d: torch.save(extra, d / STATE))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return final


def load(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int, is_main: bool
) -> None:
    """Restore a checkpoint of either kind into the student (collective)."""
    path = Path(path)
    if not is_sharded(path):
        checkpoint.load(path, model, optimizer, scheduler, rank, is_main)
        return
    try:
        extra = torch.load(path / STATE, map_location="cpu", weights_only=True)
        state: dict[str, Any] = {
            "model": get_model_state_dict(model),
            "optimizer": get_optimizer_state_dict(model, optimizer),
        }
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    except (OSError, RuntimeError, ValueError, CheckpointException) as exc:  # DCP: a missing or damaged shard
        raise BoomerangError(
            f"{path}: unreadable sharded checkpoint ({type(exc).__name__}); delete it or start without --resume"
        ) from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    rngs = extra["rng"]
    checkpoint.set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
