"""``boomerang export --format gguf``: files read back by transformers' GGUF loader give the HF
member's logits; quantized types stay close in perplexity; tensors converted once; refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

gguf = pytest.importorskip("gguf")

from boomerang_cli.export import convert, writer  # noqa: E402
from boomerang_cli.cli import app  # noqa: E402
from boomerang_cli.errors import UnsupportedArchitectureError  # noqa: E402
from boomerang_cli.export.convert import TensorCache, tensor_type  # noqa: E402
from boomerang_cli.export.gguf_arch import gguf_arch, llama3_rope_factors  # noqa: E402
from boomerang_cli.export.writer import EXPORT_MANIFEST, export_family  # noqa: E402
from boomerang_cli.family import sha256_file  # noqa: E402
from boomerang_cli.family.open import load_family_models, load_member_from_manifest, member_of  # noqa: E402
from boomerang_cli.manifest import FamilyManifest  # noqa: E402

from .common import logits, sample_ids, tiny_config  # noqa: E402
from .eval_helpers import build_family  # noqa: E402

LAYERS = 8  # kept 0,2,4,6,7: student 5 layers, members of 6 and 7 layers, teacher 8
#: arch id -> (model_type, config overrides). qwen3 uses head_dim 128 as the real models do:
#: transformers' GGUF loader does not read qwen3's key_length and falls back to that default.
FAMILIES = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "qwen2": ("qwen2", {"use_sliding_window": False}),
    "qwen3": ("qwen3", {"head_dim": 128}),
}
F16_ATOL = 5e-3  # logits of these models are O(1); f16 weights give differences ~1e-3
Q8_PPL_DELTA = 0.01  # q8_0: perplexity within 1% of the HF member's
Q4_PPL_DELTA = 0.10  # q4_0: within 10% (measured 1-3% on these random models)
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")
    monkeypatch.setenv("BOOMERANG_CACHE", str(tmp_path / "cache"))


_families: dict[str, Path] = {}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """family.json of each FAMILIES entry, built on first use; treat as read-only."""

    def get(key: str) -> Path:
        if key not in _families:
            model_type, overrides = FAMILIES[key]
            root = tmp_path_factory.mktemp(key)
            _families[key] = build_family(root, model_type, layers=LAYERS, **overrides)
            teacher = load_family_models(FamilyManifest.read(_families[key]), root)["teacher"].path
            (Path(teacher) / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        return _families[key]

    yield get
    _families.clear()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def gguf_model(directory: Path, name: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=name, dtype=torch.float32).eval()


def perplexity(model, ids: torch.Tensor) -> float:
    out = logits(model, ids)
    return math.exp(
        torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1)).item()
    )


def tensor_names(path: Path) -> list[str]:
    return [t.name for t in gguf.GGUFReader(str(path)).tensors]


@pytest.mark.parametrize("key", list(FAMILIES))
def test_f32_and_f16_files_give_the_hf_members_logits(families, tmp_path, key):
    fam = families(key)
    ids = sample_ids(2, 16)
    for type_name, atol in (("f32", 1e-5), ("f16", F16_ATOL)):
        res = export_family(fam, tmp_path / type_name, type_name)
        assert [f.name for f in res.files] == ["student", "member-06L", "member-07L", "teacher"]
        for f in res.files:
            got = logits(gguf_model(tmp_path / type_name, f.path), ids)
            want = logits(load_member_from_manifest(fam, f.name), ids)
            diff = (got - want).abs().max().item()
            assert diff <= atol, f"{key} {type_name} {f.name}: max logit difference {diff}"
            assert f.tensor_types["f32"] > 0  # norms stay f32 whatever the type


@pytest.mark.parametrize("key", ["llama", "qwen3"])
def test_quantized_files_stay_close_in_perplexity(families, tmp_path, key):
    fam = families(key)
    ids = sample_ids(4, 32, seed=3)
    for type_name, delta in (("q8_0", Q8_PPL_DELTA), ("q4_0", Q4_PPL_DELTA)):
        res = export_family(fam, tmp_path / type_name, type_name, members=["member-06L", "teacher"])
        for f in res.files:
            got = perplexity(gguf_model(tmp_path / type_name, f.path), ids)
            want = perplexity(load_member_from_manifest(fam, f.name), ids)
            assert abs(got / want - 1) <= delta, f"{key} {type_name} {f.name}: ppl {got} vs {want}"
            assert type_name in f.tensor_types
        if type_name == "q4_0":  # embeddings and head are kept at q8_0 at 4 bits
            reader = gguf.GGUFReader(str(tmp_path / type_name / "teacher.gguf"))
            types = {t.name: t.tensor_type.name for t in reader.tensors}
            assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "Q4_0"


def test_tied_members_have_no_output_tensor(families, tmp_path):
    fam = families("llama-tied")
    res = export_family(fam, tmp_path / "out", "f16")
    manifest = FamilyManifest.read(fam)
    tied = {f.name: f.tied for f in res.files}
    assert tied["teacher"] and tied["student"]
    for f in res.files:
        if f.kind == "member":
            assert f.tied == manifest.member(f.name).tied
        assert ("output.weight" in tensor_names(tmp_path / "out" / f.path)) == (not f.tied), f.name
    res = export_family(families("llama"), tmp_path / "untied", "f16")
    assert all(not f.tied and "output.weight" in tensor_names(tmp_path / "untied" / f.path) for f in res.files)


def test_each_unique_source_tensor_is_converted_once(families, tmp_path, monkeypatch):
    fam = families("llama")
    manifest = FamilyManifest.read(fam)
    models = load_family_models(manifest, fam.parent)
    comps = [member_of(manifest, n).composition(models) for n in ("student", "member-06L", "member-07L", "teacher")]
    sources = {(str(t.info.file), t.info.begin) for c in comps for t in c.tensors}
    references = sum(len(c.tensors) for c in comps)
    calls = []
    real = TensorCache._convert
    monkeypatch.setattr(TensorCache, "_convert", lambda self, spec: calls.append(spec.key) or real(self, spec))
    res = export_family(fam, tmp_path / "all", "q8_0")
    assert len(calls) == len(set(calls)) == res.unique_tensors == len(sources)
    assert res.tensor_references == references > 1.5 * res.unique_tensors
    separately = 0
    for name in ("student", "member-06L", "member-07L", "teacher"):
        separately += export_family(fam, tmp_path / name, "q8_0", members=[name]).unique_tensors
    assert separately == references  # member by member, every tensor of every member is converted


def test_cli_members_json_manifest_and_modelfiles(families, tmp_path):
    fam = families("llama")
    out = tmp_path / "gguf"
    r = cli("export", fam.parent, "-o", out, "--type", "q8_0", "--members", "teacher,member-06L", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data == json.loads((out / EXPORT_MANIFEST).read_text())
    assert [f["name"] for f in data["files"]] == ["member-06L", "teacher"]  # family order
    for f in data["files"]:
        path = out / f["path"]
        assert f["size"] == path.stat().st_size and f["sha256"] == sha256_file(path) and f["type"] == "q8_0"
        assert (out / f["modelfile"]).read_text() == f"FROM ./{f['path']}\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["export.json", "member-06L.gguf", "member-06L.Modelfile", "teacher.gguf", "teacher.Modelfile"]
    )
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).parent.parent / "docs" / "export.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    # metadata llama.cpp reads
    fields = gguf.GGUFReader(str(out / "member-06L.gguf")).fields
    value = lambda k: fields[k].contents()  # noqa: E731
    assert value("general.architecture") == "llama" and value("llama.block_count") == 6
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.chat_template") == CHAT_TEMPLATE
    assert value("tokenizer.ggml.eos_token_id") == 0 and value("general.file_type") == 7
    # the table, an existing output, an unknown member or type: one line, exit 2
    r = cli("export", fam, "-o", tmp_path / "table", "--type", "f16", "--members", "student")
    assert r.exit_code == 0 and "student.gguf" in r.stdout and "unique tensors" in r.stdout
    for args, msg in (
        (["-o", out], "--overwrite"),
        (["-o", tmp_path / "x", "--members", "member-99L"], "no member"),
        (["-o", tmp_path / "x", "--type", "q4_k"], "unknown --type"),
        (["-o", tmp_path / "x", "--format", "onnx"], "unknown --format"),
    ):
        r = cli("export", fam, *args)
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x").exists()


def test_family_defaults_to_the_last_one_built_here(families, tmp_path):
    from boomerang_cli.state import record

    r = cli("export", "-o", tmp_path / "none")
    assert r.exit_code == 2 and "no FAMILY given" in r.output
    record(family=str(families("llama")))
    r = cli("export", "-o", tmp_path / "out", "--type", "f16", "--members", "student", "--no-modelfile", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["files"][0]["modelfile"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export.json", "student.gguf"]


def test_the_entry_point_takes_a_request(families, tmp_path):
    """``run_export``: what ``boomerang export`` calls; the request's defaults are the CLI's."""
    from boomerang_cli.errors import BoomerangError
    from boomerang_cli.export.request import DEFAULT_TYPE, ExportRequest
    from boomerang_cli.export.writer import run_export

    res = run_export(ExportRequest(families("llama"), tmp_path / "out", members=["teacher"]))
    assert res.type == DEFAULT_TYPE == "q8_0" and [f.name for f in res.files] == ["teacher"]
    assert (tmp_path / "out" / "teacher.Modelfile").is_file()
    with pytest.raises(BoomerangError, match="--members is empty"):
        run_export(ExportRequest(families("llama"), tmp_path / "none", members=[]))
    assert not (tmp_path / "none").exists()


def test_the_tokenizer_of_a_gguf_teacher_is_copied(families, tmp_path):
    """A teacher that came as a GGUF (like the builtin smollm2-135m) gives its own tokenizer keys."""
    first = export_family(families("llama"), tmp_path / "first", "f32", members=["teacher"])
    teacher_gguf = tmp_path / "first" / first.files[0].path
    fam = build_family(tmp_path / "fam2", "llama", layers=LAYERS)  # the tokenizer below must not come from here
    manifest = FamilyManifest.read(fam)
    from boomerang_cli.family import build_family as write_family, candidates, open_pair, select
    from boomerang_cli.refs import resolve

    pair = open_pair(resolve(str(teacher_gguf)), resolve(manifest.student.path), force=True)
    picks = select(candidates(pair, "last-first"), all_members=True, student_params=0, teacher_params=0)
    fam = write_family(pair, picks, tmp_path / "gguf-family", order="last-first").manifest_path
    res = export_family(fam, tmp_path / "second", "f32", members=["teacher"])
    assert res.tokenizer == f"copied from {teacher_gguf.resolve()}"
    src, dst = (gguf.GGUFReader(str(p)).fields for p in (teacher_gguf, tmp_path / "second" / "teacher.gguf"))
    keys = sorted(k for k in src if k.startswith("tokenizer."))
    assert keys == sorted(k for k in dst if k.startswith("tokenizer."))
    for k in keys:
        assert src[k].contents() == dst[k].contents(), k


def test_unsupported_architecture_is_refused_with_one_line(tmp_path):
    fam = build_family(tmp_path / "gpt2", "gpt2", layers=6)
    r = cli("export", fam, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "cannot export gpt2 to GGUF" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(UnsupportedArchitectureError, match="gemma3.*every 6th layer"):
        gguf_arch(tiny_config("gemma3_text"))


def test_sliding_window_layers_are_refused(tmp_path):
    fam = build_family(tmp_path / "q2", "qwen2", layers=6)  # tiny qwen2: sliding window from layer 3
    r = cli("export", fam, "-o", tmp_path / "out", "--type", "f16")
    assert r.exit_code == 2 and "sliding-window attention" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_failed_export_leaves_no_output(families, tmp_path, monkeypatch):
    fam = families("llama")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writer, "write_metadata", boom)
    with pytest.raises(RuntimeError):
        export_family(fam, tmp_path / "out", "q8_0")
    assert not any(p.name.startswith((".out", "out")) for p in tmp_path.iterdir())


def test_conversion_in_row_slices_gives_the_same_bytes(families, tmp_path, monkeypatch):
    fam = families("llama")
    whole = export_family(fam, tmp_path / "whole", "q8_0", members=["teacher"])
    monkeypatch.setattr(convert, "CHUNK_BYTES", 4 * 32 * 3)  # three rows of 32 at a time
    sliced = export_family(fam, tmp_path / "sliced", "q8_0", members=["teacher"])
    assert whole.files[0].sha256 == sliced.files[0].sha256


LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)


def test_llama3_rope_scaling_is_written_as_rope_freqs(tmp_path):
    """llama.cpp divides each rotary frequency by rope_freqs; transformers' llama3 frequencies agree."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = tiny_config("llama", rope_parameters=dict(LLAMA3_ROPE))
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    base = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factors = torch.tensor(llama3_rope_factors(cfg))
    assert torch.allclose(base / factors, ROPE_INIT_FUNCTIONS["llama3"](cfg)[0], rtol=1e-6)
    fam = build_family(tmp_path, "llama", layers=6, rope_parameters=dict(LLAMA3_ROPE))
    res = export_family(fam, tmp_path / "out", "q8_0", members=["student", "teacher"])
    for f in res.files:
        t = {x.name: x for x in gguf.GGUFReader(str(tmp_path / "out" / f.path)).tensors}["rope_freqs.weight"]
        assert t.tensor_type.name == "F32" and torch.allclose(torch.tensor(t.data.copy()), factors)


def test_tensor_types_follow_llama_cpp():
    assert tensor_type("blk.0.attn_norm.weight", (32,), "q4_0") == "F32"
    assert tensor_type("blk.0.attn_q.weight", (32, 32), "q4_0") == "Q4_0"
    assert tensor_type("token_embd.weight", (512, 32), "q5_1") == "Q8_0"
    assert tensor_type("output.weight", (512, 32), "q8_0") == "Q8_0"
    assert tensor_type("blk.0.ffn_down.weight", (32, 48), "q8_0") == "F16"  # rows of 48: no 32-blocks
    assert tensor_type("blk.0.ffn_down.weight", (32, 48), "bf16") == "BF16"
