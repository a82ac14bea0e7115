"""Training text from several sources in set proportions, and in a seeded order.

``--data A --data B`` alone reads A to its end, then B: a short run sees only
A's first files. ``--data-weights 3,1`` interleaves them instead, document by
document, so that each source's share of the characters read so far stays at
its weight: the next document comes from the source furthest below its share
(ties to the first). A source that runs out before the others starts again
(upsampled), and a pass over the mix ends once every source has been read to
its end at least once, as ``interleave_datasets(..., stopping_strategy=
"all_exhausted")`` does in Hugging Face datasets, but with no random draw.

``--shuffle`` reads documents in a seeded order (the run's ``--seed``): a
shuffle buffer of :data:`SHUFFLE_BUFFER` documents, so any source of up to
that many documents is fully permuted and a streamed hub dataset still works.
Each pass (epoch) has its own order. Both are pure functions of the sources,
the seed and the pass, so a resumed run reads the same documents again.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

from ..errors import DataError
from .sources import load_all_documents, load_documents

#: Documents a shuffle holds at once: every builtin and typical local source fits whole.
SHUFFLE_BUFFER = 10_000


def check_weights(sources: Sequence[str], weights: Sequence[float] | None) -> None:
    """``--data-weights``: one finite weight > 0 per ``--data`` source."""
    if weights is None:
        return
    if len(weights) != len(sources):
        raise DataError(
            f"--data-weights gives {len(weights)} weights for {len(sources)} --data sources; "
            "give one weight per --data, in the same order"
        )
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise DataError(f"--data-weights must be numbers > 0 (got {','.join(f'{w:g}' for w in weights)})")


def parse_weights(text: str) -> list[float]:
    """``3,1`` or ``0.75,0.25`` to a list of floats (checked against the sources by :func:`check_weights`)."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise DataError(f"cannot read --data-weights {text!r}; write one number per --data, e.g. 3,1") from None


def shuffled(documents: Iterator[str], rng: random.Random, buffer: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """``documents`` in a random order drawn from ``rng``: a full permutation when there are at most
    ``buffer`` of them, else a buffer of that many that a streamed source passes through."""
    held: list[str] = []
    for doc in documents:
        held.append(doc)
        if len(held) > buffer:
            i = rng.randrange(len(held))
            held[i], held[-1] = held[-1], held[i]
            yield held.pop()
    rng.shuffle(held)
    yield from held


def _order(tag: str) -> random.Random:
    """A generator seeded by a string (Python hashes it with SHA-512: the same on every machine)."""
    return random.Random(f"boomerang-data:{tag}")


def _source_pass(source: str, split: str, text_field: str, seed: int | None, tag: str) -> Iterator[str]:
    docs = load_documents(source, split, text_field)
    return shuffled(docs, _order(tag)) if seed is not None else docs


def _interleaved(
    sources: Sequence[str], weights: Sequence[float], split: str, text_field: str, seed: int | None, epoch: int
) -> Iterator[str]:
    """Documents of every source, each source's share of characters held at its weight."""
    total = math.fsum(weights)
    share = [w / total for w in weights]
    passes = [0] * len(sources)
    read = [0] * len(sources)  # characters read from each source in this pass over the mix
    in_pass = [0] * len(sources)  # documents read in the source's current pass
    finished = [False] * len(sources)

    def start(i: int) -> Iterator[str]:
        return _source_pass(sources[i], split, text_field, seed, f"{seed}:{epoch}:{i}:{passes[i]}")

    current = [start(i) for i in range(len(sources))]
    while True:
        i = min(range(len(sources)), key=lambda k: (read[k] / share[k], k))
        doc = next(current[i], None)
        if doc is None:
            if in_pass[i] == 0:
                raise DataError(f"{sources[i]} has no documents in its {split} split; check --data")
            finished[i] = True
            if all(finished):
                return
            passes[i], in_pass[i] = passes[i] + 1, 0
            current[i] = start(i)
            continue
        read[i] += len(doc)
        in_pass[i] += 1
        yield doc


def mixed_documents(
    sources: Sequence[str],
    split: str = "train",
    text_field: str = "text",
    *,
    weights: Sequence[float] | None = None,
    seed: int | None = None,
    epoch: int = 0,
) -> Iterator[str]:
    """The documents of one pass over ``sources``: in order and one after the other (no weights, no
    seed: what :func:`load_all_documents` gives), interleaved by ``weights``, and/or shuffled by
    ``seed`` (a new order for each ``epoch``)."""
    check_weights(sources, weights)
    if weights is not None and len(sources) > 1:
        return _interleaved(sources, weights, split, text_field, seed, epoch)
    docs = load_all_documents(sources, split, text_field)
    return shuffled(docs, _order(f"{seed}:{epoch}")) if seed is not None else docs
