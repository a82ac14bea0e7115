"""What ``eval`` can be asked (``EvalOptions``, checked before anything loads) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import DEFAULT_BOS, STDLIB, check_bos_policy
from ..data.windows import DEFAULT_WINDOW, check_window
from ..errors import BoomerangError, DataError
from . import lmeval

if TYPE_CHECKING:  # torch behind them, imported where used: flags read EvalOptions without it
    import torch


def _float32() -> torch.dtype:
    import torch

    return torch.float32


#: What tables and plots show of a perplexity record (--metric): its field in the record.
METRICS = {"ppl": "ppl", "bits-per-byte": "bits_per_byte", "word-ppl": "word_perplexity", "byte-ppl": "byte_perplexity"}
DEFAULT_METRIC = "ppl"
METRIC_LABELS = {
    "ppl": "perplexity",
    "bits-per-byte": "bits per byte",
    "word-ppl": "word perplexity",
    "byte-ppl": "byte perplexity",
}  # how a plot's axis names each


@dataclass
class EvalOptions:
    """Everything ``eval`` can be asked; defaults are the CLI's."""

    sources: list[str] = field(default_factory=lambda: [STDLIB])
    split: str = "validation"
    text_field: str = "text"
    seq_len: int = 512
    max_tokens: int = 32768
    bos: str = DEFAULT_BOS  # --bos: BOS in front of every block (data.block_bos)
    window: str = DEFAULT_WINDOW  # --window: packed blocks, or lm-eval's rolling windows (data.windows)
    metric: str = DEFAULT_METRIC  # --metric: what tables and plots show (METRICS)
    batch_size: int = 8
    dtype: torch.dtype = field(default_factory=_float32)
    device: str = "auto"
    trunk: bool = True
    perplexity: bool = True
    tasks: list[str] = field(default_factory=list)
    task_dir: Path | None = None
    limit: float | None = None
    num_fewshot: int | None = None
    baselines: list[str] = field(default_factory=list)
    calibration_tokens: int = 8192
    trust_remote_code: bool = False
    allow_pickle: bool = False
    compare_orders: list[str] = field(default_factory=list)  # every member of each order, in memory
    # Calibrated orders in --compare-orders; None/empty: the family's own calibration, else --data's train split.
    calib_data: list[str] = field(default_factory=list)
    calib_samples: int | None = None
    calib_seq_len: int | None = None
    beam: int | None = None
    verify: bool = False  # members' full checksums, not only their files' sizes
    plot: Path | None = None  # --plot FILE.png: checked against the inputs before any evaluation

    def torch_device(self) -> torch.device:
        from ..models import resolve_device

        return resolve_device(self.device)

    def check(self) -> None:
        if self.batch_size < 1:
            raise BoomerangError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.seq_len < 2:
            raise BoomerangError(f"--seq-len must be at least 2 (got {self.seq_len})")
        if self.max_tokens < 1:
            raise DataError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.split not in ("train", "validation", "all"):
            raise DataError(f"unknown --split {self.split!r}; use validation (held out), train or all")
        if not self.sources:
            raise DataError("no evaluation data; pass --data (files, a directory, a hub dataset or stdlib)")
        check_bos_policy(self.bos)
        check_window(self.window)
        if self.metric not in METRICS:
            raise BoomerangError(f"unknown --metric {self.metric!r}; use {', '.join(METRICS)}")
        from .baselines import METHODS

        bad = [m for m in self.baselines if m not in METHODS]
        if bad:
            raise BoomerangError(f"unknown baseline {bad[0]!r}; use prune (= {', '.join(METHODS)}) or one of them")
        if not self.perplexity and not self.tasks:
            raise BoomerangError("nothing to evaluate: perplexity is off and no --tasks were given")
        from ..orders.names import ALL_ORDERS, check_beam

        bad = [o for o in self.compare_orders if o not in ALL_ORDERS]
        if bad:
            raise BoomerangError(f"unknown order {bad[0]!r} in --compare-orders; use {', '.join(ALL_ORDERS)}")
        if self.compare_orders and not self.perplexity:
            raise BoomerangError("--compare-orders compares perplexity; drop --no-perplexity")
        check_beam(self.beam)
        from ..orders.calibration import check_sizes

        check_sizes(self.calib_samples, self.calib_seq_len)


@dataclass
class Row:
    """One evaluated model and its fresh results."""

    name: str
    kind: str  # teacher | student | member | baseline | model
    num_params: int
    num_layers: int
    method: str | None = None  # baselines: shortgpt | plan-prune
    teacher_layers: list[int] | None = None
    perplexity: dict[str, Any] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    @property
    def ppl(self) -> float | None:
        return None if self.perplexity is None else self.perplexity["ppl"]

    def metric(self, name: str = DEFAULT_METRIC) -> float | None:
        """The record's value of ``--metric name`` (None when not measured)."""
        return None if self.perplexity is None else self.perplexity.get(METRICS[name])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "num_params": self.num_params,
            "num_layers": self.num_layers,
        }
        if self.method:
            out["method"] = self.method
            out["teacher_layers"] = self.teacher_layers
            out["selection"] = self.selection
        out["perplexity"] = self.perplexity
        out["tasks"] = self.tasks
        return out

    def plot_point(self, metric: str = DEFAULT_METRIC) -> dict[str, Any]:
        tasks = {}
        for task, scores in self.tasks.items():
            primary = lmeval.primary_metric(scores)
            if primary is not None:
                tasks[task] = primary
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "num_params": self.num_params,
            "num_layers": self.num_layers,
            "ppl": self.metric(metric),
            "tasks": tasks,
        }


@dataclass
class TrunkInfo:
    """How perplexity was computed: shared trunk or member by member, and what the trunk saved."""

    used: bool
    reason: str | None = None
    layer_passes: int | None = None  # decoder layers run per batch through the trunk
    flat_layer_passes: int | None = None  # the same models one by one
    check: dict[str, Any] | None = None  # the first-batch comparison with a standalone member

    def to_json(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "reason": self.reason,
            "layer_passes": self.layer_passes,
            "flat_layer_passes": self.flat_layer_passes,
            "check": self.check,
        }


@dataclass
class EvalReport:
    target: str
    kind: str  # family | models
    rows: list[Row]
    data: dict[str, Any] | None
    trunk: TrunkInfo | None
    seconds: dict[str, float]
    written: str | None  # manifest or results file updated
    device: str
    dtype: str
    tasks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    orders: dict[str, Any] = field(default_factory=dict)  # --compare-orders: how each order's members were chosen

    @property
    def teacher_ppl(self) -> float | None:
        return self.teacher_metric()

    def teacher_metric(self, metric: str = DEFAULT_METRIC) -> float | None:
        for r in self.rows:
            if r.kind == "teacher":
                return r.metric(metric)
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "written": self.written,
            "device": self.device,
            "dtype": self.dtype,
            "data": self.data,
            "trunk": self.trunk.to_json() if self.trunk else None,
            "tasks": list(self.tasks),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "notes": list(self.notes),
            "orders": self.orders,
            "results": [r.to_json() for r in self.rows],
        }


def bounded_seq_len(opts: EvalOptions, config: Any, notes: list[str]) -> int:
    from ..arch import max_positions

    limit = max_positions(config)
    if limit is not None and opts.seq_len > limit:
        notes.append(f"--seq-len {opts.seq_len} is beyond the model's {limit} positions; using {limit}")
        return limit
    return opts.seq_len


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
