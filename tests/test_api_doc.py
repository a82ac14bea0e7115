"""docs/api.md's example, run as written on a tiny random model (only the knobs at its top replaced)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from .common import tiny_model_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def example() -> str:
    text = DOC.read_text()
    block = re.search(r"<!-- api-example -->\n```python\n(.*?)\n```", text, re.S)
    assert block is not None, "docs/api.md lost its <!-- api-example --> block"
    return block.group(1)


def _replace(code: str, name: str, value: str) -> str:
    new, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, count=1, flags=re.M)
    assert n == 1, f"docs/api.md's example no longer sets {name} at the top"
    return new


def test_the_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    torch.set_num_threads(1)
    teacher = tiny_model_dir(tmp_path / "teacher", "llama", layers=6)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"The quick brown fox {i % 7} jumps. " * (1 + i % 3)}) + "\n" for i in range(300))
    )
    code = example()
    code = _replace(code, "teacher", repr(str(teacher)))
    code = _replace(code, "data", repr([str(corpus)]))
    code = _replace(code, "steps, seq_len, members, eval_tokens", "4, 32, 1, 256")
    scope: dict = {"__name__": "api_example"}
    exec(compile(code, str(DOC), "exec"), scope)
    out = capsys.readouterr().out
    assert "student: 4 layers, final loss" in out and "wrote member-" in out
    assert re.search(r"^teacher\s+6 layers .* perplexity \d", out, re.M), out
    manifest = json.loads((tmp_path / "boomerang-work" / "family" / "family.json").read_text())
    assert manifest["complete"] and len(manifest["members"]) == 1
    assert "perplexity" in manifest["teacher"]["metrics"]
    errors = re.findall(r"```python\n(try:.*?)\n```", DOC.read_text(), re.S)
    assert len(errors) == 1
    exec(compile(errors[0], str(DOC), "exec"), scope)  # the error example, after the first
    line = capsys.readouterr().out.strip()
    assert line and "\n" not in line and "1T" in line


@pytest.mark.parametrize("name", ["distill", "make_family", "make_student", "run_eval", "export_family", "run_export"])
def test_the_api_names_each_entry_point(name):
    from boomerang_cli import api

    assert callable(getattr(api, name)) and name in api.__all__
