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


def state_path() -> Path:
    env = os.environ.get("BOOMERANG_STATE")
    return Path(env) if env else Path.cwd() / ".boomerang" / "state.json"


def read_state() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(**values: Any) -> None:
    """Remember outputs (absolute paths) of the step that just finished."""
    data = read_state()
    for k, v in values.items():
        data[k] = str(Path(v).resolve()) if isinstance(v, (str, Path)) and k != "teacher" else v
    atomic_write_text(state_path(), json.dumps(data, indent=2) + "\n")


def last(key: str) -> str | None:
    value = read_state().get(key)
    return str(value) if value else None
