"""The ``boomerang`` command line: thin commands over the core.

Each command module registers itself on :data:`app` (``cli/app.py``) when
imported; importing this package imports them all.
"""

from __future__ import annotations

# In pipeline order: ``--help`` lists commands in the order they register
# (pyproject.toml's per-file-ignores allow these imports, made for their side effect).
from . import init_student, family, distill, eval, demo, export, serve
from .app import app

__all__ = ["app"]
