"""Shared CLI plumbing: console on stderr, rich progress, JSON output, error mapping."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, Sequence, cast

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress as RichProgress,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from .. import jsonio
from ..errors import BoomerangError
from ..progress import Task as CoreTask
from ..units import format_params

_SURROGATE = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` as written, except the bytes of a file name that are not UTF-8 (``os.fsdecode``'s
    surrogate escapes), shown as ``\\xNN``: printing a path never raises UnicodeEncodeError."""

    def escape(m: re.Match) -> str:
        c = ord(m.group())
        return f"\\x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"\\u{c:04x}"

    return _SURROGATE.sub(escape, text)


class _Stream:
    """``sys.stdout``/``sys.stderr`` as they are at each write (pipes and test runners swap them),
    every write passed through :func:`printable`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(getattr(sys, self._name), attr)

    def write(self, text: str) -> int:
        return getattr(sys, self._name).write(printable(text))


# The one printer of every command: text (paths, model names, notes, table cells) is printed as
# written, never read as rich markup ("[bold]") or emoji (":train:"); styles come from Text/style=.
err_console = Console(file=_Stream("stderr"), markup=False, emoji=False, highlight=False)  # type: ignore[arg-type]
out_console = Console(file=_Stream("stdout"), markup=False, emoji=False, highlight=False)  # type: ignore[arg-type]


def quiet_environment() -> None:
    """What :func:`quiet_libraries` sets without importing anything (``--help`` stays instant)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def quiet_libraries() -> None:
    """transformers/hub print their own bars and warnings; ours are enough."""
    quiet_environment()
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def _fmt_amount(x: float, unit: str) -> str:
    if unit == "B":
        for u, d in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if x >= d:
                return f"{x / d:.1f} {u}"
        return f"{x:.0f} B"
    return f"{x:,.0f} {unit}" if x >= 100 or x == int(x) else f"{x:.1f} {unit}"


class _AmountColumn(ProgressColumn):
    """``done/total unit`` in the task's own unit (steps, tokens, bytes)."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        done = _fmt_amount(task.completed, unit)
        total = _fmt_amount(task.total, unit) if task.total is not None else "?"
        return Text(f"{done}/{total}", no_wrap=True)


class _PlainColumn(ProgressColumn):
    """Text shown verbatim: no rich markup (values and paths may hold ``[``), one
    line, cut with an ellipsis beyond ``max_width`` or when the terminal is narrow."""

    def __init__(self, style: str = "", max_width: int | None = None, min_width: int | None = None) -> None:
        # A wrapable table column is what rich shrinks first on a narrow terminal;
        # the Text itself never wraps, it is cut with an ellipsis.
        super().__init__(table_column=Column(overflow="ellipsis", max_width=max_width, min_width=min_width))
        self.style = style

    def text(self, task: Task) -> str:
        return task.description

    def render(self, task: Task) -> Text:
        return Text(self.text(task), style=self.style, no_wrap=True, overflow="ellipsis")


class _InfoColumn(_PlainColumn):
    """``rate unit/s`` and the fields of the last ``Task.update`` (loss, lr, ...)."""

    def text(self, task: Task) -> str:
        unit = task.fields.get("unit", "it")
        rate = f"{_fmt_amount(task.speed, unit)}/s" if task.speed and not task.finished else ""
        return "  ".join(x for x in (rate, str(task.fields.get("info", ""))) if x)


class _RichTask:
    def __init__(self, bar: RichProgress, task_id: TaskID) -> None:
        self.bar, self.id = bar, task_id

    def advance(self, amount: float = 1) -> None:
        self.bar.advance(self.id, amount)

    def update(self, **fields: object) -> None:
        desc = fields.pop("description", None)
        if desc is not None:
            self.bar.update(self.id, description=str(desc))
        if fields:
            info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            self.bar.update(self.id, info=info)


class RichProgressReporter:
    """The core's :class:`~boomerang_cli.progress.Progress`, drawn by rich on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        # One line per task even on an 80-column terminal: fixed-width columns
        # first, the free-form info last and cut, never wrapped.
        self.bar = RichProgress(
            _PlainColumn("bold", max_width=24, min_width=16),
            BarColumn(bar_width=12, table_column=Column(no_wrap=True)),
            TaskProgressColumn(table_column=Column(no_wrap=True)),
            _AmountColumn(),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(table_column=Column(no_wrap=True)),
            _InfoColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.bar.start()

    def task(self, description: str, total: float | None, unit: str = "it") -> _RichTask:
        return _RichTask(self.bar, self.bar.add_task(description, total=total, unit=unit, info=""))

    def finish(self, task: CoreTask) -> None:
        task_id = cast(_RichTask, task).id
        state = next(t for t in self.bar.tasks if t.id == task_id)
        if state.total is None:  # open-ended work: what was done is the total
            self.bar.update(task_id, total=state.completed)
        else:
            self.bar.update(task_id, completed=state.total)

    def stop(self) -> None:
        self.bar.stop()


#: Seconds between two plain progress lines when stderr is not a terminal.
DEFAULT_INTERVAL = 10.0


def _duration(seconds: float) -> str:
    """4m, 1h05m, 35s: an ETA or elapsed time in a log line."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m" if s >= 600 else f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class _PlainTask:
    """One task's plain progress lines: at most one per interval, and one when it ends."""

    def __init__(self, out: "PlainProgressReporter", description: str, total: float | None, unit: str) -> None:
        self.out, self.description, self.total, self.unit = out, description, total, unit
        self.done = 0.0
        self.fields: dict[str, object] = {}
        self.start = self.last = time.monotonic()
        self.ended = False

    def advance(self, amount: float = 1) -> None:
        self.done += amount
        if not self.fields:  # a task that reports fields updates them after advancing: print then
            self._maybe_print()

    def update(self, **fields: object) -> None:
        desc = fields.pop("description", None)
        if desc is not None:
            self.description = str(desc)
        self.fields.update(fields)
        self._maybe_print()

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.out.interval:
            self.last = now
            self.out.write(self.line(now))

    def line(self, now: float, end: bool = False) -> str:
        total = self.done if end and self.total is None else self.total
        if self.unit == "B":
            amount = f"{_fmt_amount(self.done, 'B')}/{_fmt_amount(total, 'B') if total is not None else '?'}"
        else:
            of = f"{total:,.0f}" if total is not None else "?"
            amount = (
                f"{self.unit} {self.done:,.0f}/{of}" if self.unit == "step" else f"{self.done:,.0f}/{of} {self.unit}"
            )
        parts = [f"{self.description}: {amount}"]
        if total:
            parts.append(f"({100 * self.done / total:.0f}%)")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items()]
        elapsed = now - self.start
        if end:
            parts.append(f"done in {_duration(elapsed)}")
        elif total and self.done:
            parts.append(f"eta {_duration(elapsed / self.done * max(total - self.done, 0))}")
        return " ".join(parts)


class PlainProgressReporter:
    """The core's :class:`~boomerang_cli.progress.Progress` as plain lines on stderr, for logs
    (CI, nohup, SLURM): no bar, no ANSI codes, a line at most every ``interval`` seconds
    (``BOOMERANG_PROGRESS_INTERVAL``, default 10) and one at the end of each task."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval

    def write(self, line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def task(self, description: str, total: float | None, unit: str = "it") -> _PlainTask:
        return _PlainTask(self, description, total, unit)

    def finish(self, task: CoreTask) -> None:
        plain = cast(_PlainTask, task)
        if not plain.ended:
            plain.ended = True
            self.write(plain.line(time.monotonic(), end=True))

    def stop(self) -> None:
        pass


def _interval() -> float:
    try:
        value = float(os.environ.get("BOOMERANG_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


@contextlib.contextmanager
def progress(enabled: bool = True) -> Iterator[RichProgressReporter | PlainProgressReporter]:
    """Progress on stderr: a rich bar on a terminal, plain lines otherwise, nothing when not
    ``enabled`` (``--json``, ``--quiet``). ``BOOMERANG_PROGRESS=1``/``0`` forces the bar on or off."""
    forced = os.environ.get("BOOMERANG_PROGRESS")
    reporter: RichProgressReporter | PlainProgressReporter
    if forced not in {"0", "1"} and enabled and not err_console.is_terminal:
        reporter = PlainProgressReporter(_interval())
    else:
        reporter = RichProgressReporter(forced == "1" if forced in {"0", "1"} else enabled and err_console.is_terminal)
    try:
        yield reporter
    finally:
        reporter.stop()


def say(text: str, console: Console | None = None, style: str = "") -> None:
    """Print one line as written (the output-path printer): no markup, no emoji, no highlighting,
    and no line breaks inserted into a long path (``soft_wrap``), so it can be copied back."""
    (console or out_console).print(Text(text, style=style), soft_wrap=True)


def emit_json(data: Any) -> None:
    sys.stdout.write(jsonio.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> None:
    # The message is plain text: paths and values may hold "[bold]" or ":train:" (no markup, no emoji).
    err_console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True, emoji=False)
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Map core errors to a one-line message and exit code (2 for bad input).

    SIGTERM is an interrupt like Ctrl-C while a command runs, so the core's
    cleanup (temporary directories, a rename rolled back) runs for it too.
    Every command's work runs inside it, so it is also where transformers is quieted:
    after the flags are parsed, so ``--help`` and flag errors import none of it.
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        quiet_libraries()
        yield
    except BoomerangError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume where supported", 130)
    except OSError as exc:
        fail(*os_error_message(exc))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


#: errno -> (what to do, exit code): a path the user gave is wrong (2) or the machine is (1).
_OS_FIXES = {
    errno.EACCES: ("check its permissions or choose another path", 2),
    errno.EPERM: ("check its permissions or choose another path", 2),
    errno.EROFS: ("it is on a read-only file system; choose another path", 2),
    errno.ENOENT: ("check that the path and its parent directory exist", 2),
    errno.ENOTDIR: ("a parent of that path is a file, not a directory; choose another path", 2),
    errno.EEXIST: ("a parent of that path is a file, not a directory; choose another path", 2),
    errno.EISDIR: ("it is a directory; give a file", 2),
    errno.ENAMETOOLONG: ("a name in it is too long for the file system; choose a shorter path", 2),
    errno.ENOSPC: ("the disk is full; free space or write elsewhere", 2),
    errno.EDQUOT: ("the disk quota is exceeded; free space or write elsewhere", 2),
}


def os_error_message(exc: OSError) -> tuple[str, int]:
    """A one-line message for a file-system error the core did not anticipate, and its exit code."""
    fix, code = _OS_FIXES.get(exc.errno or 0, ("check the path and the file system", 1))
    path = exc.filename
    where = f" {path}" if path else ""
    what = exc.strerror or type(exc).__name__
    return f"cannot use{where}: {what.lower()}; {fix}", code


def split_list(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated option values as one list: ``--x a,b --x c`` -> ``[a, b, c]``."""
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def human(n: float) -> str:
    """1234567 -> 1.23M: parameter counts in tables (3 significant digits)."""
    return format_params(n, 3)
