"""What ``boomerang export`` is asked: a plain record (no torch at import), so the CLI's flags read
their defaults from it; :func:`.writer.run_export` carries it out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DEFAULT_TYPE = "q8_0"  # --type: 8 bits, close to the member's own perplexity (docs/export.md)
DEFAULT_FORMAT = "gguf"  # --format: the one file format written so far


@dataclass
class ExportRequest:
    """Everything ``boomerang export`` can be asked; defaults are the CLI's.

    ``family``: a family.json or its directory; None: the last family ``boomerang family``
    built here. ``members``: names of the family's members (None: all of them, teacher and
    student included; given empty: refused).
    """

    family: str | Path | None
    output: str | Path
    type_name: str = DEFAULT_TYPE
    members: Sequence[str] | None = None
    file_format: str = DEFAULT_FORMAT
    modelfiles: bool = True  # an Ollama Modelfile beside each file
    overwrite: bool = False
