"""``boomerang`` with the ``stdlib`` corpus read from ``$BOOMERANG_STDLIB`` when set.

The GPU scripts run on a machine with another Python than the CPU runs they
are compared with; pointing the corpus at a copy of the CPU machine's standard
library keeps the text and its train/validation split identical.

    python bench/boomerang_stdlib.py demo -o demo ...
"""

import os
import sys
from pathlib import Path

if os.environ.get("BOOMERANG_STDLIB"):
    import boomerang_cli.data as data

    data.stdlib_root = lambda: Path(os.environ["BOOMERANG_STDLIB"])

from boomerang_cli.cli import app  # noqa: E402

sys.argv = ["boomerang", *sys.argv[1:]]
app()
