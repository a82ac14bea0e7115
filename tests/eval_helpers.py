"""Tiny families and data for the ``eval`` tests."""

from __future__ import annotations

import json
from pathlib import Path

from boomerang_cli.plan import Plan

from .common import TEXT, perturb_saved, save_tokenizer, tiny_model_dir

#: Text the tiny tokenizer knows, in many short documents (a local corpus for --data).
DOC_LINES = [line for line in TEXT.splitlines() if line.strip()]


def write_corpus(directory: Path, docs: int = 240) -> Path:
    """A JSONL corpus big enough for both splits (2% of rows are validation)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(docs):
            text = " ".join(DOC_LINES[(i + j) % len(DOC_LINES)] for j in range(4 + i % 5))
            f.write(json.dumps({"text": f"{i}: {text}"}) + "\n")
    return path


def build_family(
    tmp: Path,
    arch: str = "llama",
    order: str = "last-first",
    keep: list[int] | None = None,
    layers: int = 6,
    bos: bool = False,
    **overrides,
) -> Path:
    """teacher -> init-student -> perturbed student -> family with every member; returns family.json.

    ``bos``: the teacher's tokenizer adds a BOS to every text (like Gemma or Llama 3)."""
    from boomerang_cli.family import build_family as write_family, candidates, open_pair, select
    from boomerang_cli.refs import resolve
    from boomerang_cli.student import init_student

    tmp = Path(tmp)
    teacher = tiny_model_dir(tmp, arch, layers=layers, **overrides)
    if bos:
        save_tokenizer(teacher, add_bos=True)
    plan = Plan.from_keep(layers, keep) if keep else Plan.from_paper_flags(layers, 1, 2, 2)
    student = tmp / f"{arch}-student"
    init_student(resolve(str(teacher)), plan, student)
    perturb_saved(student, seed=7)
    pair = open_pair(resolve(str(teacher)), resolve(str(student)))
    cands = candidates(pair, order)
    picks = select(cands, all_members=True, student_params=0, teacher_params=0)
    result = write_family(pair, picks, tmp / f"{arch}-{order}-family", order=order)
    return result.manifest_path


def ppl_for(metrics: dict, data: str) -> dict:
    """The one perplexity entry measured on ``data`` (e.g. ``corpus.jsonl:train``) in a metrics object."""
    found = [e for e in metrics.get("perplexity", {}).values() if e["data"] == data]
    assert len(found) == 1, (data, list(metrics.get("perplexity", {})))
    return found[0]
