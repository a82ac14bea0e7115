"""Training checkpoints: written atomically by rank 0, read back with ``weights_only``.

A checkpoint is a directory ``step-0000100/`` holding ``state.pt`` (student
weights, optimizer, scheduler and every rank's RNG states; loaded with
``torch.load(weights_only=True)``, which runs no pickled code) and
``trainer_state.json`` (step, tokens, data position, config). It is written
under a temporary name and renamed into place; only then does the ``latest``
file point at it and are older checkpoints removed, so a kill at any moment
leaves the previous checkpoint intact.

The state dicts go through ``torch.distributed.checkpoint.state_dict``, which
gathers full tensors from DDP and FSDP alike (to rank 0, on CPU) and scatters
them back on load, so one code path serves one process and many.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..errors import BoomerangError
from ..atomic import atomic_write_text
from .metrics import METRICS

LATEST = "latest"
STATE = "state.pt"
TRAINER_STATE = "trainer_state.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_rng() -> list[dict[str, Any]]:
    mine = rng_state()
    if not _distributed():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def _complete(path: Path) -> bool:
    return path.is_dir() and (path / STATE).is_file() and (path / TRAINER_STATE).is_file()


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None.

    ``latest`` names it; where that pointer is missing or names nothing complete
    (a kill between the rename and the pointer, a user's cleanup), the complete
    ``step-N`` with the highest N is it: a resume never starts over, and never
    deletes, what is there.
    """
    root = Path(root)
    try:
        path = root / (root / LATEST).read_text().strip()
        if path.name.startswith("step-") and _complete(path):
            return path
    except (OSError, ValueError):
        pass
    steps = sorted(
        (p for p in root.glob("step-*") if p.name[5:].isdigit() and _complete(p)), key=lambda p: int(p.name[5:])
    )
    return steps[-1] if steps else None


def run_files(root: Path) -> list[Path]:
    """What a run wrote to checkpoint directory ``root`` (steps, ``latest``, metrics), if anything."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if (p.name.startswith("step-") and p.is_dir()) or p.name in {LATEST, METRICS}
    )


def save(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    is_main: bool,
) -> Path | None:
    """Write checkpoint ``step`` (collective: every rank calls it; rank 0 writes)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    rngs = _gather_rng()
    final = None
    if is_main:
        state = {"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "rng": rngs}
        final = commit(root, step, temp_dir(root, step), trainer_state, lambda tmp: torch.save(state, tmp / STATE))
    if _distributed():
        dist.barrier()
    return final


def temp_dir(root: Path, step: int) -> Path:
    """A fresh directory under ``root`` for checkpoint ``step`` to be written into (rank 0)."""
    return Path(tempfile.mkdtemp(prefix=f".step-{step:07d}.tmp-", dir=root))


def commit(root: Path, step: int, tmp: Path, trainer_state: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Rank 0: ``write(tmp)``, add ``trainer_state.json``, rename ``tmp`` into place, point
    ``latest`` at it and remove older checkpoints; ``tmp`` is removed if any of that fails."""
    root = Path(root)
    name = f"step-{step:07d}"
    final = root / name
    try:
        write(tmp)
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            why = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            raise BoomerangError(
                f"cannot write checkpoint {final} ({why}); free disk space or choose another "
                "--checkpoint-dir (an earlier checkpoint is kept)"
            ) from None
        raise
    atomic_write_text(root / LATEST, name + "\n")
    for old in root.glob("step-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


#: The fields of ``trainer_state.json`` a resume reads, and their types.
_STATE_FIELDS = {"step": int, "tokens": int, "position": dict, "config": dict}


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state, checked for the shape a resume reads (one line if it is not)."""
    try:
        state = json.loads((Path(path) / TRAINER_STATE).read_text())
    except (OSError, ValueError) as exc:
        raise BoomerangError(f"{path}: unreadable checkpoint ({exc}); delete it or start without --resume") from None
    if not isinstance(state, dict):
        raise BoomerangError(
            f"{path / TRAINER_STATE}: not a JSON object; delete the checkpoint or start without --resume"
        )
    for key, kind in _STATE_FIELDS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BoomerangError(
                f"{path / TRAINER_STATE}: {key} should be {kind.__name__}, not "
                f"{type(value).__name__}; delete the checkpoint or start without --resume"
            )
    for key in ("steps", "world_size"):
        if key in state and (not isinstance(state[key], int) or isinstance(state[key], bool)):
            raise BoomerangError(
                f"{path / TRAINER_STATE}: {key} should be int, not {type(state[key]).__name__}; "
                "delete the checkpoint or start without --resume"
            )
    return state


def load(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int, is_main: bool
) -> None:
    """Restore weights, optimizer, scheduler and this rank's RNG from checkpoint ``path`` (collective)."""
    distributed = _distributed()
    state: dict[str, Any] = {}
    if is_main or not distributed:
        try:
            state = torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds on a damaged file
            raise BoomerangError(
                f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it or start without --resume"
            ) from None
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=distributed)
    set_model_state_dict(model, state.get("model", {}), options=opts)
    set_optimizer_state_dict(model, optimizer, state.get("optimizer", {}), options=opts)
    extra: list[Any] = [state.get("scheduler"), state.get("rng")]
    if distributed:
        dist.broadcast_object_list(extra, src=0)
    scheduler.load_state_dict(extra[0])
    rngs = extra[1]
    set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])


def prepare_run_dir(ckpt: Path, *, overwrite: bool, resume: bool) -> Path | None:
    """Create the checkpoint directory (emptied first by ``overwrite`` without ``resume``);
    returns the checkpoint to resume from, if any.

    ``resume`` over a directory that holds steps but none complete is refused:
    starting from 0 would replace (and then delete) what is there.
    """
    if overwrite and not resume:
        remove_run_files(ckpt)
    try:
        ckpt.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BoomerangError(
            f"cannot write to {ckpt} ({exc.strerror or exc}); choose another --checkpoint-dir"
        ) from None
    if not resume:
        return None
    found = latest(ckpt)
    if found is None and any(p.name.startswith("step-") for p in run_files(ckpt)):
        raise BoomerangError(
            f"cannot resume: {ckpt} holds no complete checkpoint (each step-N needs {STATE} and "
            f"{TRAINER_STATE}); delete it or pass --overwrite to start over"
        )
    return found


def remove_run_files(ckpt: Path) -> None:
    """Remove what a run wrote to its checkpoint directory, and the directory if that empties it."""
    if not ckpt.is_dir():
        return
    for p in ckpt.iterdir():
        if p.name.startswith(("step-", ".step-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name in {LATEST, METRICS}:
            p.unlink()
    with contextlib.suppress(OSError):
        ckpt.rmdir()
