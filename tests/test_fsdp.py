"""FSDP2 (``--fsdp``) on 2 CPU processes (gloo, torchrun): equal to one process, sharded, resumable after kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.distill import DistillConfig, distill
from boomerang_cli.errors import BoomerangError

from .common import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
STEPS, SEQ = 12, 32
runner = CliRunner()
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    teacher = tiny_model_dir(root, "llama", layers=6)
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": f"sample {i} of a small corpus; the fox jumps. " * (1 + i % 4)}) + "\n")
    return root, teacher, corpus


def _flags(corpus: Path) -> list[str]:
    # 2 processes x batch 1 x 2 micro-steps == 1 process x batch 2 x 2 micro-steps: 4 blocks a step.
    return ["--data", str(corpus), "--seq-len", str(SEQ), "--steps", str(STEPS), "--lr", "3e-3", "--grad-accum", "2",
            "--eval-every", "6", "--eval-blocks", "5", "--save-every", "2", "--seed", "3", "--device", "cpu"]


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "BOOMERANG_PROGRESS": "0",
            "BOOMERANG_STATE": str(root / "state.json")}


def _torchrun(root: Path, teacher: Path, out: Path, corpus: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "boomerang_cli", "distill", str(teacher), "-o", str(out), "--batch-size", "1", *_flags(corpus),
            "--fsdp", "--json", *extra]


def _rows(path: Path, split: str) -> list[dict]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["split"] == split]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def fsdp_run(setup):
    """One uninterrupted 2-process FSDP run, its checkpoints kept."""
    root, teacher, corpus = setup
    out = root / "fsdp"
    proc = subprocess.run(_torchrun(root, teacher, out, corpus, "--keep-checkpoints"), env=_env(root),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout[proc.stdout.index("{"):])  # rank 0 alone prints


@pytest.fixture
def in_process(monkeypatch, tmp_path):
    """Runs in this process: one torch thread, its own state file, no progress bar."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")
    yield
    torch.set_num_threads(threads)


def _one_process(teacher: Path, corpus: Path, out: Path, **kw) -> DistillConfig:
    return DistillConfig(teacher=str(teacher), output=out, data=[str(corpus)], seq_len=SEQ, batch_size=2,
                         grad_accum=2, steps=STEPS, lr=3e-3, eval_every=6, eval_blocks=5, save_every=2, seed=3,
                         device="cpu", **kw)


@pytest.mark.slow
def test_fsdp_on_two_processes_matches_one_process_and_halves_each_rank(setup, fsdp_run, in_process, tmp_path):
    root, teacher, corpus = setup
    two, summary = fsdp_run
    assert summary["world_size"] == 2 and summary["warnings"] == []
    one = distill(_one_process(teacher, corpus, tmp_path / "one"))
    for split in ("train", "validation"):
        a, b = _rows(two / "metrics.jsonl", split), _rows(tmp_path / "one" / "metrics.jsonl", split)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for ra, rb in zip(a, b):
            for k in ("loss", "ce", "kl", "cosine"):
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (split, ra["step"], k)
    wa, wb = _weights(two), _weights(tmp_path / "one")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
    # Each rank holds about half of the student (weights, gradients, AdamW state) and of the teacher.
    whole = one.memory[0]
    assert len(summary["memory"]) == 2
    for rank in summary["memory"]:
        for k in ("student_params", "student_grads", "optimizer_state", "teacher_params"):
            assert rank[k] == pytest.approx(whole[k] / 2, rel=0.02), k
    # The checkpoints were sharded: one file per rank.
    ckpt = Path(f"{two}-checkpoints")
    step = ckpt / (ckpt / "latest").read_text().strip()
    assert sorted(p.name for p in (step / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's ranks through /proc")
def test_fsdp_resume_after_kill_9_equals_the_uninterrupted_run(setup, fsdp_run, in_process):
    root, teacher, corpus = setup
    out = root / "killed"
    ckpt = Path(f"{out}-checkpoints")
    proc = subprocess.Popen(_torchrun(root, teacher, out, corpus), env=_env(root), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (ckpt / "latest").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.005)
    ranks = _children(proc.pid)  # torchrun puts each rank in its own session: kill them and the launcher
    assert len(ranks) == 2
    for pid in [*ranks, proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(_alive(pid) for pid in ranks):
        assert time.time() < deadline
        time.sleep(0.01)
    assert not out.exists()
    killed_at = int((ckpt / "latest").read_text().strip().split("-")[1])
    assert 2 <= killed_at < STEPS

    # Resuming with another number of processes: a clear error; the checkpoint stays.
    with pytest.raises(BoomerangError, match="written by 2 processes; resume with the same number"):
        distill(dataclasses.replace(_one_process(teacher, corpus, out, resume=True), batch_size=1))
    assert (ckpt / "latest").exists()

    resumed = subprocess.run(_torchrun(root, teacher, out, corpus, "--resume"), env=_env(root),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "rror" in line]
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["resumed_from"] == killed_at
    ref, _ = fsdp_run
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(ref / "metrics.jsonl", "train")]


def _one_line_error(res, code=2) -> str:
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_fsdp_with_one_process_trains_unsharded_and_says_so(setup, in_process, tmp_path):
    root, teacher, corpus = setup
    res = runner.invoke(app, ["distill", str(teacher), "-o", str(tmp_path / "o"), "--data", str(corpus),
                              "--steps", "1", "--seq-len", str(SEQ), "--batch-size", "1", "--fsdp"])
    assert res.exit_code == 0, res.output
    assert "nothing to shard across" in res.stderr and (tmp_path / "o" / "model.safetensors").exists()


def test_bad_shard_flags_are_one_line_exit_2(setup, in_process, tmp_path, monkeypatch):
    root, teacher, corpus = setup
    common = [str(teacher), "-o", str(tmp_path / "o"), "--data", str(corpus), "--steps", "1", "--seq-len", str(SEQ)]
    assert "student, teacher or both" in _one_line_error(runner.invoke(app, ["distill", *common, "--shard", "optimizer"]))
    assert "not both" in _one_line_error(runner.invoke(app, ["distill", *common, "--shard", "teacher", "--fsdp"]))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp
    assert "pass --fsdp" in _one_line_error(runner.invoke(app, ["distill", *common, "--fsdp"]))
    assert not (tmp_path / "o").exists()
