"""Strict JSON: what boomerang writes parses with any JSON parser (docs/manifest.md).

Python's ``json`` writes NaN and infinities as bare ``NaN``/``Infinity``, which
are not JSON (JavaScript's ``JSON.parse`` fails on them, jq turns them into
null or 1.797e308). Here a non-finite number becomes ``null``, and the object
holding it gains two fields saying so::

    {"ppl": null, "nll": null, "finite": false, "nonfinite": {"ppl": "inf", "nll": "nan"}}

``nonfinite`` maps each affected key (``key[i]`` for a list element) to
``"nan"``, ``"inf"`` or ``"-inf"``. Objects without non-finite numbers are
written unchanged (no ``finite`` field).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _word(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _bad(x: Any) -> bool:
    return isinstance(x, float) and not math.isfinite(x)


def finite(obj: Any) -> Any:
    """A copy of ``obj`` with every non-finite float replaced by None and marked (see the module)."""
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        marks: dict[str, str] = {}
        for k, v in obj.items():
            if _bad(v):
                out[k], marks[str(k)] = None, _word(v)
            elif isinstance(v, (list, tuple)):
                for i, x in enumerate(v):
                    if _bad(x):
                        marks[f"{k}[{i}]"] = _word(x)
                out[k] = finite(v)
            else:
                out[k] = finite(v)
        if marks:
            out["finite"] = False
            prev = out.get("nonfinite")
            out["nonfinite"] = {**prev, **marks} if isinstance(prev, dict) else marks
        return out
    if isinstance(obj, (list, tuple)):
        return [None if _bad(x) else finite(x) for x in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null, marked)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def read_object(path: Path | str, fix: str) -> dict[str, Any]:
    """A JSON object from ``path``, strictly (no NaN or Infinity); anything else is one
    BoomerangError naming the file, what is wrong and ``fix``."""
    from .errors import BoomerangError

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a number")

    try:
        data = json.loads(Path(path).read_bytes(), parse_constant=refuse)
    except OSError as exc:
        raise BoomerangError(f"{path}: {(exc.strerror or type(exc).__name__).lower()}; {fix}") from None
    except ValueError as exc:  # cut off, not UTF-8, not JSON, NaN
        raise BoomerangError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]}); {fix}") from None
    if not isinstance(data, dict):
        raise BoomerangError(f"{path}: not a JSON object; {fix}")
    return data


__all__ = ["finite", "dumps", "read_object"]
