"""Two rules every command that writes follows (docs/guarantees.md).

- **Outputs never overlap inputs.** An output (``-o``, ``--checkpoint-dir``) may
  not be, contain, or lie inside any input (teacher, student, a local data
  source), whatever ``--overwrite`` says: replacing or deleting it would destroy
  what the run reads. :func:`check_disjoint` is the one check.
- **One writer per output.** :func:`output_lock` holds an advisory lock
  (``fcntl.flock``) on ``.NAME.lock`` beside the output for the whole run; a
  second run on the same output is refused at once, naming the holder's pid.
  The kernel drops the lock when its process dies (even by ``kill -9``), so a
  stale lock file never blocks a rerun.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .atomic import short_name
from .data.sources import is_builtin
from .errors import BoomerangError, OutputExistsError


class OutputLockedError(BoomerangError):
    """Another run holds the output's lock."""


def _real(path: Path | str) -> Path:
    return Path(path).expanduser().resolve()


Inputs = Mapping[str, "Path | str | None"] | Iterable[tuple[str, "Path | str | None"]]


def check_disjoint(output: Path | str, inputs: Inputs, flag: str = "-o") -> None:
    """Refuse ``output`` if it is, contains or lies inside any existing input.

    ``inputs`` maps a role (``"teacher"``, ``"data source"``) to its path (or is
    a list of such pairs);
    ``None`` and paths that do not exist (hub ids, builtins) are skipped.
    Symlinks are followed, so a link to the teacher counts as the teacher.
    """
    out = _real(output)
    pairs = inputs.items() if isinstance(inputs, Mapping) else inputs
    for role, path in pairs:
        if path is None or not Path(path).expanduser().exists():
            continue
        src = _real(path)
        if out == src:
            how = "is"
        elif out in src.parents:
            how = "contains"
        elif src in out.parents:
            how = "is inside"
        else:
            continue
        raise OutputExistsError(
            f"{flag} {output} {how} the {role} ({path}); an output may not overlap an input "
            f"(not even with --overwrite); choose another {flag}"
        )


def check_apart(first: Path | str, first_flag: str, second: Path | str, second_flag: str) -> None:
    """Refuse two outputs of one run that overlap (neither need exist yet): checked before either
    is locked, so the message names the overlap, not a lock."""
    a, b = _real(first), _real(second)
    how = "is" if a == b else "contains" if b in a.parents else "is inside" if a in b.parents else None
    if how is not None:
        raise OutputExistsError(
            f"{second_flag} {second} {how} {first_flag} {first}; the two may not overlap: choose another {second_flag}"
        )


def check_written_file(path: Path | str | None, inputs: Inputs, flag: str) -> None:
    """A file a run will write (``-o r.json``, ``--plot``): not overlapping an input, and, if it
    exists, a regular file (a FIFO or device would hang or be destroyed)."""
    if path is None:
        return
    check_disjoint(path, inputs, flag)
    p = Path(path)
    if p.exists() and not p.is_dir() and not p.is_file():
        raise OutputExistsError(f"{flag} {path} exists and is not a regular file; choose another {flag}")


def local_sources(sources: Iterable[str]) -> list[tuple[str, Path]]:
    """The data sources that are local files or directories, as inputs for :func:`check_disjoint`."""
    return [
        ("data source", Path(s).expanduser())
        for s in sources
        if not is_builtin(s) and not s.startswith("hf:") and Path(s).expanduser().exists()
    ]


def lock_path(output: Path | str) -> Path:
    """Where the lock of ``output`` lives: ``.NAME.lock`` beside it (the output itself may be replaced)."""
    out = _real(output)
    return out.parent / f".{short_name(out.name)}.lock"  # legal for any legal name; keyed by the whole name


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def output_lock(output: Path | str) -> Iterator[None]:
    """Hold ``output``'s lock for the ``with`` block; refuse if another process holds it.

    The lock file is removed on release, and so are parent directories created
    for it that the run left empty. No lock is made inside a model directory
    (an output there overlaps an input and is refused): a kill -9 then leaves
    nothing in the teacher. Where no lock file can be made (a parent is
    a file, a read-only place, a file system without ``flock``) the run goes on
    unlocked, and the command's own checks name what is wrong with the output.
    """
    lock = lock_path(output)
    created: list[Path] = []
    fd = -1
    if _in_model_dir(lock.parent):  # an output there is refused by check_disjoint: write nothing into an input
        yield
        return
    try:
        missing = [p for p in [lock.parent, *lock.parent.parents] if not p.exists()]
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd = _acquire(lock, output)
    except OSError:
        fd = -1
    try:
        yield
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


def _in_model_dir(directory: Path) -> bool:
    """Whether ``directory`` is, or lies inside, a model directory (config.json beside safetensors weights)."""
    for d in [directory, *directory.parents]:
        if (d / "config.json").is_file() and (
            (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").is_file()
        ):
            return True
    return False


def _acquire(lock: Path, output: Path | str) -> int:
    """An open descriptor of ``lock`` holding its flock (-1: no flock here), or OutputLockedError."""
    import fcntl

    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(
                f"{output} is being written by another boomerang run (pid {_holder(lock)}); "
                "wait for it to finish or choose another output"
            ) from None
        except OSError:  # no flock on this file system
            os.close(fd)
            return -1
        # The holder before us may have removed the file after we opened it: lock the live one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:  # a full disk: no lock file left behind (the run goes on unlocked)
                os.unlink(lock)
                os.close(fd)
                return -1
            return fd
        os.close(fd)


def lock_if(output: Path | str | None, enabled: bool = True) -> contextlib.AbstractContextManager:
    """:func:`output_lock` of ``output``, or nothing (dry runs, no output, ranks that do not write)."""
    return output_lock(output) if output is not None and enabled else contextlib.nullcontext()


__all__ = [
    "lock_if",
    "check_disjoint",
    "check_apart",
    "check_written_file",
    "local_sources",
    "output_lock",
    "lock_path",
    "OutputLockedError",
]
