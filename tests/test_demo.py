"""`boomerang demo` end to end on the real embedded teacher, with a very small budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import boomerang_cli.demo
from boomerang_cli.cli import app
from boomerang_cli.demo import Check, DemoConfig, paper_checks

pytestmark = []


def _rows(ppls: dict[str, tuple[str, int, float]]) -> list[dict]:
    return [
        {
            "name": n,
            "kind": k,
            "num_layers": l,
            "num_params": l,
            "ppl": p,
            "method": n.split("-")[0] if k == "baseline" else None,
        }
        for n, (k, l, p) in ppls.items()
    ]


def test_paper_checks_pass_and_fail():
    good = _rows(
        {
            "student": ("student", 4, 30.0),
            "member-5L": ("member", 5, 20.0),
            "teacher": ("teacher", 6, 10.0),
            "shortgpt-4L": ("baseline", 4, 99.0),
            "shortgpt-5L": ("baseline", 5, 50.0),
        }
    )
    for r in good:
        if r["name"].startswith("shortgpt"):
            r["method"] = "shortgpt"
    checks = {c.name: c for c in paper_checks(good)}
    assert checks["perplexity never increases as members grow"].passed
    assert checks["every member beats shortgpt at equal parameter count"].passed
    assert checks["every member's saved size lies between student and teacher"].passed
    assert not checks["every member beats plan-prune at equal parameter count"].passed  # nothing compared

    bad = [dict(r) for r in good]
    bad[1]["ppl"] = 60.0  # member worse than student and than shortgpt-5L
    checks = {c.name: c for c in paper_checks(bad)}
    assert not checks["perplexity never increases as members grow"].passed
    assert "member-5L" in checks["every member beats shortgpt at equal parameter count"].detail
    assert isinstance(next(iter(checks.values())), Check)

    # A member as deep as the teacher but larger (untied head) comes before the teacher.
    deep = [dict(r) for r in good] + [
        {"name": "member-6L", "kind": "member", "num_layers": 6, "num_params": 9, "ppl": 11.0, "method": None}
    ]
    checks = {c.name: c for c in paper_checks(deep)}
    assert checks["perplexity never increases as members grow"].passed, checks


@pytest.mark.parametrize(
    ("flags", "data", "weights", "shuffle"),
    [
        ([], ("stdlib", "stdlib-docs"), (3.0, 1.0), False),  # the defaults: code and its docstrings, 3:1, in order
        (["--data", "stdlib", "--shuffle"], ("stdlib",), None, True),  # other data: no default shares
        (
            ["--data", "stdlib", "--data", "stdlib-docs", "--data-weights", "1,1", "--shuffle"],
            ("stdlib", "stdlib-docs"),
            (1.0, 1.0),
            True,
        ),
    ],
)
def test_demo_flags_reach_the_config(monkeypatch, tmp_path: Path, flags, data, weights, shuffle):
    """The CLI passes the training-text defaults of DemoConfig (and only for its default data)."""
    seen: list[DemoConfig] = []

    def fake(cfg: DemoConfig, progress=None):
        seen.append(cfg)
        raise boomerang_cli.demo.BoomerangError("stop here")

    monkeypatch.setattr(boomerang_cli.demo, "run_demo", fake)
    res = CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "d"), "-q", *flags])
    assert res.exit_code == 2 and "stop here" in res.output, res.output
    (cfg,) = seen
    assert cfg.data == data and cfg.data_weights == weights and cfg.shuffle is shuffle
    assert DemoConfig(output=tmp_path).data_weights == (3.0, 1.0)
    other = DemoConfig(output=tmp_path, data=("stdlib",))  # the API as the CLI: other data, no default shares
    assert other.data_weights is None
    other.check()


@pytest.mark.integration
def test_demo_tiny_budget_writes_a_loadable_family(tmp_path: Path):
    out = tmp_path / "demo"
    env = dict(os.environ, BOOMERANG_STATE=str(tmp_path / "state.json"))
    cmd = [
        sys.executable,
        "-m",
        "boomerang_cli",
        "demo",
        "-o",
        str(out),
        "--steps",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--eval-tokens",
        "64",
        "--calib-samples",
        "1",
        "--calib-seq-len",
        "16",
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    manifest = json.loads((out / "family" / "family.json").read_text())
    assert manifest["complete"] and manifest["order"]["method"] == "auto"
    # The default training text: stdlib code and its docstrings, 3:1, in file order; the order calibrated alike.
    trained = json.loads((out / "student" / "boomerang.json").read_text())["training"]["config"]
    assert trained["data"] == ["stdlib", "stdlib-docs"] and trained["data_weights"] == [3, 1]
    assert not trained["shuffle"] and manifest["order"]["calibration"]["weights"] == [3, 1]
    # SmolLM2: 14 patchable blocks, one member per depth 17..29 and 30 (the last singleton from the student),
    # and perhaps one as deep as the student (a singleton patched)
    depths = [m["num_layers"] for m in manifest["members"]]
    assert len(depths) == len(set(depths)) and set(range(17, 30)) <= set(depths) <= set(range(16, 31))
    # Frozen embeddings (the default for a tied teacher): every member tied, between the ends in size.
    assert all(m["tied"] for m in manifest["members"])
    assert all(
        manifest["student"]["num_params"] <= m["num_params"] <= manifest["teacher"]["num_params"]
        for m in manifest["members"]
    )
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["every member's saved size lies between student and teacher"]["passed"]
    assert "every member beats shortgpt at equal parameter count" in checks
    assert (out / "family.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["stages"] == {"distill": "ran", "family": "ran", "eval": "ran"}
    names = {r["name"] for r in result["rows"]}
    assert {"teacher", "student"} <= names and any(n.startswith("shortgpt-") for n in names)
    assert all(m["metrics"]["perplexity"] for m in manifest["members"])

    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    for m in manifest["members"]:
        model = AutoModelForCausalLM.from_pretrained(out / "family" / m["path"], dtype=torch.float32)
        assert model.config.num_hidden_layers == m["num_layers"]
        assert model.num_parameters() == m["num_params"]
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits).all()
        del model

    # Rerunning resumes: every stage that finished is skipped, nothing is retrained.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(proc.stdout)
    assert again["stages"]["distill"] == "skipped (done)"
    assert again["stages"]["family"] == "skipped (done)"
