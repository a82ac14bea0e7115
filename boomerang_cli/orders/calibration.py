"""What calibrates an order (recorded in the manifest): a plain record, so flags need no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..data import DEFAULT_BOS, check_bos_policy, check_weights
from ..errors import DataError


@dataclass(frozen=True)
class CalibrationSpec:
    """Which text calibrates the order, recorded in the manifest."""

    sources: tuple[str, ...]
    samples: int = 64
    seq_len: int = 128
    split: str = "train"
    text_field: str = "text"
    bos: str = DEFAULT_BOS  # --bos policy (data.block_bos); the search records whether blocks got one
    #: each source's share (data.mix), as the student was distilled on them; None: one after the other
    weights: tuple[float, ...] | None = None

    #: What a recorded calibration without a field was made with (older manifests: blocks had no BOS).
    RECORDED_DEFAULTS = {"text_field": "text", "bos_policy": "never", "weights": None}

    def to_json(self) -> dict[str, Any]:
        return {
            "data": list(self.sources),
            "split": self.split,
            "samples": self.samples,
            "seq_len": self.seq_len,
            "text_field": self.text_field,
            "bos_policy": self.bos,
            "weights": list(self.weights) if self.weights else None,
        }

    def check(self) -> None:
        if not self.sources:
            raise DataError("no calibration data; pass --calib-data (files, a directory, a hub dataset or stdlib)")
        check_sizes(self.samples, self.seq_len)
        if self.split not in ("train", "validation"):
            raise DataError(f"unknown calibration split {self.split!r}; use train or validation")
        check_bos_policy(self.bos)
        check_weights(self.sources, self.weights)

    def same_as(self, recorded: Mapping[str, Any] | None) -> bool:
        """Whether a manifest's ``order.calibration`` was made with these settings."""
        if not recorded:
            return False
        mine = self.to_json()
        return all(recorded.get(k, self.RECORDED_DEFAULTS.get(k)) == v for k, v in mine.items())


def check_sizes(samples: int | None, seq_len: int | None) -> None:
    """``--calib-samples`` and ``--calib-seq-len`` (None: not given, nothing to check)."""
    if samples is not None and samples < 1:
        raise DataError(f"--calib-samples must be at least 1 (got {samples})")
    if seq_len is not None and seq_len < 2:
        raise DataError(f"--calib-seq-len must be at least 2 (got {seq_len})")
