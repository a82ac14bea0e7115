"""FSDP2 (``--fsdp``) on 2 CPU processes (gloo, torchrun): equal to one process, sharded, resumable after kill -9."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.distill import DistillConfig, checkpoint, distill, sharded_checkpoint
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
    return [
        "--data",
        str(corpus),
        "--seq-len",
        str(SEQ),
        "--steps",
        str(STEPS),
        "--lr",
        "3e-3",
        "--grad-accum",
        "2",
        "--eval-every",
        "6",
        "--eval-blocks",
        "5",
        "--save-every",
        "2",
        "--seed",
        "3",
        "--device",
        "cpu",
    ]


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "BOOMERANG_PROGRESS": "0",
        "BOOMERANG_STATE": str(root / "state.json"),
    }


def _torchrun(root: Path, teacher: Path, out: Path, corpus: Path, *extra: str) -> list[str]:
    return [
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
        str(out),
        "--batch-size",
        "1",
        *_flags(corpus),
        "--fsdp",
        "--json",
        *extra,
    ]


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
    proc = subprocess.run(
        _torchrun(root, teacher, out, corpus, "--keep-checkpoints"),
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout[proc.stdout.index("{") :])  # rank 0 alone prints


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
    return DistillConfig(
        teacher=str(teacher),
        output=out,
        data=[str(corpus)],
        seq_len=SEQ,
        batch_size=2,
        grad_accum=2,
        steps=STEPS,
        lr=3e-3,
        eval_every=6,
        eval_blocks=5,
        save_every=2,
        seed=3,
        device="cpu",
        **kw,
    )


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
    # The first step (the sharded load's weights, before any update) to 1e-6.
    first_two, first_one = (
        _rows(two / "metrics.jsonl", "train")[0],
        _rows(tmp_path / "one" / "metrics.jsonl", "train")[0],
    )
    assert first_two["loss"] == pytest.approx(first_one["loss"], rel=1e-6)
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


@pytest.mark.slow
def test_sharded_load_equals_a_full_load_shard_for_shard_and_in_the_first_step_loss(setup, tmp_path):
    """Meta build + each rank's rows (untied llama, tied gemma2) == full load then shard: bitwise; a tied
    teacher's embedding is whole on each rank, shared with its student, and gives the same loss."""
    root, teacher, _ = setup
    tied = tiny_model_dir(tmp_path, "gemma2", layers=4)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "tests" / "fsdp_load_check.py"),
        str(teacher),
        str(tied),
    ]
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert [out[str(teacher)]["tied"], out[str(tied)]["tied"]] == [False, True]
    assert out[str(teacher)]["head_is_own"] == [False, False] and out[str(tied)]["head_is_own"] == [False, True]
    # The tied teacher's embedding: one whole matrix per rank, outside FSDP, the student's too.
    assert [out[str(teacher)]["shared_embedding"], out[str(tied)]["shared_embedding"]] == [False, True]
    for r in out.values():
        assert r["shards"] > 20 and any(b.endswith("rotary_emb.inv_freq") for b in r["buffers"])
        full, sharded = r["losses"]
        assert sharded == pytest.approx(full, rel=1e-6, abs=1e-7) and full[0] > 0


@pytest.mark.slow
def test_tied_teacher_shares_one_whole_embedding_matches_one_process_and_resumes(setup, in_process, tmp_path):
    """A tied teacher under --fsdp: its embedding matrix stays whole on each rank, outside FSDP, and the
    student's frozen embeddings and head are that tensor (fsdp module docstring). The run logs one
    process's losses (the first step to 1e-6), writes its weights and the teacher's embedding bit for
    bit, counts the shared matrix once, and resumes from its distributed checkpoint to the same end;
    with bf16 gathers nothing is shared and the teacher's matrix is sharded like the rest."""
    root, _, corpus = setup
    tied = tiny_model_dir(tmp_path, "llama", layers=6, tie_word_embeddings=True)
    out, steps = tmp_path / "fsdp", ["--steps", "4", "--eval-every", "2"]
    proc = subprocess.run(
        [*_torchrun(root, tied, out, corpus, "--keep-checkpoints"), *steps],
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    one = distill(dataclasses.replace(_one_process(tied, corpus, tmp_path / "one"), steps=4, eval_every=2))
    assert summary["frozen_embeddings"] and one.frozen_embeddings
    for split in ("train", "validation"):
        a, b = _rows(out / "metrics.jsonl", split), _rows(tmp_path / "one" / "metrics.jsonl", split)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a
        for ra, rb in zip(a, b):
            for k in ("loss", "ce", "kl", "cosine"):
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (split, ra["step"], k)
    assert _rows(out / "metrics.jsonl", "train")[0]["loss"] == pytest.approx(
        _rows(tmp_path / "one" / "metrics.jsonl", "train")[0]["loss"], rel=1e-6
    )
    wa, wb, wt = _weights(out), _weights(tmp_path / "one"), _weights(tied)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)
    assert torch.equal(wa["model.embed_tokens.weight"], wt["model.embed_tokens.weight"])
    # Per rank: the whole embedding once, as the teacher's; half of everything else.
    emb = wt["model.embed_tokens.weight"].numel() * 4
    whole = one.memory[0]
    for rank in summary["memory"]:
        assert rank["teacher_params"] - emb == pytest.approx((whole["teacher_params"] - emb) / 2, rel=0.02)
        assert rank["student_params"] == pytest.approx((whole["student_params"] - emb) / 2, rel=0.02)
        assert rank["optimizer_state"] == pytest.approx(whole["optimizer_state"] / 2, rel=0.02)
    # Its checkpoint after step 2 (the shared matrix a plain tensor in it) resumes on 2 ranks to the end.
    moved = tmp_path / "moved"
    shutil.copytree(f"{out}-checkpoints", f"{moved}-checkpoints", symlinks=True)
    proc = subprocess.run(
        [*_torchrun(root, tied, moved, corpus, "--resume"), *steps],
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["resumed_from"] == 2
    assert [r["loss"] for r in _rows(moved / "metrics.jsonl", "train")] == [
        r["loss"] for r in _rows(out / "metrics.jsonl", "train")
    ]
    wm = _weights(moved)
    assert all(torch.equal(wm[k], wa[k]) for k in wa)
    # bf16 gathers: the student gathers a bf16 copy of its own, so the teacher's matrix is sharded too.
    bf = tmp_path / "bf16"
    proc = subprocess.run(
        [*_torchrun(root, tied, bf, corpus, "--precision", "bf16"), "--steps", "1", "--eval-every", "0"],
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in json.loads(proc.stdout[proc.stdout.index("{") :])["memory"]:
        assert rank["teacher_params"] == pytest.approx(whole["teacher_params"] / 2, rel=0.02)


@pytest.mark.slow
def test_fsdp_gradient_checkpointing_equals_without_and_bf16_gathers_run(setup, fsdp_run, tmp_path):
    """--gradient-checkpointing under FSDP2 (layers recomputed in backward, gathered again) logs the
    losses of the plain --fsdp run to 1e-5; --precision bf16 (MixedPrecisionPolicy: bf16 gathers,
    fp32 shards and reductions) runs on gloo, its first loss near fp32's, not equal to it."""
    root, teacher, corpus = setup
    ref, _ = fsdp_run
    want = _rows(ref / "metrics.jsonl", "train")
    out = tmp_path / "gc"
    proc = subprocess.run(
        _torchrun(root, teacher, out, corpus, "--gradient-checkpointing"),
        env=_env(root),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == [r["step"] for r in want]
    for r, w in zip(rows, want):
        for k in ("loss", "ce", "kl", "cosine"):
            assert r[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), (r["step"], k)
    bf = tmp_path / "bf16"
    cmd = [*_torchrun(root, teacher, bf, corpus, "--precision", "bf16"), "--steps", "1", "--eval-every", "0"]
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{") :])["precision"] == "bf16"
    first = _rows(bf / "metrics.jsonl", "train")[0]["loss"]
    assert first == pytest.approx(want[0]["loss"], rel=2e-2) and first != pytest.approx(want[0]["loss"], rel=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_over_localhost_match_one_process(setup, in_process, tmp_path):
    """The multi-node recipe of docs/distill.md, as two torchrun "nodes" of one process each (static
    rendezvous on 127.0.0.1, --nnodes 2 --node_rank 0/1), --fsdp across them: the one-process run."""
    root, teacher, corpus = setup
    out, port, steps = tmp_path / "nodes", _free_port(), "4"
    nodes = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--rdzv_backend",
            "static",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            "-m",
            "boomerang_cli",
            "distill",
            str(teacher),
            "-o",
            str(out),
            "--batch-size",
            "1",
            *_flags(corpus),
            "--steps",
            steps,
            "--eval-every",
            "2",
            "--fsdp",
            "--json",
        ]
        nodes.append(subprocess.Popen(cmd, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    (out0, err0), (out1, err1) = (p.communicate(timeout=600) for p in nodes)
    assert [p.returncode for p in nodes] == [0, 0], (err0[-2000:], err1[-2000:])
    summary = json.loads(out0[out0.index("{") :])
    assert summary["world_size"] == 2 and "{" not in out1  # node 1 writes and prints nothing
    distill(dataclasses.replace(_one_process(teacher, corpus, tmp_path / "one"), steps=4, eval_every=2))
    for split in ("train", "validation"):
        a, b = _rows(out / "metrics.jsonl", split), _rows(tmp_path / "one" / "metrics.jsonl", split)
        assert [r["step"] for r in a] == [r["step"] for r in b] and a
        for ra, rb in zip(a, b):
            for k in ("loss", "ce", "kl", "cosine"):
                assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (split, ra["step"], k)


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


@pytest.fixture(scope="module")
def killed(setup):
    """A 2-process --fsdp run killed (launcher and both ranks, kill -9) after a sharded checkpoint;
    its checkpoints, and a copy of them under another output name."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds torchrun's ranks through /proc")
    root, teacher, corpus = setup
    out = root / "killed"
    ckpt = Path(f"{out}-checkpoints")
    proc = subprocess.Popen(
        _torchrun(root, teacher, out, corpus), env=_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
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
    moved = root / "moved"
    shutil.copytree(ckpt, f"{moved}-checkpoints", symlinks=True)
    return out, moved, killed_at


@pytest.mark.slow
def test_fsdp_resume_after_kill_9_equals_the_uninterrupted_run(setup, fsdp_run, killed, in_process):
    root, teacher, corpus = setup
    out, _, killed_at = killed
    ckpt = Path(f"{out}-checkpoints")
    # Resuming with another global batch: a clear error; the checkpoint stays.
    with pytest.raises(BoomerangError, match="global batch is 4 blocks .* now 2; with 1 processes set --batch-size"):
        distill(dataclasses.replace(_one_process(teacher, corpus, out, resume=True), batch_size=1))
    assert (ckpt / "latest").exists()

    resumed = subprocess.run(
        _torchrun(root, teacher, out, corpus, "--resume"), env=_env(root), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "rror" in line]
    assert json.loads(resumed.stdout[resumed.stdout.index("{") :])["resumed_from"] == killed_at
    ref, _ = fsdp_run
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(out / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(ref / "metrics.jsonl", "train")]


class _Stop(Exception):
    """Ends a run right after a checkpoint, as a lost node would."""


@pytest.mark.slow
def test_fsdp_resumes_on_another_world_size_2_then_1_then_2(setup, fsdp_run, killed, in_process, monkeypatch):
    """DCP reshards on load: the killed 2-rank run resumes on 1 process (batch 2, the same global
    batch), which writes its own distributed checkpoint and stops, and then on 2 ranks to the end."""
    root, teacher, corpus = setup
    _, out, killed_at = killed
    ckpt = Path(f"{out}-checkpoints")
    save = sharded_checkpoint.save

    def save_then_stop(*args, **kw):
        save(*args, **kw)
        raise _Stop

    monkeypatch.setattr(sharded_checkpoint, "save", save_then_stop)
    with pytest.raises(_Stop):  # one process, --fsdp asked: unsharded, but a DCP checkpoint
        distill(_one_process(teacher, corpus, out, resume=True, shard=["student", "teacher"]))
    monkeypatch.undo()
    mid = int((ckpt / "latest").read_text().strip().split("-")[1])
    assert mid == killed_at + 2 and sharded_checkpoint.is_sharded(ckpt / f"step-{mid:07d}")
    assert json.loads((ckpt / f"step-{mid:07d}" / "trainer_state.json").read_text())["world_size"] == 1

    resumed = subprocess.run(
        _torchrun(root, teacher, out, corpus, "--resume"), env=_env(root), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "rror" in line]
    summary = json.loads(resumed.stdout[resumed.stdout.index("{") :])
    ref, ref_summary = fsdp_run
    assert summary["resumed_from"] == mid and summary["tokens"] == ref_summary["tokens"]
    rows, want = _rows(out / "metrics.jsonl", "train"), _rows(ref / "metrics.jsonl", "train")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in want]  # no block seen twice or skipped
    for r, w in zip(rows, want):
        for k in ("loss", "ce", "kl", "cosine"):
            assert r[k] == pytest.approx(w[k], rel=1e-5), (r["step"], k)
    a, b = _weights(out), _weights(ref)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def _one_line_error(res, code=2) -> str:
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_fsdp_with_one_process_trains_unsharded_and_says_so(setup, in_process, tmp_path):
    root, teacher, corpus = setup
    res = runner.invoke(
        app,
        [
            "distill",
            str(teacher),
            "-o",
            str(tmp_path / "o"),
            "--data",
            str(corpus),
            "--steps",
            "1",
            "--seq-len",
            str(SEQ),
            "--batch-size",
            "1",
            "--fsdp",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "nothing to shard across" in res.stderr and (tmp_path / "o" / "model.safetensors").exists()


def test_bad_shard_flags_are_one_line_exit_2(setup, in_process, tmp_path, monkeypatch):
    root, teacher, corpus = setup
    common = [str(teacher), "-o", str(tmp_path / "o"), "--data", str(corpus), "--steps", "1", "--seq-len", str(SEQ)]
    assert "student, teacher or both" in _one_line_error(
        runner.invoke(app, ["distill", *common, "--shard", "optimizer"])
    )
    assert "not both" in _one_line_error(runner.invoke(app, ["distill", *common, "--shard", "teacher", "--fsdp"]))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp
    assert "pass --fsdp" in _one_line_error(runner.invoke(app, ["distill", *common, "--fsdp"]))
    assert not (tmp_path / "o").exists()


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_bad_sharded_combinations_are_one_line_exit_2_and_write_nothing(setup, in_process, tmp_path, monkeypatch):
    root, teacher, corpus = setup
    out = tmp_path / "full"
    common = [
        "--data",
        str(corpus),
        "--steps",
        "4",
        "--seq-len",
        str(SEQ),
        "--batch-size",
        "1",
        "--save-every",
        "2",
        "--device",
        "cpu",
    ]
    save = checkpoint.save

    def save_then_stop(*args, **kw):
        save(*args, **kw)
        raise _Stop

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(_Stop):  # an unsharded run leaves a full checkpoint
        distill(dataclasses.replace(_one_process(teacher, corpus, out), steps=4, eval_every=0))
    monkeypatch.undo()
    ckpt = Path(f"{out}-checkpoints")
    before = _tree(ckpt)
    assert not sharded_checkpoint.is_sharded(ckpt / (ckpt / "latest").read_text().strip())
    line = _one_line_error(runner.invoke(app, ["distill", str(teacher), "-o", str(out), *common, "--resume", "--fsdp"]))
    assert "full (unsharded) checkpoint" in line and "without --fsdp" in line
    assert _tree(ckpt) == before and not out.exists()

    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"  # the teacher with its weights as pytorch_model.bin only
    shutil.copytree(teacher, pickled, ignore=shutil.ignore_patterns("*.safetensors*"))
    torch.save(load_file(str(teacher / "model.safetensors")), pickled / "pytorch_model.bin")
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "cache"))
    line = _one_line_error(
        runner.invoke(app, ["distill", str(pickled), "-o", str(tmp_path / "p"), *common, "--shard", "teacher"])
    )
    assert "--allow-pickle" in line
    assert not (tmp_path / "p").exists() and not Path(f"{tmp_path / 'p'}-checkpoints").exists()
    assert not (tmp_path / "cache").exists()
