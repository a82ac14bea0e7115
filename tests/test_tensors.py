"""Streaming tensor I/O: lazy reading, sharded writing, dtype conversion, atomic outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from boomerang_cli.errors import BoomerangError, OutputExistsError
from boomerang_cli.atomic import atomic_dir, atomic_write_text, check_output_dir
from boomerang_cli.tensor_writer import OutTensor, write_safetensors
from boomerang_cli.tensors import INDEX_FILE, SINGLE_FILE, ModelWeights, parse_dtype
from boomerang_cli.units import parse_size

from .common import load, logits, make_model, sample_ids, save_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_model(make_model("llama"), tmp_path_factory.mktemp("tensors") / "llama")


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.scalar": torch.tensor(1.5),
        "f.empty": torch.zeros(0, 4),
        "g.mask": torch.tensor([True, False, True]),
    }


def test_lazy_read_equals_safetensors(tmp_path):
    ref = _tensors()
    save_file(ref, str(tmp_path / SINGLE_FILE))
    w = ModelWeights(tmp_path)
    assert sorted(w.keys()) == sorted(ref)
    for name, t in ref.items():
        got = w.read(name)
        assert got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t), name
        assert w.info(name).numel == t.numel()
    assert w.read("a.weight", torch.float64).dtype == torch.float64
    assert w.total_bytes() == sum(t.numel() * t.element_size() for t in ref.values())


def test_lazy_read_sharded_model(llama_dir, tmp_path):
    # A sharded checkpoint written by transformers itself reads back identically.
    model = make_model("llama")
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert (tmp_path / "sharded" / INDEX_FILE).exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 2
    w = ModelWeights(tmp_path / "sharded")
    sd = model.state_dict()
    assert set(w.keys()) == set(sd)
    for name, t in sd.items():
        assert torch.equal(w.read(name), t), name


def test_unindexed_multi_file_directory(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / "part-a.safetensors"))
    save_file({"y": torch.zeros(3)}, str(tmp_path / "part-b.safetensors"))
    assert sorted(ModelWeights(tmp_path).keys()) == ["x", "y"]


def test_no_weights_and_bad_header(tmp_path):
    with pytest.raises(BoomerangError, match="no safetensors"):
        ModelWeights(tmp_path)
    (tmp_path / SINGLE_FILE).write_bytes(b"abc")
    with pytest.raises(BoomerangError, match="not a valid safetensors file"):
        ModelWeights(tmp_path)


def _items(w: ModelWeights, dtype=None) -> list[OutTensor]:
    return [OutTensor(f"out.{k}", w, k, dtype) for k in sorted(w.keys())]


def test_write_single_file_round_trip(tmp_path):
    ref = _tensors()
    (tmp_path / "src").mkdir()
    save_file(ref, str(tmp_path / "src" / SINGLE_FILE))
    w = ModelWeights(tmp_path / "src")
    (tmp_path / "out").mkdir()
    seen: list[int] = []
    res = write_safetensors(tmp_path / "out", _items(w), on_tensor=seen.append)
    assert res.files == [SINGLE_FILE]
    assert res.num_params == sum(t.numel() for t in ref.values())
    assert sum(seen) == res.total_bytes == w.total_bytes() and len(seen) == len(ref)
    back = load_file(str(tmp_path / "out" / SINGLE_FILE))
    assert set(back) == {f"out.{k}" for k in ref}
    for k, t in ref.items():
        assert torch.equal(back[f"out.{k}"], t)


def test_sharded_write_loads_with_from_pretrained(llama_dir, tmp_path):
    w = ModelWeights(llama_dir)
    out = tmp_path / "resharded"
    out.mkdir()
    items = [OutTensor(k, w, k) for k in w.keys()]
    res = write_safetensors(out, items, max_shard_size=parse_size("40kB"))
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and res.files[-1] == INDEX_FILE
    assert all(f"-of-{len(shards):05d}" in s.name for s in shards)
    index = json.loads((out / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(w.keys())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert index["metadata"]["total_size"] == res.total_bytes
    # Each shard respects the limit unless one tensor alone is larger.
    written = ModelWeights(out)
    for s in shards:
        sizes = [e.nbytes for e in written.entries.values() if e.file == s]
        assert sum(sizes) <= parse_size("40kB") or len(sizes) == 1
    for f in llama_dir.iterdir():
        if f.suffix == ".json" and f.name != INDEX_FILE:
            (out / f.name).write_bytes(f.read_bytes())
    ids = sample_ids()
    assert torch.equal(logits(load(out), ids), logits(load(llama_dir), ids))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtype_conversion(tmp_path, dtype):
    g = torch.Generator().manual_seed(3)
    ref = {
        "big": torch.randn(300, 70, generator=g),
        "small": torch.randn(5, generator=g),
        "bf": torch.randn(9, 4, generator=g).to(torch.bfloat16),
    }
    (tmp_path / "src").mkdir()
    save_file(ref, str(tmp_path / "src" / SINGLE_FILE))
    w = ModelWeights(tmp_path / "src")
    (tmp_path / "out").mkdir()
    res = write_safetensors(tmp_path / "out", _items(w, dtype))
    back = load_file(str(tmp_path / "out" / SINGLE_FILE))
    for k, t in ref.items():
        assert back[f"out.{k}"].dtype == dtype
        assert torch.equal(back[f"out.{k}"], t.to(dtype)), k
    assert res.total_bytes == sum(t.numel() for t in ref.values()) * torch.empty(0, dtype=dtype).element_size()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_tensor_digests_match_the_files_and_hash_each_source_once(llama_dir, tmp_path, dtype, monkeypatch):
    """write_safetensors(digests=...): each weight file's sha256-tensors digest equals the one computed
    from the file alone; a second write of the same tensors (another member) reads no source again."""
    from boomerang_cli import tensor_writer
    from boomerang_cli.integrity import tensors_digest

    w = ModelWeights(llama_dir)
    digests = tensor_writer.TensorDigests()
    reads: list[int] = []
    real = tensor_writer.range_digest
    monkeypatch.setattr(tensor_writer, "range_digest", lambda *a: reads.append(a[2]) or real(*a))
    results = []
    for shard, name in ((5 * 10**9, "one"), (parse_size("40kB"), "many"), (parse_size("40kB"), "again")):
        out = tmp_path / name
        out.mkdir()
        res = write_safetensors(out, [OutTensor(k, w, k, dtype) for k in w.keys()], shard, digests=digests)
        weights = [f for f in res.files if f.endswith(".safetensors")]
        assert set(res.digests) == set(weights) and (name == "one") == (len(weights) == 1)
        for f in weights:
            assert res.digests[f].startswith("sha256-tensors:") and res.digests[f] == tensors_digest(out / f), f
        results.append(res)
    assert len(reads) == (0 if dtype else len(w.keys())), reads  # each source tensor hashed once, ever
    assert results[1].digests == results[2].digests
    # Any byte changed, in a tensor or in the header, changes the digest; so does a trailing byte.
    f = tmp_path / "one" / SINGLE_FILE
    good = f.read_bytes()
    for pos in (10, len(good) // 2, len(good) - 1):
        bad = bytearray(good)
        bad[pos] ^= 1
        f.write_bytes(bytes(bad))
        assert tensors_digest(f) != results[0].digests[SINGLE_FILE], pos
    f.write_bytes(good + b"\0")
    assert tensors_digest(f) is None


def test_dtype_conversion_in_small_chunks(tmp_path):
    # The converter streams a tensor in slices; a slice size that does not divide the
    # tensor must still give exactly the converted tensor.
    from boomerang_cli import tensor_writer

    t = torch.randn(1001, 13)
    save_file({"t": t}, str(tmp_path / SINGLE_FILE))
    info = ModelWeights(tmp_path).info("t")
    with open(tmp_path / "raw", "wb") as out:
        tensor_writer._convert_range(info, torch.bfloat16, out, chunk_bytes=4 * 997)
    raw = (tmp_path / "raw").read_bytes()
    got = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).reshape(1001, 13)
    assert torch.equal(got, t.to(torch.bfloat16))


def test_duplicate_output_names_refused(tmp_path):
    save_file({"x": torch.ones(2)}, str(tmp_path / SINGLE_FILE))
    w = ModelWeights(tmp_path)
    with pytest.raises(BoomerangError, match="duplicate"):
        write_safetensors(tmp_path, [OutTensor("y", w, "x"), OutTensor("y", w, "x")])


def test_atomic_dir_success_and_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        assert tmp != final and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "broken") as tmp:
            (tmp / "half.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    # A failed overwrite leaves the previous content untouched.
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("b")
            raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_dir(tmp_path / "full", overwrite=False)
    check_output_dir(tmp_path / "full", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)
    with pytest.raises(OutputExistsError):
        with atomic_dir(tmp_path / "full"):
            pass
    assert os.listdir(tmp_path / "full") == ["x"]


def test_atomic_write_text(tmp_path):
    p = tmp_path / "sub" / "state.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["state.json"]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("123", 123),
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("40kB", 40_000),
        ("1.5G", 1_500_000_000),
        ("2GiB", 2 * 2**30),
        ("10 MiB", 10 * 2**20),
        ("7b", 7),
        ("1TB", 10**12),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "5XB", "-1GB", "GB", "1.2.3GB", "."])
def test_parse_size_bad(text):
    with pytest.raises(BoomerangError, match="cannot read size"):
        parse_size(text)


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("BFloat16") is torch.bfloat16
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("half") is torch.float16
    assert parse_dtype("fp32") is torch.float32 and parse_dtype("float32") is torch.float32
    with pytest.raises(BoomerangError, match="bf16, fp16, fp32"):
        parse_dtype("int4")


def test_atomic_outputs_follow_the_umask(tmp_path):
    import os
    import stat

    from boomerang_cli.atomic import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as d:
            (d / "x").write_text("1")
        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
