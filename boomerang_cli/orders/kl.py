"""The calibrated orders' scorer and search on real models (``--order kl-greedy``, ``beam``, ``kl-dp``, ``auto``).

KL(teacher || member) of the next-token distributions, averaged over the
calibration tokens. The teacher's log-probabilities are computed once; every
batch of candidate members is then evaluated in memory through the shared
trunk of :mod:`boomerang_cli.forward.trunk` (candidates of one search step
differ in a single block, so they share most of their layers), nothing written.
The searches themselves are :mod:`.search`'s; this is the torch part of the
package, imported only where a search runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..arch import ModelInfo, max_positions
from ..data import DEFAULT_BOS, IGNORE
from ..errors import BoomerangError, DataError
from ..forward.perplexity import CHUNK_ROWS, EvalData, load_eval_data, model_logits
from ..forward.trunk import LayerRunner, Stack, TrunkEvaluator
from ..manifest import MANIFEST_NAME, FamilyManifest
from ..member import Member
from ..models import attention_mask, load_model, load_tokenizer, resolve_device
from ..pair import Pair
from ..plan import Plan
from ..progress import NULL, Progress
from ..student import distilled_on
from .calibration import CalibrationSpec
from .cost import order_cost, reusable
from .names import CALIBRATED_ORDERS, beam_width, check_beam
from .search import SearchResult, result_from_order_info, run_search


def calibration_for(
    order: str,
    sources: Sequence[str],
    *,
    student: Path | str,
    samples: int = CalibrationSpec.samples,
    seq_len: int = CalibrationSpec.seq_len,
    beam: int | None = None,
    bos: str = DEFAULT_BOS,
) -> CalibrationSpec | None:
    """The calibration of a calibrated ``order`` (None for a fixed order), checked before any work.

    Without ``sources``, the text the student was distilled on (its
    boomerang.json records it) calibrates the order: the tool already knows it.
    """
    sources = list(sources)
    if order not in CALIBRATED_ORDERS:
        given = [n for n, v in (("--calib-data", bool(sources)), ("--beam", beam is not None)) if v]
        if given:
            raise BoomerangError(
                f"{' and '.join(given)} apply to a calibrated --order ({', '.join(CALIBRATED_ORDERS)}), not {order}"
            )
        return None
    if beam is not None and order != "beam":
        raise BoomerangError("--beam sets the width of --order beam (kl-greedy is a beam of 1); use --order beam")
    check_beam(beam)
    text_field, weights = "text", None
    if not sources:  # the student's own text, in the proportions it was distilled on
        sources, text_field, weights = distilled_on(student)
        if not sources:
            raise BoomerangError(
                f"--order {order} measures each candidate's KL to the teacher on calibration text; pass "
                "--calib-data SRC (files, a directory, .jsonl, a hub dataset or stdlib)"
            )
    spec = CalibrationSpec(
        tuple(sources),
        samples=samples,
        seq_len=seq_len,
        text_field=text_field,
        bos=bos,
        weights=tuple(weights) if weights else None,
    )
    spec.check()
    return spec


def token_kl(teacher_logprobs: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum over unmasked tokens of KL(p_teacher || p_member), and the token count."""
    t = teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1])
    s = logits.reshape(-1, logits.shape[-1])
    keep = mask.reshape(-1).bool().to(t.device)
    total = torch.zeros((), dtype=torch.float64, device=t.device)
    for i in range(0, t.shape[0], CHUNK_ROWS):
        rows = keep[i : i + CHUNK_ROWS]
        if not rows.any():
            continue
        tl = t[i : i + CHUNK_ROWS][rows].float()
        sl = F.log_softmax(s[i : i + CHUNK_ROWS][rows].float(), dim=-1)
        total += (tl.exp() * (tl - sl)).sum().double()
    return float(total), int(keep.sum())


class KLScorer:
    """Members -> mean token KL to the teacher on the calibration data."""

    def __init__(
        self,
        models: Mapping[str, ModelInfo],
        spec: CalibrationSpec,
        *,
        batch_size: int = 8,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        loaded: Mapping[str, Any] | None = None,
    ) -> None:
        """``loaded``: teacher and student already in memory (``eval`` has them), else loaded here."""
        spec.check()
        limit = max_positions(models["teacher"].config)  # before tokens are packed or a model runs
        if limit is not None and spec.seq_len > limit:
            raise DataError(
                f"--calib-seq-len {spec.seq_len} is longer than the teacher's {limit} positions; "
                f"use --calib-seq-len {limit} or less"
            )
        self.batch_size = batch_size
        device = torch.device(device)
        tokenizer = load_tokenizer(models["teacher"].path)
        self.data: EvalData = load_eval_data(
            list(spec.sources),
            spec.split,
            tokenizer,
            spec.seq_len,
            spec.samples * spec.seq_len,
            spec.text_field,
            spec.bos,
            weights=spec.weights,
        )
        if loaded is None:
            loaded = {role: load_model(info, dtype, device) for role, info in models.items()}
        self.runners = {role: LayerRunner(m, models[role].arch.layers_path) for role, m in loaded.items()}
        # A position counts when it is real input (mask) and predicts something.
        self.masks = [mask & (labels != IGNORE) for _, labels, mask in self.data.batches(batch_size)]
        self.teacher_logprobs = []
        for ids, _, mask in self.data.batches(batch_size):
            logits = model_logits(loaded["teacher"], ids, mask)
            self.teacher_logprobs.append(F.log_softmax(logits.float(), dim=-1))
            del logits
        self.evaluated = 0
        self.on_scored: Callable[[int], None] | None = None

    def __call__(self, members: Sequence[Member]) -> list[float]:
        stacks = {str(i): Stack.of_member(m) for i, m in enumerate(members)}
        ev = TrunkEvaluator(self.runners, stacks)
        sums = {k: 0.0 for k in stacks}
        count = 0
        for b, (ids, _, mask) in enumerate(self.data.batches(self.batch_size)):
            keep = self.masks[b]

            def on_leaf(key: str, logits: torch.Tensor) -> None:
                total, _ = token_kl(self.teacher_logprobs[b], logits, keep)
                sums[key] += total

            ev.run(ids, attention_mask(mask), on_leaf)
            count += int(keep.sum())
        self.evaluated += len(members)
        if self.on_scored is not None:
            self.on_scored(len(members))
        return [sums[str(i)] / max(count, 1) for i in range(len(members))]


def search(
    models: Mapping[str, ModelInfo],
    plan: Plan,
    method: str,
    spec: CalibrationSpec,
    *,
    beam: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: Progress = NULL,
    loaded: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Run a calibrated order (``kl-greedy``, ``beam`` of width ``beam``, ``kl-dp``, ``auto``) with the real KL scorer.

    The result's ``calibration`` is the spec plus what the data turned out to be
    (key, tokens, fingerprint), so the manifest says exactly what was measured.
    """
    if method not in CALIBRATED_ORDERS:
        raise BoomerangError(f"{method!r} is not a calibrated order; use one of {', '.join(CALIBRATED_ORDERS)}")
    width = beam_width(method, beam)
    t0 = time.perf_counter()
    scorer = KLScorer(models, spec, batch_size=batch_size, device=device, loaded=loaded)
    task = progress.task(f"{method} search (calibration KL)", order_cost(plan, method, width), unit="members")
    scorer.on_scored = task.advance
    result = run_search(method, plan, scorer, width)
    progress.finish(task)
    d = scorer.data.describe()
    result.calibration = spec.to_json() | {
        "key": d["key"],
        "tokens": d["tokens"],
        "bos": d["bos"],
        "fingerprint": d["fingerprint"],
    }
    result.seconds = time.perf_counter() - t0
    return result


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
    if method not in CALIBRATED_ORDERS:
        raise BoomerangError(f"{method!r} is not a calibrated order; use one of {', '.join(CALIBRATED_ORDERS)}")
    width = beam_width(method, beam)
    spec.check()
    if prior is None and output is not None and (Path(output) / MANIFEST_NAME).is_file():
        try:
            prior = FamilyManifest.read(Path(output) / MANIFEST_NAME)
        except BoomerangError:
            prior = None
    if (
        prior is not None
        and reusable(prior.order, method, width)
        and spec.same_as(prior.order.calibration)
        and prior.teacher.fingerprint == pair.teacher_fingerprint
        and prior.student.fingerprint == pair.student_fingerprint
        and prior.plan == pair.plan
    ):
        return result_from_order_info(pair.plan, prior.order), True
    result = search(pair.models, pair.plan, method, spec, beam=width, device=resolve_device(device), progress=progress)
    return result, False
