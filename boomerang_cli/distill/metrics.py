"""Training metrics: ``metrics.jsonl`` beside the checkpoints, plus TensorBoard or W&B when asked."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from .. import jsonio
from ..errors import BoomerangError

METRICS = "metrics.jsonl"


class MetricSink:
    """metrics.jsonl plus optional TensorBoard / W&B; only rank 0 writes."""

    def __init__(
        self, path: Path, report_to: list[str], logging_dir: Path, run_name: str, config: dict[str, Any], enabled: bool
    ) -> None:
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
                importlib.import_module("torch.utils.tensorboard" if target == "tensorboard" else "wandb")
            except ImportError:
                raise BoomerangError(
                    f"--report-to {target} needs the {target} package; run: pip install {target}"
                ) from None

    def truncate(self, step: int) -> None:
        """Forget rows after ``step`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        rows = [
            line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step
        ]
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
