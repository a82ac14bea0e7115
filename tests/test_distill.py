"""``boomerang distill`` on tiny random models: training, output, short forms, errors, resume."""

from __future__ import annotations

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
from boomerang_cli.distill import DistillConfig, LossWeights, distill
from boomerang_cli.distill import model as distill_model
from boomerang_cli.errors import TrainingDivergedError

from .common import load, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("teacher"), "llama", layers=6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A JSONL corpus with enough rows that the held-out split is not empty."""
    path = tmp_path_factory.mktemp("data") / "corpus.jsonl"
    with open(path, "w") as f:
        for i in range(300):
            text = f"The quick brown fox jumps over the lazy dog {i % 7}. def add(a, b):\n    return a + b\n"
            f.write(json.dumps({"text": text * (1 + i % 3)}) + "\n")
    return path


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny models run fastest on one thread, and several threads crawl on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for subprocesses
    yield
    torch.set_num_threads(threads)


def _cfg(teacher, corpus, out, **kw) -> DistillConfig:
    base = dict(
        teacher=str(teacher),
        output=Path(out),
        data=[str(corpus)],
        seq_len=32,
        batch_size=2,
        steps=4,
        lr=3e-3,
        save_every=0,
    )
    base.update(kw)
    return DistillConfig(**base)


def _rows(path: Path, split: str = "train") -> list[dict]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["split"] == split]


def test_few_steps_reduce_the_loss_and_write_a_complete_student(teacher, corpus, tmp_path):
    from boomerang_cli.arch import ModelInfo
    from boomerang_cli.compose import fingerprint

    out = tmp_path / "student"
    r = distill(_cfg(teacher, corpus, out, steps=12, batch_size=4, eval_every=6, eval_blocks=4))
    train, val = _rows(out / "metrics.jsonl"), _rows(out / "metrics.jsonl", "validation")
    assert [row["step"] for row in train] == list(range(1, 13))
    assert [row["step"] for row in val] == [0, 6, 12]
    assert val[-1]["loss"] < val[0]["loss"] and val[-1]["ce"] < val[0]["ce"]
    first, last = sum(r_["loss"] for r_ in train[:3]), sum(r_["loss"] for r_ in train[-3:])
    assert last < first
    for row in train:
        assert {"loss", "ce", "kl", "cosine", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(row)
    assert train[-1]["tokens"] == r.tokens == 12 * 4 * 32
    # A standard HF directory with its record.
    model = load(out)
    assert model.config.num_hidden_layers == r.plan.num_student_layers == 4
    rec = json.loads((out / "boomerang.json").read_text())
    assert rec["plan"]["kept"] == [0, 2, 4, 5]
    assert rec["teacher"] == {"ref": str(teacher), "fingerprint": fingerprint(ModelInfo.load(teacher))}
    tr = rec["training"]
    assert tr["tokens"] == r.tokens and tr["steps"] == 12
    assert tr["config"]["seq_len"] == 32 and tr["config"]["weights"] == LossWeights().to_json()
    assert tr["final_losses"]["loss"] == pytest.approx(train[-1]["loss"])
    assert tr["final_eval"]["loss"] == pytest.approx(val[-1]["loss"])
    assert json.loads((out / "student_config.json").read_text())["copied_teacher_layers"] == [0, 2, 4, 5]
    assert "boomerang distill" in (out / "README.md").read_text()
    assert (out / "tokenizer.json").exists()
    assert not Path(f"{out}-checkpoints").exists()


def test_chunking_and_gradient_checkpointing_change_nothing(teacher, corpus, tmp_path):
    runs = {}
    for name, kw in {"auto": {}, "chunk3": {"loss_chunk": 3}, "ckpt": {"gradient_checkpointing": True}}.items():
        distill(_cfg(teacher, corpus, tmp_path / name, steps=3, **kw))
        runs[name] = [r["loss"] for r in _rows(tmp_path / name / "metrics.jsonl")]
    assert len(runs["auto"]) == 3  # an empty metrics file would make the comparison vacuous
    for name in ("chunk3", "ckpt"):
        assert runs[name] == pytest.approx(runs["auto"], rel=1e-5)


def test_terms_switch_off(teacher, corpus, tmp_path, monkeypatch):
    def no_teacher(*a, **k):
        raise AssertionError("CE alone must not run the teacher")

    monkeypatch.setattr(distill_model.Teacher, "__call__", no_teacher)
    distill(_cfg(teacher, corpus, tmp_path / "ce", steps=2, weights=LossWeights(1.0, 0.0, 0.0)))
    assert len(_rows(tmp_path / "ce" / "metrics.jsonl")) == 2
    for row in _rows(tmp_path / "ce" / "metrics.jsonl"):
        assert row["kl"] == 0 and row["cosine"] == 0 and row["loss"] == pytest.approx(row["ce"])
    monkeypatch.undo()
    distill(_cfg(teacher, corpus, tmp_path / "kl", steps=2, weights=LossWeights(0.0, 1.0, 0.0, temperature=2.0)))
    assert len(_rows(tmp_path / "kl" / "metrics.jsonl")) == 2
    for row in _rows(tmp_path / "kl" / "metrics.jsonl"):
        assert row["cosine"] == 0 and row["loss"] == pytest.approx(4.0 * row["kl"])


def test_cpu_bf16_autocast_runs(teacher, corpus, tmp_path):
    r = distill(_cfg(teacher, corpus, tmp_path / "bf16", steps=2, precision="bf16"))
    assert r.precision == "bf16" and all(map(lambda v: v == v and abs(v) < 1e4, r.final.values()))


@pytest.mark.parametrize("model_type", ["gpt2", "gemma2", "qwen2"])
def test_other_architectures(model_type, corpus, tmp_path):
    """Tied heads, dropout, logit softcapping, sliding windows: a student made here trains and loads."""
    t = tiny_model_dir(tmp_path, model_type, layers=6)
    r = distill(_cfg(t, corpus, tmp_path / "out", steps=2))
    assert all(v == v and abs(v) < 1e3 for v in r.final.values()) and r.final["kl"] > 0
    assert load(tmp_path / "out").config.num_hidden_layers == 4


def test_cli_short_forms_and_json(teacher, corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["init-student", str(teacher), "-o", "s", "--json"])
    assert res.exit_code == 0, res.output
    common = ["--data", str(corpus), "--seq-len", "32", "--batch-size", "2"]
    res = runner.invoke(app, ["distill", *common, "--steps", "2", "--json"])  # TEACHER and -o from the last step
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert Path(summary["output"]) == (tmp_path / "s-distilled").resolve() and summary["teacher"] == str(teacher)
    assert Path(summary["student_init"]) == (tmp_path / "s").resolve() and summary["steps"] == 2
    assert json.loads((tmp_path / "s-distilled" / "boomerang.json").read_text())["teacher"]["ref"] == str(teacher)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["student"] == str((tmp_path / "s-distilled").resolve()) and state["teacher"] == str(teacher)
    # TEACHER only: a student initialized in memory, output named after the teacher.
    res = runner.invoke(app, ["distill", str(teacher), *common, "--keep", "0,3", "--tokens", "128"])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "llama-0-distilled" / "boomerang.json").read_text())
    assert rec["plan"]["kept"] == [0, 3] and rec["training"]["steps"] == 2  # 128 tokens = 2 steps of 2 x 32


def _one_line_error(res, code=2):
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def test_bad_input_is_one_line_exit_2(teacher, corpus, tmp_path):
    common = ["--data", str(corpus), "--steps", "1", "--seq-len", "32"]
    other = tiny_model_dir(tmp_path, "qwen3", layers=4)
    assert "does not match" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "--student", str(other), "-o", str(tmp_path / "o1"), *common])
    )
    fake = tiny_model_dir(tmp_path / "fake", "llama", layers=3)
    assert "--keep" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "--student", str(fake), "-o", str(tmp_path / "o2"), *common])
    )
    assert "positions" in _one_line_error(
        runner.invoke(
            app, ["distill", str(teacher), "-o", str(tmp_path / "o3"), "--data", str(corpus), "--seq-len", "4096"]
        )
    )
    assert "no such file" in _one_line_error(
        runner.invoke(
            app, ["distill", str(teacher), "-o", str(tmp_path / "o4"), "--data", str(tmp_path / "missing.jsonl")]
        )
    )
    (tmp_path / "empty").mkdir()
    assert "no text" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "-o", str(tmp_path / "o5"), "--data", str(tmp_path / "empty")])
    )
    (tmp_path / "none.jsonl").write_text("\n")
    assert "no documents" in _one_line_error(
        runner.invoke(
            app,
            [
                "distill",
                str(teacher),
                "-o",
                str(tmp_path / "o6"),
                "--data",
                str(tmp_path / "none.jsonl"),
                "--seq-len",
                "64",
                "--steps",
                "1",
            ],
        )
    )
    (tmp_path / "afile").write_text("x")
    assert "cannot write" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "-o", str(tmp_path / "afile" / "out"), *common])
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "--overwrite" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "-o", str(tmp_path / "full"), *common])
    )
    assert "tensorboard" in _one_line_error(
        runner.invoke(app, ["distill", str(teacher), "-o", str(tmp_path / "o7"), *common, "--report-to", "tensorboard"])
    )
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))
    assert not list(tmp_path.glob("*-checkpoints")) and not (tmp_path / "afile-checkpoints").exists()


def test_report_to_tensorboard_when_installed(teacher, corpus, tmp_path, monkeypatch):
    import types

    logged = []

    class Writer:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            logged.append((tag, step))

        def close(self):
            logged.append(("closed", self.log_dir))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    distill(_cfg(teacher, corpus, tmp_path / "tb", steps=2, report_to=["tensorboard"], logging_dir=tmp_path / "runs"))
    assert ("train/loss", 1) in logged and ("train/kl", 2) in logged
    assert logged[-1] == ("closed", str(tmp_path / "runs"))


def test_divergence_stops_and_keeps_the_last_good_checkpoint(teacher, corpus, tmp_path, monkeypatch):
    calls = {"n": 0}
    forward = distill_model.DistillStudent.forward

    def poisoned(self, *args, **kw):
        out = forward(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] >= 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(distill_model.DistillStudent, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match="step 3.*step-0000002"):
        distill(_cfg(teacher, corpus, out, steps=6, save_every=2))
    assert not out.exists()
    ckpt = Path(f"{out}-checkpoints")
    assert (ckpt / "latest").read_text().strip() == "step-0000002"
    assert (ckpt / "step-0000002" / "state.pt").exists()
    assert TrainingDivergedError.exit_code == 3


def test_existing_checkpoints_need_resume_or_overwrite(teacher, corpus, tmp_path):
    out = tmp_path / "r"
    ckpt = Path(f"{out}-checkpoints")
    (ckpt / "step-0000001").mkdir(parents=True)
    for name in ("state.pt", "trainer_state.json"):
        (ckpt / "step-0000001" / name).write_text("{}")
    (ckpt / "latest").write_text("step-0000001\n")
    res = runner.invoke(
        app, ["distill", str(teacher), "-o", str(out), "--data", str(corpus), "--steps", "1", "--seq-len", "32"]
    )
    assert "--resume" in _one_line_error(res)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


#: Plain, and with issue #22's levers: members trained (--mix), two sources interleaved, a shuffled order.
LEVERS = {
    "plain": ([], {}),
    "mix-shuffle-weights": (
        ["--mix", "0.5", "--shuffle", "--data", "stdlib-docs", "--data-weights", "2,1"],
        dict(mix=0.5, shuffle=True, data_weights=[2.0, 1.0]),
    ),
}


@pytest.mark.parametrize("levers", list(LEVERS))
def test_resume_after_sigkill_equals_an_uninterrupted_run(teacher, corpus, tmp_path, levers):
    extra_flags, extra = LEVERS[levers]
    flags = [
        "--data",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--steps",
        "60",
        "--lr",
        "3e-3",
        "--save-every",
        "3",
        "--seed",
        "7",
        *extra_flags,
    ]
    out = tmp_path / "killed"
    ckpt = Path(f"{out}-checkpoints")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "boomerang_cli", "distill", str(teacher), "-o", str(out), *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (ckpt / "latest").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    killed_at = int((ckpt / "latest").read_text().strip().split("-")[1])
    assert 3 <= killed_at < 60
    # The same command again, with --resume (in this process, to skip another start-up).
    cfg = dict(steps=60, lr=3e-3, save_every=3, seed=7, **extra)
    if levers != "plain":
        cfg["data"] = [str(corpus), "stdlib-docs"]
    resumed = distill(_cfg(teacher, corpus, out, resume=True, **cfg))
    assert resumed.resumed_from == killed_at

    ref = tmp_path / "uninterrupted"
    distill(_cfg(teacher, corpus, ref, **cfg))
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert [r["loss"] for r in rows] == [r["loss"] for r in _rows(ref / "metrics.jsonl")]
    if levers != "plain":  # the same members after the resume as without the kill
        assert {r.get("trained") for r in rows} == {"student", "member"}
        assert [r["teacher_blocks"] for r in rows] == [r["teacher_blocks"] for r in _rows(ref / "metrics.jsonl")]


@pytest.mark.integration
def test_smollm2_default_student_distills_on_stdlib(tmp_path):
    from transformers import AutoModelForCausalLM

    from boomerang_cli.refs import resolve

    resolve("smollm2-135m")
    out = tmp_path / "smol"
    r = distill(
        DistillConfig(
            teacher="smollm2-135m",
            output=out,
            data=["stdlib"],
            seq_len=64,
            batch_size=2,
            steps=6,
            save_every=0,
            eval_every=6,
            eval_blocks=4,
        )
    )
    assert r.plan.kept == tuple(list(range(0, 29, 2)) + [29])
    train, val = _rows(out / "metrics.jsonl"), _rows(out / "metrics.jsonl", "validation")
    for row in train + val:
        for k in ("loss", "ce", "kl", "cosine"):
            assert row[k] == row[k] and abs(row[k]) < 1e3  # finite
    assert val[-1]["loss"] < val[0]["loss"]
    assert sum(x["loss"] for x in train[-2:]) < sum(x["loss"] for x in train[:2])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_hidden_layers == 16


def test_bos_tokenizer_trains_on_blocks_that_start_with_bos(corpus, tmp_path, monkeypatch):
    """SPEC section 7 through distill: every training block starts with BOS; recorded in boomerang.json."""
    from boomerang_cli.distill import train as train_mod

    from .common import BOS_ID, save_tokenizer

    teacher = tiny_model_dir(tmp_path / "t", "llama", layers=6)
    save_tokenizer(teacher, add_bos=True)
    firsts: list[torch.Tensor] = []
    real = train_mod.forward_backward

    def spy(model, teacher_, acc, ids, *a, **k):
        firsts.append(ids[:, 0].clone())
        return real(model, teacher_, acc, ids, *a, **k)

    monkeypatch.setattr(train_mod, "forward_backward", spy)
    for policy, expect in (("auto", True), ("never", False)):
        firsts.clear()
        out = tmp_path / f"student-{policy}"
        r = distill(_cfg(teacher, corpus, out, steps=2, bos=policy))
        assert r.bos is expect
        assert bool((torch.cat(firsts) == BOS_ID).all()) is expect
        training = json.loads((out / "boomerang.json").read_text())["training"]
        assert training["bos"] is expect and training["config"]["bos"] == policy
        card = (out / "README.md").read_text()  # fit to publish: no local path
        assert str(teacher) not in card and str(corpus) not in card and str(tmp_path) not in card
        assert "a local model `llama-0`" in card and "a local `corpus.jsonl`" in card
        assert ("starting with BOS" in card) is expect


def test_a_checkpoint_from_before_bos_resumes_with_bos_never(teacher, corpus, tmp_path):
    from boomerang_cli.distill.config import check_resumable as _check_resumable
    from boomerang_cli.errors import BoomerangError

    cfg = _cfg(teacher, corpus, tmp_path / "s")
    old = {k: v for k, v in cfg.to_json().items() if k != "bos"}
    state = {"config": old, "steps": 4, "world_size": 1}
    with pytest.raises(BoomerangError, match="bos differ"):
        _check_resumable(cfg, state, 1, 4)
    _check_resumable(_cfg(teacher, corpus, tmp_path / "s", bos="never"), state, 1, 4)


def test_a_checkpoint_of_split_rule_1_resumes_only_where_the_rule_changed_nothing(teacher, corpus, tmp_path):
    """Split rule 1 cut text sources of < 50 files into paragraphs: a checkpoint made so over a text file
    cannot continue (its data position indexes paragraphs); over JSONL rows it resumes as before."""
    from boomerang_cli.distill.config import check_resumable as _check_resumable
    from boomerang_cli.errors import BoomerangError

    text = tmp_path / "notes.txt"
    text.write_text("one line\nand another\n" * 50)
    for data, refused in ((text, True), (corpus, False)):
        cfg = _cfg(teacher, data, tmp_path / "s")
        old = {k: v for k, v in cfg.to_json().items() if k != "split_rule"}  # written before split_rule
        state = {"config": old, "steps": 4, "world_size": 1}
        if refused:
            with pytest.raises(BoomerangError, match="split rule 1.*start over with --overwrite"):
                _check_resumable(cfg, state, 1, 4)
        else:
            _check_resumable(cfg, state, 1, 4)
        _check_resumable(cfg, {"config": cfg.to_json(), "steps": 4, "world_size": 1}, 1, 4)


def test_without_a_terminal_progress_is_plain_lines_and_quiet_silences_it(teacher, corpus, tmp_path):
    """stderr a pipe (CI, nohup): plain lines naming the step count, no ANSI codes; --quiet: none."""
    flags = ["--data", str(corpus), "--seq-len", "32", "--batch-size", "2", "--lr", "3e-3", "--save-every", "0"]
    env = {k: v for k, v in os.environ.items() if k != "BOOMERANG_PROGRESS"}
    env.update(PYTHONPATH=str(REPO), BOOMERANG_PROGRESS_INTERVAL="0.01", BOOMERANG_STATE=str(tmp_path / "s.json"))
    cmd = [sys.executable, "-m", "boomerang_cli", "distill", str(teacher), *flags]
    run = subprocess.run(
        [*cmd, "-o", str(tmp_path / "a"), "--steps", "60"], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("distilling: step ")]
    assert len(lines) >= 2 and all("/60 " in line for line in lines)
    assert lines[-1].startswith("distilling: step 60/60 (100%) loss ") and "done in" in lines[-1]
    assert "eta" in lines[0] and "\x1b" not in run.stderr
    quiet = subprocess.run(
        [*cmd, "-o", str(tmp_path / "b"), "--steps", "2", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert quiet.returncode == 0 and "distilling" not in quiet.stderr, quiet.stderr
