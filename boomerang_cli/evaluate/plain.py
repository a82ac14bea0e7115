"""``eval`` of plain model references, one by one; results merged into a results JSON."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ..arch import ModelInfo
from ..compose import compose
from ..errors import BoomerangError
from ..guard import check_written_file, local_sources
from ..models import load_model, load_tokenizer
from ..progress import NULL, Progress
from . import lmeval
from .options import EvalOptions, EvalReport, Row, TrunkInfo, bounded_seq_len, now
from ..forward.perplexity import load_eval_data, model_nll
from .results import DEFAULT_RESULTS, check_results_output, perplexity_entry, write_results
from ..forward.trunk import Stack


def evaluate_models(
    refs: Sequence[str],
    opts: EvalOptions,
    output: Path | None = None,
    progress: Progress = NULL,
) -> EvalReport:
    """Evaluate model references one by one; results merged into ``output`` (a results JSON)."""
    from ..refs import resolve

    opts.check()
    if opts.baselines:
        raise BoomerangError("--baseline prunes a teacher to its family's member sizes; give a family manifest")
    t0 = time.perf_counter()
    device = opts.torch_device()
    notes: list[str] = []
    rows: list[Row] = []
    described: dict[str, Any] | None = None
    trunk_reason = "plain models share no layers"
    resolved = [resolve(r, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code) for r in refs]
    out = Path(output) if output is not None else Path(DEFAULT_RESULTS)
    inputs = [("model", r.path) for r in resolved] + local_sources(opts.sources)
    check_results_output(out, inputs)
    check_written_file(opts.plot, inputs, "--plot")
    manager = lmeval.task_manager(opts.tasks, opts.task_dir) if opts.tasks else None
    seconds: dict[str, float] = {"perplexity": 0.0, "tasks": 0.0}
    task = progress.task("evaluating models", len(resolved), unit="models")
    for ref in resolved:
        task.update(description=f"evaluating {ref.ref}")
        info = ModelInfo.load(ref.path, opts.trust_remote_code)
        comp = compose({"teacher": info}, Stack.whole("teacher", info.arch.num_layers).layers, "teacher", "teacher")
        row = Row(ref.ref, "model", comp.num_params, info.arch.num_layers)
        model = load_model(info, opts.dtype, device, opts.trust_remote_code)
        tokenizer = load_tokenizer(ref.path, opts.trust_remote_code)
        if opts.perplexity:
            t = time.perf_counter()
            seq_len = bounded_seq_len(opts, info.config, notes)
            data = load_eval_data(
                opts.sources, opts.split, tokenizer, seq_len, opts.max_tokens, opts.text_field, opts.bos, opts.window
            )
            nll = model_nll(model, data, opts.batch_size)
            row.perplexity = perplexity_entry(nll, data, opts.dtype, False, now())
            described = described or data.describe()
            seconds["perplexity"] += time.perf_counter() - t
        if manager is not None:
            t = time.perf_counter()
            row.tasks = lmeval.run_tasks(
                model,
                tokenizer,
                opts.tasks,
                manager,
                batch_size=opts.batch_size,
                limit=opts.limit,
                num_fewshot=opts.num_fewshot,
                device=str(device),
            )
            for s in row.tasks.values():
                s.setdefault("limit", opts.limit)
            seconds["tasks"] += time.perf_counter() - t
        rows.append(row)
        del model
        task.advance(1)
    progress.finish(task)
    write_results(out, rows, resolved)
    seconds["total"] = time.perf_counter() - t0
    return EvalReport(
        target=", ".join(refs),
        kind="models",
        rows=rows,
        data=described,
        trunk=TrunkInfo(False, trunk_reason) if opts.perplexity else None,
        seconds=seconds,
        written=str(out),
        device=str(device),
        dtype=str(opts.dtype).removeprefix("torch."),
        tasks=list(opts.tasks),
        notes=notes,
    )
