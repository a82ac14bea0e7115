"""Two CPU processes (gloo, torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boomerang_cli.distill import DistillConfig, distill

from .common import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]


def _rows(path: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["split"] == split]


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"), reason="torchrun is not available"
)
@pytest.mark.parametrize("mix", [None, 0.5], ids=["student", "mix"])
def test_two_processes_match_one_process(tmp_path, monkeypatch, mix):
    """With --mix, DDP must also accept steps whose replaced student layers get no gradient."""
    teacher = tiny_model_dir(tmp_path, "llama", layers=6)
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": f"sample {i} of a small corpus; the fox jumps. " * (1 + i % 4)}) + "\n")
    steps, seq = 4, 32
    # 2 processes x batch 1 x 2 micro-steps == 1 process x batch 2 x 2 micro-steps: 4 blocks a step.
    flags = [
        "--data",
        str(corpus),
        "--seq-len",
        str(seq),
        "--steps",
        str(steps),
        "--lr",
        "3e-3",
        "--grad-accum",
        "2",
        "--eval-every",
        "2",
        "--eval-blocks",
        "5",
        "--save-every",
        "2",
        "--keep-checkpoints",
        "--device",
        "cpu",
        *(["--mix", str(mix), "--seed", "1"] if mix else []),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "BOOMERANG_STATE": str(tmp_path / "state.json"),
    }
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "boomerang_cli",
        "distill",
        str(teacher),
        "-o",
        str(two),
        "--batch-size",
        "1",
        *flags,
        "--json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])  # rank 0 alone prints
    assert summary["world_size"] == 2 and proc.stdout.count('"world_size"') == 1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    try:
        one = tmp_path / "one"
        distill(
            DistillConfig(
                teacher=str(teacher),
                output=one,
                data=[str(corpus)],
                seq_len=seq,
                batch_size=2,
                grad_accum=2,
                steps=steps,
                lr=3e-3,
                eval_every=2,
                eval_blocks=5,
                save_every=2,
                keep_checkpoints=True,
                device="cpu",
                mix=mix,
                seed=1 if mix else 0,
            )
        )
    finally:
        torch.set_num_threads(threads)

    for split in ("train", "validation"):
        a, b = _rows(two / "metrics.jsonl", split), _rows(one / "metrics.jsonl", split)
        assert [r["step"] for r in a] == [r["step"] for r in b]  # rank 0 wrote each row once
        for ra, rb in zip(a, b):
            assert ra["tokens"] == rb["tokens"]
            for k in ("loss", "ce", "kl", "cosine"):
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (split, ra["step"], k)
            assert ra.get("teacher_blocks") == rb.get("teacher_blocks")
    if mix:  # both kinds of step ran
        assert {r["trained"] for r in _rows(two / "metrics.jsonl", "train")} == {"student", "member"}
    # One checkpoint, written once, with the data position both runs agree on.
    state = json.loads((Path(f"{two}-checkpoints") / "step-0000002" / "trainer_state.json").read_text())
    ref = json.loads((Path(f"{one}-checkpoints") / "step-0000002" / "trainer_state.json").read_text())
    assert state["position"] == ref["position"] and state["world_size"] == 2
    from safetensors.torch import load_file

    wa, wb = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
