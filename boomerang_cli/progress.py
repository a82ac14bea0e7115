"""Progress reporting without printing: the core calls, the CLI renders.

Core functions take a :class:`Progress`; the default does nothing, the CLI
passes one backed by a rich progress bar on stderr.
"""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    def advance(self, amount: float = 1) -> None: ...
    def update(self, **fields: object) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: float | None, unit: str = "it") -> Task: ...
    def finish(self, task: Task) -> None: ...


class _NullTask:
    def advance(self, amount: float = 1) -> None:
        pass

    def update(self, **fields: object) -> None:
        pass


class NullProgress:
    """Reports nothing (library use, tests, ``--json`` without a terminal)."""

    def task(self, description: str, total: float | None, unit: str = "it") -> Task:
        return _NullTask()

    def finish(self, task: Task) -> None:
        pass


NULL = NullProgress()
