"""lm-evaluation-harness on in-memory models (the ``eval`` extra).

Members are never written for this: each is built in memory and handed to
lm-eval's ``HFLM`` as a ready model. ``--task-dir`` adds local task YAML files
(e.g. multiple choice over a local JSONL file) so evaluation works offline;
when every requested task is found there, lm-eval's own catalogue of thousands
of tasks is not even indexed (that takes ~15 s).
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ..errors import BoomerangError

#: Which metric stands for a task in tables and plots, first found wins.
PRIMARY_METRICS = ("acc_norm", "acc", "exact_match", "f1", "mcc", "word_perplexity")
INSTALL = "pip install 'boomerang-cli[eval]'"
#: Standard errors: closed form for accuracies; this many bootstrap draws for the few metrics
#: without one (lm-eval's default of 100000 takes minutes for those).
BOOTSTRAP_ITERS = 1000


def _lm_eval() -> Any:
    try:
        from lm_eval import evaluator
    except ImportError:
        raise BoomerangError(f"--tasks needs lm-evaluation-harness; run: {INSTALL}") from None
    return evaluator


def parse_tasks(text: str | None) -> list[str]:
    tasks = [t.strip() for t in (text or "").split(",") if t.strip()]
    if text is not None and not tasks:
        raise BoomerangError("--tasks is empty; name tasks like --tasks arc_easy,hellaswag")
    return list(dict.fromkeys(tasks))


def task_manager(tasks: Sequence[str], task_dir: Path | None) -> Any:
    """A ``TaskManager`` that knows ``tasks``: the local directory alone if it has them all."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if task_dir is not None:
        task_dir = Path(task_dir).expanduser()
        if not task_dir.is_dir():
            raise BoomerangError(f"--task-dir {task_dir}: no such directory of task YAML files")
        if not any(task_dir.rglob("*.yaml")) and not any(task_dir.rglob("*.yml")):
            raise BoomerangError(f"--task-dir {task_dir}: no .yaml task files in it")
        local = TaskManager(include_path=str(task_dir), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(task_dir) if task_dir is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = f" or in {task_dir}" if task_dir is not None else "; add local task YAML files with --task-dir"
        raise BoomerangError(f"unknown lm-eval task {unknown[0]!r} (not in lm-eval's catalogue{hint})")
    return manager


def scores_of(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's result dict -> ``{task: {metric: value, ..., "samples": n, "num_fewshot": k}}``.

    Metric keys lose lm-eval's default filter suffix (``acc,none`` -> ``acc``);
    other filters stay (``exact_match,strict-match``). Non-numbers (``N/A``) are dropped.
    """
    out: dict[str, dict[str, Any]] = {}
    samples = results.get("n-samples", {})
    shots = results.get("n-shot", {})
    for task, values in results.get("results", {}).items():
        entry: dict[str, Any] = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            if isinstance(value, float) and not math.isfinite(value):
                continue
            entry[metric if filt == "none" else key] = value
        if task in samples:
            entry["samples"] = samples[task].get("effective", samples[task].get("original"))
        if task in shots:
            entry["num_fewshot"] = shots[task]
        out[task] = entry
    return out


def primary_metric(scores: dict[str, Any]) -> tuple[str, float] | None:
    """The metric that stands for a task (accuracy where there is one)."""
    for name in PRIMARY_METRICS:
        if isinstance(scores.get(name), (int, float)):
            return name, float(scores[name])
    for name, value in scores.items():
        if isinstance(value, float) and "stderr" not in name:
            return name, value
    return None


@contextlib.contextmanager
def _lean(evaluator: Any) -> Any:
    """Skip what ``simple_evaluate`` adds for its own result files and we never read: the
    environment report (``torch.utils.collect_env``, ~3.5 s of subprocesses per call, i.e. per
    member) and the git hash of the current directory (prints "fatal: not a git repository")."""
    saved = {
        name: getattr(evaluator, name) for name in ("add_env_info", "get_git_commit_hash") if hasattr(evaluator, name)
    }
    if "add_env_info" in saved:
        evaluator.add_env_info = lambda storage: None
    if "get_git_commit_hash" in saved:
        evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(evaluator, name, value)


def run_tasks(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    manager: Any,
    *,
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str = "cpu",
    max_length: int | None = None,
) -> dict[str, dict[str, Any]]:
    """lm-eval's ``simple_evaluate`` on one in-memory model; scores per task."""
    evaluator = _lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, max_length=max_length)
    try:
        with _lean(evaluator):
            results = evaluator.simple_evaluate(
                model=lm,
                tasks=list(tasks),
                task_manager=manager,
                num_fewshot=num_fewshot,
                limit=limit,
                log_samples=False,
                bootstrap_iters=BOOTSTRAP_ITERS,
            )
    except Exception as exc:  # the harness, datasets and the hub raise many kinds (offline, bad YAML, ...)
        msg = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise BoomerangError(
            f"lm-eval could not run {', '.join(tasks)} ({type(exc).__name__}: {msg}); check the task files, "
            "or the network for lm-eval's own tasks"
        ) from exc
    if not results:
        raise BoomerangError(f"lm-eval returned no results for {', '.join(tasks)}")
    return scores_of(results)
