"""``boomerang eval`` from the command line: table, JSON, manifest, lm-eval on a local task, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.manifest import FamilyManifest

from .common import load, tiny_model_dir
from .eval_helpers import build_family, ppl_for, write_corpus

LAYERS = 8
SEQ = 32


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")
    yield
    torch.set_num_threads(n)


@pytest.fixture
def family(tmp_path: Path) -> tuple[Path, Path]:
    corpus = write_corpus(tmp_path / "data")
    return build_family(tmp_path, "llama", "last-first", layers=LAYERS), corpus


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def data_args(corpus: Path) -> list[str]:
    return [
        "--data",
        str(corpus),
        "--split",
        "train",
        "--seq-len",
        str(SEQ),
        "--max-tokens",
        str(4 * SEQ),
        "--batch-size",
        "3",
    ]


def test_eval_family_json_and_table(family, tmp_path: Path) -> None:
    mpath, corpus = family
    res = run("eval", mpath.parent, *data_args(corpus), "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "family" and out["written"] == str(mpath)
    assert out["trunk"]["used"] is True and out["trunk"]["check"]["relative_difference"] <= 1e-5
    names = [r["name"] for r in out["results"]]
    assert names == ["student", "member-06L", "member-07L", "teacher"]
    assert all(r["perplexity"]["tokens"] > 0 for r in out["results"])
    m = FamilyManifest.read(mpath)
    assert ppl_for(m.member("member-06L").metrics, f"{corpus}:train")["ppl"] == out["results"][1]["perplexity"]["ppl"]

    plot = tmp_path / "fam.png"
    res = run(
        "eval",
        mpath,
        *data_args(corpus),
        "--members",
        "student,member-07L,teacher",
        "--baseline",
        "prune",
        "--calibration-tokens",
        str(2 * SEQ),
        "--plot",
        plot,
    )
    assert res.exit_code == 0, res.output
    for text in ("member-07L", "shortgpt-05L", "plan-prune-07L", "baseline", "shared trunk", "Δ teacher"):
        assert text in res.stdout
    assert "member-06L" not in res.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {b.name for b in FamilyManifest.read(mpath).baselines} == {
        "shortgpt-05L",
        "shortgpt-07L",
        "plan-prune-05L",
        "plan-prune-07L",
    }


def test_short_form_uses_the_last_family(family, tmp_path: Path) -> None:
    from boomerang_cli.state import record

    mpath, corpus = family
    res = run("eval", *data_args(corpus))
    assert res.exit_code == 2 and "no TARGET given" in res.output
    record(family=mpath)
    res = run("eval", *data_args(corpus), "--members", "student", "--json")
    assert res.exit_code == 0, res.output
    assert [r["name"] for r in json.loads(res.stdout)["results"]] == ["student"]


def test_default_data_is_the_held_out_stdlib_split(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path, "llama", layers=2)
    out = tmp_path / "r.json"
    res = run("eval", model, "--max-tokens", "64", "--seq-len", "32", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["data"]["key"] == "stdlib:validation" and got["data"]["tokens"] > 0
    assert got["written"] == str(out)
    entry = json.loads(out.read_text())["models"][0]
    assert ppl_for(entry["metrics"], "stdlib:validation")["seq_len"] == 32 and got["data"]["bos"] is False


def test_seq_len_is_bounded_by_the_model(tmp_path: Path) -> None:
    model = tiny_model_dir(tmp_path, "gpt2", layers=2)  # n_positions 128
    corpus = write_corpus(tmp_path / "data")
    res = run(
        "eval",
        model,
        "--data",
        corpus,
        "--split",
        "train",
        "--seq-len",
        "4096",
        "--max-tokens",
        "128",
        "-o",
        tmp_path / "r.json",
        "--json",
    )
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["data"]["seq_len"] == 128 and any("128 positions" in n for n in got["notes"])


# -- lm-eval on a local task --------------------------------------------------------------

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
QUESTIONS = [
    "what jumps over the dog",
    "what does add return",
    "what does python import",
    "what is lazy",
    "what builds a family",
    "what is brown",
    "which class passes",
    "what does boomerang build",
    "what is quick",
    "what is the dog",
    "what is def",
    "what returns",
]
CHOICES = [["fox", "dog", "class"], ["a + b", "sys", "pass"], ["os", "fox", "teacher"]]


def write_task(directory: Path) -> list[dict]:
    directory.mkdir(parents=True, exist_ok=True)
    docs = [{"question": q, "choices": CHOICES[i % 3], "answer": (i * 7) % 3} for i, q in enumerate(QUESTIONS)]
    (directory / "tiny_mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (directory / "tiny_mc.yaml").write_text(TASK_YAML.format(data=directory / "tiny_mc.jsonl"))
    return docs


def oracle_accuracy(model_dir: Path, docs: list[dict]) -> float:
    """Multiple-choice accuracy by hand: the choice of highest summed log-probability after the prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = load(model_dir)
    right = 0
    for d in docs:
        ctx = f"Question: {d['question']}\nAnswer:"
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in d["choices"]:
            ids = tok(ctx + " " + choice, add_special_tokens=False)["input_ids"]
            cont = ids[len(ctx_ids) :]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].float(), -1)
            pos = range(len(ids) - 1 - len(cont), len(ids) - 1)
            scores.append(sum(float(logp[p, t]) for p, t in zip(pos, cont)))
        right += int(max(range(len(scores)), key=lambda i: (scores[i], -i)) == d["answer"])
    return right / len(docs)


def test_local_lm_eval_task_scores_land_in_manifest(family, tmp_path: Path) -> None:
    mpath, corpus = family
    docs = write_task(tmp_path / "tasks")
    res = run(
        "eval",
        mpath,
        "--members",
        "student,member-06L",
        "--tasks",
        "tiny_mc",
        "--task-dir",
        tmp_path / "tasks",
        "--no-perplexity",
        "--batch-size",
        "4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["tasks"] == ["tiny_mc"]
    m = FamilyManifest.read(mpath)
    for name, entry_dir in (("student", Path(m.student.path)), ("member-06L", mpath.parent / "member-06L")):
        entry = m.student if name == "student" else m.member(name)
        scores = entry.metrics["tasks"]["tiny_mc"]
        assert scores["samples"] == len(docs)
        assert scores["acc"] == pytest.approx(oracle_accuracy(entry_dir, docs))
        assert "perplexity" not in entry.metrics
        row = next(r for r in out["results"] if r["name"] == name)
        assert row["tasks"]["tiny_mc"]["acc"] == scores["acc"]
    assert m.teacher.metrics == {}


# -- bad input -----------------------------------------------------------------------------


def test_bad_inputs_give_one_line_errors_and_write_nothing(family, tmp_path: Path) -> None:
    mpath, corpus = family
    before = mpath.read_bytes()
    cases = [
        (["--members", "member-99L"], "no member 'member-99L'"),
        (["--members", ","], "--members is empty"),
        (["--data", tmp_path / "missing.jsonl"], "no such file"),
        (["--data", tmp_path / "state"], "no such file"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--split", "test"], "unknown --split"),
        (["--baseline", "laco"], "unknown --baseline 'laco'"),
        (["--plot", tmp_path / "p.jpg"], "write a .png file"),
        (["-o", tmp_path / "r.json"], "go into its manifest"),
        (["--task-dir", tmp_path], "name the tasks to run with --tasks"),
        (["--no-perplexity"], "nothing to evaluate"),
        (["--dtype", "int3"], "unknown dtype"),
    ]
    for extra, message in cases:
        args = [a for a in data_args(corpus)]
        if "--data" in extra:
            i = args.index("--data")
            del args[i : i + 2]
        res = run("eval", mpath, *args, *extra)
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.output, (extra, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run("eval", mpath, "--data", empty, "--seq-len", str(SEQ))
    assert res.exit_code == 2 and "no text" in res.output
    assert mpath.read_bytes() == before


def test_manifest_problems(family, tmp_path: Path) -> None:
    mpath, corpus = family
    data = json.loads(mpath.read_text())
    old = tmp_path / "old" / "family.json"
    old.parent.mkdir()
    old.write_text(json.dumps(dict(data, schema_version=0)))
    res = run("eval", old, *data_args(corpus))
    assert res.exit_code == 2 and "schema version 0" in res.output, res.output
    partial = tmp_path / "partial" / "family.json"
    partial.parent.mkdir()
    partial.write_text(json.dumps(dict(data, complete=False)))
    res = run("eval", partial, *data_args(corpus))
    assert res.exit_code == 2 and "incomplete" in res.output, res.output
    res = run("eval", mpath, tmp_path / "whatever", *data_args(corpus))
    assert res.exit_code == 2 and "one family at a time" in res.output
    res = run("eval", tmp_path / "nope-model", "--members", "student")
    assert res.exit_code == 2 and "--members selects members of a family" in res.output
    res = run("eval", tmp_path / "nope-model", *data_args(corpus), "-o", tmp_path / "r.json")
    assert res.exit_code == 2 and "no such file" in res.output


def test_bos_option(tmp_path: Path) -> None:
    from .common import save_tokenizer

    model = tiny_model_dir(tmp_path, "llama", layers=2)
    corpus = write_corpus(tmp_path / "data")
    args = [
        "--data",
        str(corpus),
        "--split",
        "train",
        "--max-tokens",
        "64",
        "--seq-len",
        "32",
        "-o",
        tmp_path / "r.json",
    ]
    res = run("eval", model, *args, "--bos", "sometimes")
    assert res.exit_code == 2 and "--bos" in res.output and "auto" in res.output
    save_tokenizer(model, add_bos=True)
    res = run("eval", model, *args)
    assert res.exit_code == 0, res.output
    assert "each starting with BOS" in res.stdout
    res = run("eval", model, *args, "--bos", "never", "--json")
    assert json.loads(res.stdout)["data"]["bos"] is False
