"""What a distillation run is asked (``DistillConfig``), what it reports (``DistillResult``), and
the checks that need no model: flags, data sources, outputs, and whether a checkpoint may be resumed."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import DEFAULT_BOS, SPLIT_RULE, check_bos_policy, check_source, check_weights
from ..data.sources import dir_files, split_rule_changed
from ..errors import BoomerangError, DataError
from ..guard import check_apart, local_sources
from ..plan import Plan
from ..atomic import check_output_dir
from ..units import DEFAULT_MAX_SHARD, parse_size
from .weights import LossWeights
from .metrics import MetricSink
from .recipes import DEFAULT_RECIPE, check_mix, get_recipe

#: Config fields a resumed run must share with its checkpoint (they shape the trajectory).
#: ``batch_size`` and ``grad_accum`` are not among them: only the global batch (their product
#: times the process count) shapes it, so a run may resume on another number of processes.
TRAJECTORY_FIELDS = (
    "data",
    "text_field",
    "seq_len",
    "seed",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "warmup",
    "grad_clip",
    "weights",
    "loss_chunk",
    "freeze_embeddings",
    "bos",
    "data_weights",
    "shuffle",
    "mix",
)
#: What a checkpoint from before a trajectory field existed was made with (so it still resumes).
FIELD_DEFAULTS: dict[str, Any] = {"bos": "never", "data_weights": None, "shuffle": False, "mix": 0.0}
#: Config fields compared only when the checkpoint recorded them (older checkpoints did not).
RECORDED_FIELDS = ("recipe",)


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
    #: each source's share of the training text, one weight per --data (data.mix); None: one after the other
    data_weights: list[float] | None = None
    shuffle: bool = False  # read training documents in an order drawn from --seed (data.mix)
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
    #: probability that a step trains a random member (each patchable block from the teacher with
    #: probability 1/2, drawn from --seed and the step) instead of the student; None: the recipe's
    mix: float | None = None
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
    max_shard_size: str = DEFAULT_MAX_SHARD
    overwrite: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    shard: list[str] = field(default_factory=list)  # FSDP2 (fsdp.py): "student", "teacher"; empty: DDP

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
        if self.mix is None:
            self.mix = r.mix
        check_apart(self.output, "-o", self.ckpt_dir, "--checkpoint-dir")  # before either is locked

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
        out["split_rule"] = SPLIT_RULE  # what the data's train split means (data.SPLIT_RULE)
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
    memory: list[dict[str, int]] | None = None  # per rank, after the first step (fsdp.memory_report)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["plan"] = self.plan.to_json()
        return d


def validate(cfg: DistillConfig) -> None:
    """Check every flag that needs no model or data, and the outputs.

    Runs first, so that a typo costs no model loading and leaves nothing on disk.
    """
    from ..tensors import parse_dtype  # torch behind both: flags read DistillConfig without it
    from . import checkpoint

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
    assert cfg.lr is not None and cfg.warmup is not None  # filled from the recipe (__post_init__)
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
    check_weights(cfg.data, cfg.data_weights)
    check_mix(cfg.mix)
    if cfg.mix and cfg.shard:
        raise BoomerangError(
            "--mix runs members made of teacher and student layers, which --fsdp/--shard "
            "cannot shard; drop --mix, or train without --fsdp/--shard (DDP works)"
        )
    check_apart(cfg.output, "-o", cfg.ckpt_dir, "--checkpoint-dir")
    _check_writable(Path(cfg.output))
    _check_writable(cfg.ckpt_dir)
    check_output_dir(Path(cfg.output), cfg.overwrite)
    if checkpoint.run_files(cfg.ckpt_dir) and not cfg.resume and not cfg.overwrite:
        raise BoomerangError(
            f"{cfg.ckpt_dir} holds checkpoints of an earlier run; pass --resume to continue "
            "it or --overwrite to start over"
        )


def _check_writable(path: Path) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable directory."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise BoomerangError(
            f"cannot write to {path} ({p} is not a writable directory); choose another -o or --checkpoint-dir"
        )


def run_identity(
    teacher_dir: Path | str | None, teacher_ref: str, student_dir: Path | None, plan: Plan, data: Sequence[str] = ()
) -> dict[str, Any]:
    """What a checkpoint records of its run beside the flags: teacher and student by content
    (per-file digests, :func:`integrity.model_identity`), the plan, and the local data files."""
    from ..integrity import files_identity, model_identity  # torch behind it: flags read this module without

    return {
        "teacher": model_identity(teacher_dir) or teacher_ref,
        "student": model_identity(student_dir) if student_dir is not None else "plan",
        "plan": plan.to_json(),
        "data": files_identity(data_files(data)),
    }


def data_files(sources: Sequence[str]) -> dict[str, Path]:
    """The local files of ``sources`` (a file, or a directory's text files), keyed ``source`` or
    ``source/relative``; builtin and hub sources have none."""
    out: dict[str, Path] = {}
    for source in sources:
        path = Path(source).expanduser()
        if not local_sources([source]):
            continue
        for rel, f in [("", path)] if path.is_file() else dir_files(path):
            out[f"{source}/{rel}" if rel else source] = f
    return out


def _identity_diffs(recorded: Any, now: dict[str, Any], dirs: dict[str, Any]) -> list[str]:
    """Which of teacher, student, plan and data are not those ``recorded``, each with why."""
    from ..integrity import files_problem, identity_problem

    if not isinstance(recorded, dict):
        return []  # a checkpoint from before identities were recorded
    diffs = []
    for key in ("teacher", "student", "plan", "data"):
        if key not in recorded:
            continue
        old, new = recorded[key], now[key]
        if key == "data":
            why = files_problem(data_files(dirs.get("data") or []), old if isinstance(old, dict) else {})
            if why is not None:
                diffs.append(f"data ({why})")
        elif key != "plan" and isinstance(old, dict) and old and isinstance(new, dict) and new:
            why = identity_problem(dirs[key], old)
            if why is not None:
                diffs.append(f"{key} ({why})")
        elif old != new and key == "plan":
            kept = old.get("kept") if isinstance(old, dict) else old
            was = ",".join(map(str, kept)) if isinstance(kept, list) else kept
            diffs.append(f"plan (--keep {','.join(map(str, new['kept']))}, the checkpoint's {was})")
        elif old != new:
            diffs.append(key)
    return diffs


def check_resumable(
    cfg: DistillConfig,
    state: dict[str, Any],
    world: int,
    steps: int,
    identity: dict[str, Any] | None = None,
    dirs: dict[str, Any] | None = None,
) -> None:
    """Refuse a resume that would not continue the checkpoint's trajectory, naming what differs:
    flags, steps, and (``identity``, :func:`run_identity`) the plan, and teacher, student and data
    by content (``dirs``: where they are now)."""
    old = {**FIELD_DEFAULTS, **state.get("config", {})}  # fields a checkpoint predates: how it was made
    new = cfg.to_json()
    if old.get("split_rule", 1) != SPLIT_RULE and split_rule_changed(cfg.data):
        raise BoomerangError(
            f"cannot resume: this checkpoint read --data under split rule {old.get('split_rule', 1)} "
            "(text sources of fewer than 50 files cut into paragraphs), so its data position "
            "means nothing now; start over with --overwrite"
        )
    diffs = [k for k in TRAJECTORY_FIELDS if old.get(k) != new.get(k)]
    diffs += [k for k in RECORDED_FIELDS if k in old and old[k] != new.get(k)]
    if state.get("steps", steps) != steps:
        diffs.append("steps/tokens")
    if identity is not None:
        diffs += _identity_diffs(state.get("identity"), identity, dirs or {})
    if diffs:
        raise BoomerangError(
            f"cannot resume: {', '.join(diffs)} differ from the checkpoint's run; "
            "pass the same flags (or --overwrite to start over)"
        )
    # Every process reads the one block stream and takes its slice of each global batch, and loss
    # terms are sums over the global batch: with the same global batch the run continues unchanged.
    was_world = int(state.get("world_size", world))
    was = int(old.get("batch_size", cfg.batch_size)) * int(old.get("grad_accum", cfg.grad_accum)) * was_world
    now = cfg.batch_size * cfg.grad_accum * world
    if was != now:
        fix = (
            f"with {world} processes set --batch-size x --grad-accum to {was // world}"
            if was % world == 0
            else f"launch a number of processes that divides {was}"
        )
        raise BoomerangError(
            f"the checkpoint's global batch is {was} blocks (--batch-size x --grad-accum x "
            f"{was_world} processes), now {now}; {fix}"
        )
