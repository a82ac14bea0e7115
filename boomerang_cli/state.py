"""What the last step produced, so short forms need not restate it.

``boomerang distill`` records its output student, ``family`` its manifest; the
next command can then omit them (``boomerang family --sizes 2B,3B``). The
record lives in ``.boomerang/state.json`` of the current directory (like git's
``.git``), or where ``$BOOMERANG_STATE`` points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import BoomerangError
from .guard import Inputs, check_disjoint


def state_path() -> Path:
    env = os.environ.get("BOOMERANG_STATE")
    return Path(env) if env else Path.cwd() / ".boomerang" / "state.json"


def read_state() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(inputs: Inputs = (), **values: Any) -> str | None:
    """Remember outputs (absolute paths) of the step that just finished.

    A convenience that never blocks a command: where the record cannot be
    written (a read-only directory, ``$BOOMERANG_STATE`` under a regular file)
    or would be written inside an input (the teacher as the working
    directory), nothing is remembered and the warning to show is returned.
    """
    path = state_path()
    try:
        check_disjoint(path, inputs, "the remembered last step")
    except BoomerangError:
        return (
            f"not remembering this step: {path} would be written inside an input; "
            "run from another directory or set BOOMERANG_STATE"
        )
    data = read_state()
    for k, v in values.items():
        data[k] = str(Path(v).resolve()) if isinstance(v, (str, Path)) and k != "teacher" else v
    try:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except (OSError, UnicodeError) as exc:
        return (
            f"not remembering this step: cannot write {path} ({getattr(exc, 'strerror', None) or exc}); "
            "set BOOMERANG_STATE to a writable file"
        )
    return None


def last(key: str) -> str | None:
    value = read_state().get(key)
    return str(value) if value else None
