"""``boomerang init-student``: the logits oracle on every architecture, outputs, options, bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from boomerang_cli import __version__
from boomerang_cli.arch import ModelInfo
from boomerang_cli.compose import fingerprint
from boomerang_cli.errors import BoomerangError
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.student import BOOMERANG_JSON, REFERENCE_JSON, StudentRecord, init_student, student_plan
from boomerang_cli.tensors import INDEX_FILE, ModelWeights

from .common import ARCHS, TIED_ARCHS, TINY_LAYERS, load, make_model, sample_ids, save_model

DEFAULT_KEPT = [0, 2, 4, 5]  # Plan.from_paper_flags(6, 1, 2, 2)
LAYERS_PATH = {"gpt_neox": "gpt_neox.layers", "gpt2": "transformer.h"}  # else model.layers


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("teachers")
    return {mt: save_model(make_model(mt), root / mt) for mt in ARCHS}


def invoke(*args: str, ok: bool = True):
    """Run the CLI in this process; unexpected exceptions fail the test loudly."""
    from typer.testing import CliRunner

    from boomerang_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def forward(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def teacher_without_layers(path: Path, model_type: str, kept: list[int], **load_kw):
    """The oracle: the teacher with the other layers deleted in memory (no boomerang code)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **load_kw).eval()
    parent_path, attr = LAYERS_PATH.get(model_type, "model.layers").rsplit(".", 1)
    parent = model.get_submodule(parent_path)
    layers = getattr(parent, attr)
    assert len(layers) > max(kept)
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in kept]))
    cfg = model.config.get_text_config()
    cfg.num_hidden_layers = len(kept)
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    return model


def assert_oracle(teacher: Path, student: Path, model_type: str, kept: list[int], **load_kw) -> None:
    ids = sample_ids()
    from transformers import AutoModelForCausalLM

    s = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32, **load_kw).eval()
    assert s.config.get_text_config().num_hidden_layers == len(kept)
    t = teacher_without_layers(teacher, model_type, kept, **load_kw)
    torch.testing.assert_close(forward(s, ids), forward(t, ids), rtol=1e-5, atol=1e-5)


# -- the oracle -------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_student_equals_teacher_with_layers_deleted(teachers, tmp_path, model_type):
    out = tmp_path / "student"
    r = invoke("init-student", teachers[model_type], "-o", out, "--json")
    summary = json.loads(r.stdout)
    assert summary["kept"] == DEFAULT_KEPT and summary["num_student_layers"] == 4
    assert_oracle(teachers[model_type], out, model_type, DEFAULT_KEPT)
    # Parameter count in the summary is what was written.
    written = ModelWeights(out)
    assert summary["num_params"] == sum(written.info(k).numel for k in written.keys())
    assert summary["teacher_params"] > summary["num_params"]


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text", "gpt_neox"])
def test_explicit_keep_oracle(teachers, tmp_path, model_type):
    out = tmp_path / "student"
    invoke("init-student", teachers[model_type], "-o", out, "--keep", "0,1,3")
    assert_oracle(teachers[model_type], out, model_type, [0, 1, 3])
    assert json.loads((out / REFERENCE_JSON).read_text())["pruned_teacher_layers"] == [2, 4, 5]


def test_library_call_matches_cli(teachers, tmp_path):
    ref = resolve(str(teachers["qwen2"]))
    plan = Plan.from_paper_flags(TINY_LAYERS, 2, 2, 1)  # 0,1,3,5
    summary = init_student(ref, plan, tmp_path / "lib")
    assert summary.plan.kept == (0, 1, 3, 5) and not summary.dry_run
    assert_oracle(teachers["qwen2"], tmp_path / "lib", "qwen2", [0, 1, 3, 5])
    invoke("init-student", teachers["qwen2"], "-o", tmp_path / "cli", "--keep-first", "2", "--keep-last", "1")
    assert (
        load_file(str(tmp_path / "lib" / "model.safetensors")).keys()
        == load_file(str(tmp_path / "cli" / "model.safetensors")).keys()
    )
    for k, v in load_file(str(tmp_path / "lib" / "model.safetensors")).items():
        assert torch.equal(v, load_file(str(tmp_path / "cli" / "model.safetensors"))[k])


def test_renumbered_layers_hold_the_kept_teacher_layers(teachers, tmp_path):
    invoke("init-student", teachers["mistral"], "-o", tmp_path / "s", "--keep", "0,3,4")
    t, s = ModelWeights(teachers["mistral"]), ModelWeights(tmp_path / "s")
    for i, k in enumerate([0, 3, 4]):
        name = "self_attn.q_proj.weight"
        assert torch.equal(s.read(f"model.layers.{i}.{name}"), t.read(f"model.layers.{k}.{name}"))
    assert not any(n.startswith("model.layers.3.") for n in s.keys())


# -- tied embeddings and per-layer config -----------------------------------------------


@pytest.mark.parametrize("model_type", sorted(TIED_ARCHS) + ["llama"])
def test_tied_embeddings_stay_tied(teachers, tmp_path, model_type):
    out = tmp_path / "s"
    invoke("init-student", teachers[model_type], "-o", out)
    cfg = json.loads((out / "config.json").read_text())
    tied = model_type in TIED_ARCHS
    assert cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings")) is tied
    assert ("lm_head.weight" in ModelWeights(out)) is (not tied)
    model = load(out)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied


def test_tied_teacher_storing_a_head_copy_stays_tied(teachers, tmp_path):
    # Some tied checkpoints also store the head; it is the embedding, and the student stays tied.
    d = tmp_path / "gpt2-with-head"
    shutil.copytree(teachers["gpt2"], d)
    sd = load_file(str(d / "model.safetensors"))
    sd["lm_head.weight"] = sd["transformer.wte.weight"].clone()
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    info = ModelInfo.load(d)
    assert info.arch.tied and info.arch.head_stored
    invoke("init-student", d, "-o", tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in ModelWeights(tmp_path / "s")
    assert_oracle(teachers["gpt2"], tmp_path / "s", "gpt2", DEFAULT_KEPT)


MIXED = ["sliding_attention", "full_attention"] * 3


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("0,2,4,5", ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]),
        ("0,1,3,5", ["sliding_attention", "full_attention", "full_attention", "full_attention"]),
    ],
)
def test_mixed_layer_types_sliced(tmp_path, keep, expected):
    teacher = save_model(
        make_model("qwen3", use_sliding_window=True, sliding_window=4, layer_types=MIXED), tmp_path / "qwen3-mixed"
    )
    assert json.loads((teacher / "config.json").read_text())["layer_types"] == MIXED
    out = tmp_path / "s"
    invoke("init-student", teacher, "-o", out, "--keep", keep)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_types"] == expected and cfg["num_hidden_layers"] == 4
    kept = [int(k) for k in keep.split(",")]
    assert_oracle(teacher, out, "qwen3", kept)
    # The test can fail: the same weights with the teacher's unsliced prefix give other logits.
    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    cfg["layer_types"] = MIXED[:4]
    (wrong / "config.json").write_text(json.dumps(cfg))
    ids = sample_ids()
    assert not torch.allclose(forward(load(wrong), ids), forward(load(out), ids), atol=1e-4)


def test_gemma3_pattern_fields_follow_the_layers(teachers, tmp_path):
    # tiny gemma3: sliding_window_pattern=3 -> layers 2 and 5 global; keeping 0,2,4,5 gives period 2.
    invoke("init-student", teachers["gemma3_text"], "-o", tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    assert cfg["sliding_window_pattern"] == 2 and cfg["_sliding_window_pattern"] == 2


def test_qwen2_max_window_layers_follows_the_layers(teachers, tmp_path):
    # tiny qwen2: max_window_layers=3 (layers 0-2 full); kept 0,2,4,5 -> first 2 student layers full.
    invoke("init-student", teachers["qwen2"], "-o", tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["max_window_layers"] == 2
    assert cfg["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2


def test_hub_style_gpt2_names(teachers, tmp_path):
    # Checkpoint names without the base-model prefix (the hub's gpt2) are kept as they are.
    d = tmp_path / "gpt2-hub"
    shutil.copytree(teachers["gpt2"], d)
    sd = load_file(str(d / "model.safetensors"))
    save_file(
        {k.removeprefix("transformer."): v for k, v in sd.items()},
        str(d / "model.safetensors"),
        metadata={"format": "pt"},
    )
    invoke("init-student", d, "-o", tmp_path / "s")
    names = ModelWeights(tmp_path / "s").keys()
    assert "h.3.mlp.c_fc.weight" in names and "h.4.mlp.c_fc.weight" not in names
    assert_oracle(teachers["gpt2"], tmp_path / "s", "gpt2", DEFAULT_KEPT)


def test_trusted_remote_code(tmp_path):
    from .test_refs import make_remote_code_model

    marker = tmp_path / "code-ran"
    d = make_remote_code_model(tmp_path, marker)
    out = tmp_path / "s"
    invoke("init-student", d, "-o", out, "--trust-remote-code")
    assert marker.exists()  # the flag is what let the code run
    assert (out / "modeling_tiny.py").exists() and (out / "configuration_tiny.py").exists()
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
    assert_oracle(d, out, "llama", DEFAULT_KEPT, trust_remote_code=True)


# -- what is written --------------------------------------------------------------------


def test_output_directory_contents(teachers, tmp_path):
    teacher = teachers["llama"]
    out = tmp_path / "student"
    invoke("init-student", teacher, "-o", out)
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        BOOMERANG_JSON,
        REFERENCE_JSON,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    rec = json.loads((out / BOOMERANG_JSON).read_text())
    assert rec["format"] == "boomerang-student" and rec["tool_version"] == __version__
    assert rec["teacher"]["ref"] == str(teacher.resolve())
    assert rec["teacher"]["fingerprint"] == fingerprint(ModelInfo.load(teacher))
    assert rec["plan"] == {"num_teacher_layers": 6, "kept": DEFAULT_KEPT, "blocks": [[0, 2], [2, 4], [4, 5], [5, 6]]}
    parsed = StudentRecord.read(out)
    assert parsed.plan == Plan.from_paper_flags(6) and parsed.training is None

    ref = json.loads((out / REFERENCE_JSON).read_text())
    assert ref == {"copied_teacher_layers": DEFAULT_KEPT, "pruned_teacher_layers": [1, 3], "num_teacher_layers": 6}

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "boomerang-distillation" in card
    assert "base_model" not in card  # a local path is not a Hub id
    assert "kept: 0,2,4,5" in card and "boomerang init-student" in card
    from transformers import AutoTokenizer

    assert (
        AutoTokenizer.from_pretrained(str(out))("def add").input_ids
        == AutoTokenizer.from_pretrained(str(teacher))("def add").input_ids
    )
    state = json.loads(Path(os.environ["BOOMERANG_STATE"]).read_text())
    assert state["student"] == str(out.resolve()) and state["teacher"] == str(teacher.resolve())


def test_student_plan_readers(teachers, tmp_path):
    out = tmp_path / "s"
    invoke("init-student", teachers["llama"], "-o", out, "--keep", "0,3")
    plan, rec = student_plan(out, 6)
    assert plan.kept == (0, 3) and rec is not None
    (out / BOOMERANG_JSON).unlink()
    plan, rec = student_plan(out, 6)  # the reference code's student_config.json
    assert plan.kept == (0, 3) and rec is None
    (out / REFERENCE_JSON).unlink()
    with pytest.raises(BoomerangError, match="--keep"):
        student_plan(out, 6)
    (out / BOOMERANG_JSON).write_text("{not json")
    with pytest.raises(BoomerangError, match="unreadable boomerang.json"):
        StudentRecord.read(out)


def test_dry_run_writes_nothing(teachers, tmp_path):
    out = tmp_path / "never"
    r = invoke("init-student", teachers["llama"], "-o", out, "--dry-run")
    assert "dry run" in r.stdout and "4 of 6 layers kept" in r.stdout and "patchable" in r.stdout
    r = invoke("init-student", teachers["llama"], "--dry-run", "--json", "--keep", "0,3")
    data = json.loads(r.stdout)
    assert data["dry_run"] is True and data["kept"] == [0, 3] and data["blocks"] == [[0, 3], [3, 6]]
    assert data["num_patchable_blocks"] == 2 and data["output"] is None
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert not Path(os.environ["BOOMERANG_STATE"]).exists()


def test_dry_run_of_a_gguf_teacher_converts_nothing(tmp_path):
    """A GGUF not converted yet: the dry run reads its header, says the real run converts, writes nothing."""
    from .test_refs import write_tiny_gguf

    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    write_tiny_gguf(gguf, layers=6)
    cache = Path(os.environ["BOOMERANG_CACHE"])
    r = invoke("init-student", gguf, "--dry-run", "--json")
    dry = json.loads(r.stdout)
    assert dry["dry_run"] is True and dry["kept"] == DEFAULT_KEPT and dry["num_teacher_layers"] == 6
    assert "converts it once" in dry["notes"][0] and "tiny.gguf" in dry["notes"][0]
    r = invoke("init-student", gguf, "-o", tmp_path / "never", "--dry-run")
    assert "4 of 6 layers kept" in r.stdout and "without --dry-run" in r.stderr
    # family --dry-run cannot list members without the tensors: it says so and asks for the real run.
    r = invoke("family", gguf, tmp_path / "student", "--dry-run", ok=False)
    assert r.exit_code == 2 and "converts nothing" in r.output and "without --dry-run" in r.output
    assert not cache.exists() and not (tmp_path / "never").exists()
    assert not Path(os.environ["BOOMERANG_STATE"]).exists()
    # The real run converts, and its sizes are the ones the dry run announced.
    real = json.loads(invoke("init-student", gguf, "-o", tmp_path / "s", "--json").stdout)
    assert (real["num_params"], real["teacher_params"]) == (dry["num_params"], dry["teacher_params"])
    assert real["notes"] == [] and cache.exists()
    # Once converted, a dry run uses the cache like any local model.
    assert json.loads(invoke("init-student", gguf, "--dry-run", "--json").stdout)["notes"] == []


def test_json_output(teachers, tmp_path):
    r = invoke("init-student", teachers["gpt_neox"], "-o", tmp_path / "s", "--json")
    data = json.loads(r.stdout)
    assert set(data) >= {
        "output",
        "teacher",
        "kept",
        "pruned",
        "num_teacher_layers",
        "num_student_layers",
        "blocks",
        "num_patchable_blocks",
        "num_params",
        "teacher_params",
        "dry_run",
    }
    assert data["pruned"] == [1, 3] and data["num_patchable_blocks"] == 2
    assert data["output"] == str(tmp_path / "s")


def test_dtype_bf16(teachers, tmp_path):
    out = tmp_path / "s"
    invoke("init-student", teachers["phi3"], "-o", out, "--dtype", "bf16")
    w, t = ModelWeights(out), ModelWeights(teachers["phi3"])
    assert {w.info(k).dtype for k in w.keys()} == {"BF16"}
    assert torch.equal(
        w.read("model.layers.1.mlp.down_proj.weight"), t.read("model.layers.2.mlp.down_proj.weight").to(torch.bfloat16)
    )
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(forward(model, sample_ids()).float()).all()


def test_max_shard_size(teachers, tmp_path):
    out = tmp_path / "s"
    invoke("init-student", teachers["llama"], "-o", out, "--max-shard-size", "30kB")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (out / INDEX_FILE).exists() and not (out / "model.safetensors").exists()
    assert_oracle(teachers["llama"], out, "llama", DEFAULT_KEPT)


def test_overwrite_replaces(teachers, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "old.txt").write_text("old")
    invoke("init-student", teachers["llama"], "-o", out, "--overwrite", "--keep", "0,3")
    assert not (out / "old.txt").exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "state.json") == ["s"]


def test_empty_existing_output_is_used(teachers, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    invoke("init-student", teachers["llama"], "-o", out)
    assert (out / "model.safetensors").exists()


# -- bad input --------------------------------------------------------------------------


BAD_PLANS = [
    (["--keep", "1,2,4"], "must start at 0"),
    (["--keep", "0,4,2"], "must be sorted"),
    (["--keep", "0,2,2,4"], "kept twice"),
    (["--keep", "0,2,6"], "out of range"),
    (["--keep", "0-5"], "keeps every teacher layer"),
    (["--keep", "0,two"], "not a layer index"),
    (["--keep-first", "0"], "--keep-first must be >= 1"),
    (["--every", "1"], "--every >= 2"),
    (["--keep-last", "-1"], "--keep-last >= 0"),
    (["--keep-first", "5"], "prunes nothing"),
    (["--dtype", "int3"], "unknown dtype"),
    (["--max-shard-size", "lots"], "cannot read size"),
]


def assert_refused(result, words: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and words in lines[0], lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "words"), BAD_PLANS, ids=[w for _, w in BAD_PLANS])
def test_bad_plan_and_options(teachers, tmp_path, args, words):
    out = tmp_path / "s"
    assert_refused(invoke("init-student", teachers["llama"], "-o", out, *args, ok=False), words)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_bad_models(teachers, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    out = tmp_path / "s"
    assert_refused(invoke("init-student", tmp_path / "nope", "-o", out, ok=False), "no such file or directory")
    assert_refused(invoke("init-student", "not a model!", "-o", out, ok=False), "not a local directory")
    bert = tmp_path / "bert"
    BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, vocab_size=512)
    ).save_pretrained(str(bert))
    assert_refused(invoke("init-student", bert, "-o", out, ok=False), "not a causal language model")
    assert not out.exists()


def test_existing_output_untouched(teachers, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_refused(invoke("init-student", teachers["llama"], "-o", out, ok=False), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_no_output_and_output_over_teacher(teachers, tmp_path):
    assert_refused(invoke("init-student", teachers["llama"], ok=False), "pass -o DIR")
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers["llama"], teacher)
    before = sorted(p.name for p in teacher.iterdir())
    for target in (teacher, tmp_path):
        assert_refused(invoke("init-student", teacher, "-o", target, "--overwrite", ok=False), "the teacher")
    assert sorted(p.name for p in teacher.iterdir()) == before


# -- progress ---------------------------------------------------------------------------


def test_progress_bar_on_stderr_keeps_stdout_clean(teachers, tmp_path, monkeypatch):
    monkeypatch.setenv("BOOMERANG_PROGRESS", "1")
    r = invoke("init-student", teachers["llama"], "-o", tmp_path / "s", "--json")
    assert json.loads(r.stdout)["num_student_layers"] == 4
    assert "writing student" in r.stderr and "100%" in r.stderr


def test_progress_reporter_one_line_per_task_on_80_columns(monkeypatch):
    from rich.console import Console

    from boomerang_cli.cli import common

    buf = io.StringIO()
    monkeypatch.setattr(common, "err_console", Console(file=buf, force_terminal=True, width=80, color_system=None))
    reporter = common.RichProgressReporter(True)
    train = reporter.task("distilling student [deep] of a long teacher name", 1000, unit="step")
    train.advance(10)
    train.update(loss=1.2345678, lr=3e-4, blocks=[1, 2])  # brackets: no rich markup errors
    write = reporter.task("writing student", 279_700, unit="B")
    write.advance(279_700)
    tokens = reporter.task("tokens", None, unit="tok")
    tokens.advance(1234)
    reporter.finish(train)
    reporter.finish(write)
    reporter.finish(tokens)
    reporter.stop()
    assert "writing student" in buf.getvalue()  # it was drawn live
    # The final frame, rendered as the live display renders it, at 80 columns.
    frame = io.StringIO()
    Console(file=frame, width=80, color_system=None).print(reporter.bar.make_tasks_table(reporter.bar.tasks))
    lines = frame.getvalue().rstrip("\n").split("\n")
    assert len(lines) == 3, lines
    for line in lines:
        assert len(line) <= 80 and "100%" in line and "━" in line, line
    assert "1,000 step/1,000 step" in lines[0] and "279.7 kB/279.7 kB" in lines[1]
    assert "1,234 tok/1,234 tok" in lines[2]


def test_output_under_a_file_is_a_one_line_error(teachers, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = invoke("init-student", teachers["llama"], "-o", blocker / "student", ok=False)
    assert_refused(r, "cannot create")
    assert "Traceback" not in r.output and blocker.read_text() == "not a directory"


def test_os_errors_map_to_one_line_messages():
    import errno

    from boomerang_cli.cli.common import os_error_message

    msg, code = os_error_message(PermissionError(errno.EACCES, "Permission denied", "/data/out"))
    assert code == 2 and msg == "cannot use /data/out: permission denied; check its permissions or choose another path"
    msg, code = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/out/x"))
    assert code == 2 and "free space" in msg and "\n" not in msg  # the user can fix it: exit 2
