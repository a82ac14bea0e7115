"""Counts and sizes as people write them: ``2B`` parameters, ``5GB`` shards.

Decimal suffixes (as model names and the Hub use); one parser and one
formatter for parameter counts, one parser for byte sizes.
"""

from __future__ import annotations

import re

from .errors import BoomerangError

COUNT_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}  # G: billion too
_COUNT_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([KMBGT]?)", re.IGNORECASE)


#: Largest safetensors shard a written model gets unless --max-shard-size says otherwise (as transformers).
DEFAULT_MAX_SHARD = "5GB"


def parse_count(text: str) -> int | None:
    """``3.5M`` -> 3_500_000 (``_`` separators allowed); None when ``text`` is not a count."""
    m = _COUNT_RE.fullmatch(text.strip().replace("_", ""))
    if not m:
        return None
    return round(float(m.group(1)) * COUNT_SUFFIXES[m.group(2).upper()])


def format_params(n: float, digits: int = 4) -> str:
    """A parameter count short enough for a message, precise enough to act on (``digits`` significant)."""
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.{digits}g}{unit}"
    return str(int(n))


def parse_size(text: str) -> int:
    """``5GB``/``500MB``/``123`` to bytes (decimal units, as HF does; ``GiB`` binary)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise BoomerangError(f"cannot read size {text!r}; write it like 2GB or 500MB")
    unit = m.group(2).upper().rstrip("B")
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[
        unit
    ]
    return int(float(m.group(1)) * mult)
