"""A calibrated order's search for a pair, reused from the family already on disk when it matches."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BoomerangError
from ..manifest import MANIFEST_NAME, FamilyManifest
from ..models import resolve_device
from ..orders import CALIBRATED_ORDERS, SearchResult, beam_width, result_from_order_info, reusable
from ..pair import Pair
from ..progress import NULL, Progress

if TYPE_CHECKING:
    from ..calibrate import CalibrationSpec


def calibrated_search(
    pair: Pair,
    method: str,
    spec: CalibrationSpec,
    *,
    beam: int | None = None,
    device: str = "auto",
    output: Path | None = None,
    prior: FamilyManifest | None = None,
    progress: Progress = NULL,
) -> tuple[SearchResult, bool]:
    """The ``kl-greedy``/``beam`` search for this pair, and whether it was reused.

    A family already in ``output`` built from the same teacher, student, method,
    beam and calibration settings carries its search in the manifest: reused, so
    a resumed or repeated ``family`` does not score every candidate again. ``prior``: that
    manifest, already read (then ``output`` is not read again).
    """
    from ..calibrate import search

    if method not in CALIBRATED_ORDERS:
        raise BoomerangError(f"{method!r} is not a calibrated order; use one of {', '.join(CALIBRATED_ORDERS)}")
    width = beam_width(method, beam)
    spec.check()
    if prior is None and output is not None and (Path(output) / MANIFEST_NAME).is_file():
        try:
            prior = FamilyManifest.read(Path(output) / MANIFEST_NAME)
        except BoomerangError:
            prior = None
    if (prior is not None and reusable(prior.order, method, width) and spec.same_as(prior.order.calibration)
            and prior.teacher.fingerprint == pair.teacher_fingerprint
            and prior.student.fingerprint == pair.student_fingerprint and prior.plan == pair.plan):
        return result_from_order_info(pair.plan, prior.order), True
    result = search(pair.models, pair.plan, method, spec, beam=width, device=resolve_device(device),
                    progress=progress)
    return result, False
