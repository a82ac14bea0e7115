"""The ``boomerang`` command line: thin commands over the core.

Each command module registers itself on :data:`app` (``cli/app.py``) when
imported; importing this package imports them all.
"""

from __future__ import annotations

# In pipeline order: ``--help`` lists commands in the order they register.
from . import init_student, family, distill, eval, demo, export, serve  # noqa: F401,I001
from .app import app

__all__ = ["app"]
