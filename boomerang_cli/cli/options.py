"""Options several commands share, declared once."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterator, Mapping

import typer

from ..data import DEFAULT_BOS
from ..plan import Plan
from ..units import DEFAULT_MAX_SHARD


class _Defaults(Mapping[str, Any]):
    """A config's defaults, each read when a flag asks for it: a factory that needs torch
    (``EvalOptions.dtype``) runs only on use, so ``--help`` imports no torch."""

    def __init__(self, config: type) -> None:
        self._fields = {
            f.name: f
            for f in dataclasses.fields(config)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    def __getitem__(self, name: str) -> Any:
        f = self._fields[name]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return f.default

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def defaults(config: type) -> Mapping[str, Any]:
    """The default of every field of a config dataclass: flags read their defaults from it."""
    return _Defaults(config)


_PAPER = inspect.signature(Plan.from_paper_flags).parameters

Json = typer.Option(False, "--json", help="Print a machine-readable summary on stdout.")
Quiet = typer.Option(
    False,
    "--quiet",
    "-q",
    help="No progress on stderr (neither the bar nor, without a terminal, the plain progress lines).",
)
Overwrite = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")
AllowPickle = typer.Option(
    False, "--allow-pickle", help="Allow loading pickle checkpoints (pytorch_model.bin); they can run code."
)
TrustRemoteCode = typer.Option(
    False, "--trust-remote-code", help="Allow running model code from the model's repository."
)
Dtype = typer.Option(None, "--dtype", help="Save weights as bf16, fp16 or fp32 (default: as stored).")
MaxShardSize = typer.Option(DEFAULT_MAX_SHARD, "--max-shard-size", help="Largest safetensors shard, e.g. 2GB or 500MB.")
# No typer ``min=``: out-of-range flags reach Plan.from_paper_flags, whose PlanError is
# the one-line message every bad plan gets (typer's usage box is many lines).
KeepFirst = typer.Option(_PAPER["keep_first"].default, "--keep-first", help="Paper flag first_layers_to_keep (>= 1).")
Every = typer.Option(
    _PAPER["every"].default, "--every", help="Paper flag alternate_every_n_layers: keep one layer of every N (>= 2)."
)
KeepLast = typer.Option(_PAPER["keep_last"].default, "--keep-last", help="Paper flag last_layers_to_keep (>= 0).")
Bos = typer.Option(
    DEFAULT_BOS,
    "--bos",
    help="BOS at the start of every packed block: auto (when the tokenizer adds one), always "
    "or never (SPEC section 7).",
)
Keep = typer.Option(None, "--keep", help="Explicit kept teacher layers, e.g. 0,2,4,7,9,11 (overrides the paper flags).")
