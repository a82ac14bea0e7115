"""Outputs that appear whole or not at all: a directory renamed into place, a file replaced atomically.

A killed run leaves only hidden ``.NAME.tmp-PID-*`` siblings, which the next
run into the same output removes once their process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a non-empty existing output unless ``overwrite`` (checked before work)."""
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory; choose another -o")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass --overwrite or choose another -o")


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` on success.

    On any error the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    check_output_dir(final, overwrite)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_siblings(final)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_sibling_prefix(final)}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as exc:  # name the output asked for, not the temporary directory
        raise OutputExistsError(
            f"cannot create {final} ({(exc.strerror or str(exc)).lower()}: {exc.filename or final.parent}); "
            "choose another output path"
        ) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; outputs are ordinary directories
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_into_place(tmp, final)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final`` (the old ``final`` moved aside, then removed).

    An interrupt (Ctrl-C, SIGTERM mapped to KeyboardInterrupt) or an error
    during the swap puts back what was there and removes ``tmp``: the run then
    left nothing of itself, so rerunning the same command does the job.
    """
    trash = None
    try:
        if final.exists():
            trash = final.parent / f"{_sibling_prefix(final)}.old-{os.getpid()}"
            os.replace(final, trash)
        os.replace(tmp, final)
    except BaseException:
        if not tmp.exists() and final.exists():  # the new output had landed: take it back
            shutil.rmtree(final, ignore_errors=True)
        if trash is not None and trash.exists() and not final.exists():
            os.replace(trash, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def short_name(name: str, limit: int = 200) -> str:
    """``name`` itself, or one longer than ``limit`` cut with a hash of the whole name: siblings
    (locks, temporaries) keep a legal 255-byte name, and two names sharing a prefix do not share them."""
    if len(os.fsencode(name)) <= limit:
        return name
    import hashlib

    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return os.fsencode(name)[: limit - 17].decode("utf-8", "ignore") + "-" + digest


def _sibling_prefix(final: Path) -> str:
    """``.NAME`` for the temporary and old siblings of ``final``, short enough for a 255-byte file name."""
    return "." + short_name(final.name)


_SIBLING = re.compile(r"\.(tmp-(\d+)-.*|old-(\d+))")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_siblings(final: Path) -> None:
    """Remove what a killed run left beside ``final``: its ``.NAME.tmp-PID-*`` and ``.NAME.old-PID``
    entries whose process is gone (a live run's are left alone)."""
    prefix = _sibling_prefix(Path(final))
    parent = Path(final).parent
    if not parent.is_dir():
        return
    for p in parent.iterdir():
        m = _SIBLING.fullmatch(p.name[len(prefix) :]) if p.name.startswith(prefix) else None
        if m is None or _alive(int(m.group(2) or m.group(3))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def file_version(path: Path | str) -> tuple[str, int, int]:
    """A file's identity for memoizing what was read from it: resolved path, size, mtime (ns)."""
    st = os.stat(path)
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (one place where a full disk shows up, and tests simulate it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file via a temporary sibling and ``os.replace``.

    The sibling is ``.NAME.tmp-PID-*``, so a killed run's is found and removed
    by the next write (:func:`remove_dead_siblings`); a failed write (a full
    disk) removes its own before raising.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_siblings(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_sibling_prefix(path)}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        _write(fd, text.encode("utf-8", "surrogateescape"))
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
