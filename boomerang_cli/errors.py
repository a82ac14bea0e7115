"""Errors the core raises; the CLI maps them to exit codes.

The core never prints or exits. A :class:`BoomerangError` is a problem with the
user's input or environment that they can fix: the CLI prints its one-line
message and exits with code 2.
"""

from __future__ import annotations


class BoomerangError(Exception):
    """A user-fixable problem. ``str(err)`` is a one-line message naming the fix."""

    exit_code = 2


class ModelNotFoundError(BoomerangError):
    """A model reference could not be resolved to local weights."""


class UnsupportedArchitectureError(BoomerangError):
    """The architecture map could not understand a model's layout."""


class PlanError(BoomerangError):
    """An invalid student plan (kept layers)."""


class PairMismatchError(BoomerangError):
    """Teacher and student do not belong together."""


class OutputExistsError(BoomerangError):
    """Refusing to overwrite a non-empty output directory."""


class DataError(BoomerangError):
    """Training or evaluation data is missing, empty or unreadable."""


class TrainingDivergedError(BoomerangError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3
