"""Data sources, the split rule, tokenization and packing (boomerang_cli/data.py)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

from boomerang_cli import data as D
from boomerang_cli.errors import DataError

from .common import save_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(path)
    return AutoTokenizer.from_pretrained(str(path))


def _jsonl(path: Path, texts, field="text") -> Path:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({field: t, "other": 1}) + "\n")
    return path


def test_split_rule_is_a_stable_two_percent():
    keys = [f"doc-{i}" for i in range(20_000)]
    val = [k for k in keys if D.split_of(k) == "validation"]
    assert 0.015 < len(val) / len(keys) < 0.025
    # The rule depends on the key only: fixed examples pin it across versions.
    assert [D.split_of(k) for k in keys[:3]] == [D.split_of(k) for k in keys[:3]]
    import hashlib

    for k in keys[:500]:
        h = int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big")
        assert D.split_of(k) == ("validation" if h % 10_000 < 200 else "train")


def test_stdlib_corpus_is_sorted_split_and_excludes_tests():
    files = D.stdlib_files()
    keys = [k for k, _ in files]
    assert keys == sorted(keys) and len(keys) > 100
    assert all(k.endswith(".py") for k in keys)
    assert not any(part in D.STDLIB_SKIP_DIRS for k in keys for part in k.split("/")[:-1])
    val = [k for k in keys if D.split_of(k) == "validation"]
    assert 0 < len(val) < len(keys) * 0.05
    first_val = next(D.load_documents("stdlib", "validation"))
    assert first_val == dict(files)[val[0]].read_text(encoding="utf-8", errors="replace")


def test_text_directory_jsonl_and_parquet(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    texts = {f"sub/f{i}.md" if i % 2 else f"f{i}.txt": f"document {i}" for i in range(200)}
    for rel, t in texts.items():
        (d / rel).write_text(t)
    (d / ".hidden" / "x.txt").write_text("never")
    (d / "skip.bin").write_bytes(b"\0")
    train = list(D.load_documents(str(d), "train"))
    val = list(D.load_documents(str(d), "validation"))
    # Every text file is one document: its head in train, its held-out tail in validation, in the order
    # of the sorted relative paths; nothing else is read.
    assert [a + b for a, b in zip(train, val)] == [texts[k] for k in sorted(texts)]
    assert list(D.load_documents(str(d), "all")) == [texts[k] for k in sorted(texts)]
    assert "never" not in train + val

    rows = [f"row {i}" for i in range(300)]
    j = _jsonl(tmp_path / "a.jsonl", rows, field="body")
    got = list(D.load_documents(str(j), "train", "body")) + list(D.load_documents(str(j), "validation", "body"))
    assert sorted(got) == sorted(rows)
    with pytest.raises(DataError, match="--text-field"):
        next(D.load_documents(str(j), "train", "text"))

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": rows, "n": list(range(300))}), tmp_path / "a.parquet")
    pt = list(D.load_documents(str(tmp_path / "a.parquet"), "train"))
    pv = list(D.load_documents(str(tmp_path / "a.parquet"), "validation"))
    assert sorted(pt + pv) == sorted(rows) and pv
    with pytest.raises(DataError, match="no column"):
        next(D.load_documents(str(tmp_path / "a.parquet"), "train", "body"))


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        next(D.load_documents(str(tmp_path / "nope.txt")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text"):
        next(D.load_documents(str(tmp_path / "empty")))
    with pytest.raises(DataError, match="split"):
        next(D.load_documents("stdlib", "dev"))


def test_hub_datasets_streaming(monkeypatch):
    import datasets

    calls = {}

    def fake_load(name, config=None, split=None, streaming=False):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": f"hub {i}"} for i in range(400)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    train = list(D.load_documents("org/corpus:cfg@raw", "train"))
    val = list(D.load_documents("org/corpus:cfg@raw", "validation"))
    assert calls == {"name": "org/corpus", "config": "cfg", "split": "raw", "streaming": True}
    assert sorted(train + val) == sorted(f"hub {i}" for i in range(400)) and val

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="cannot stream this dataset.*network"):
        next(D.load_documents("org/corpus"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match="pip install"):
        next(D.load_documents("org/corpus"))


def _stream_tokens(tokenizer, texts):
    eos = tokenizer.eos_token_id
    return [t for text in texts for t in D.encode_document(tokenizer, text, eos)]


def test_packing_keeps_every_token_once(tokenizer):
    texts = [("word " * n).strip() + f" {n}" for n in (1, 7, 30, 2, 55, 13, 4)]
    stream = _stream_tokens(tokenizer, texts)
    T = 16
    blocks = list(D.BlockStream(lambda _e: iter(texts), tokenizer, T, pad_last=True))
    assert all(b.input_ids.shape == (T,) for b in blocks)
    assert all(bool(b.mask.all()) for b in blocks[:-1])  # only the last block is padded
    inputs = torch.cat([b.input_ids[b.mask] for b in blocks]).tolist()
    assert inputs == stream
    # Labels: the next token of the stream, ignored at document ends and on padding.
    labels = torch.cat([b.labels[b.mask] for b in blocks]).tolist()
    ends = set(itertools.accumulate(len(D.encode_document(tokenizer, t, tokenizer.eos_token_id)) for t in texts))
    for i, lab in enumerate(labels):
        if i + 1 in ends or i + 1 == len(stream):
            assert lab == D.IGNORE
        else:
            assert lab == stream[i + 1]
    assert all((b.labels[~b.mask] == D.IGNORE).all() for b in blocks)
    # Without pad_last the partial block is dropped.
    full = list(D.BlockStream(lambda _e: iter(texts), tokenizer, T))
    assert len(full) == len(blocks) - (0 if bool(blocks[-1].mask.all()) else 1)


def test_stream_resumes_exactly_across_passes(tokenizer):
    texts = [f"alpha beta {i} " * (i % 5 + 1) for i in range(9)]
    T = 8
    ref = D.BlockStream(lambda _e: iter(texts), tokenizer, T, repeat=True)
    it = iter(ref)
    # A reference run of 40 blocks (several passes over the data), and a stream
    # restarted from the position recorded after each cut.
    ref_blocks, positions = [], []
    for _ in range(40):
        ref_blocks.append(next(it))
        positions.append(ref.position)
    for cut in (1, 5, 23):
        resumed = iter(
            D.BlockStream(
                lambda _e: iter(texts),
                tokenizer,
                T,
                repeat=True,
                position=D.StreamPosition.from_json(positions[cut - 1].to_json()),
            )
        )
        for k in range(cut, 40):
            b = next(resumed)
            assert torch.equal(b.input_ids, ref_blocks[k].input_ids)
            assert torch.equal(b.labels, ref_blocks[k].labels)
    assert positions[-1].epoch >= 1


def test_too_little_data(tokenizer):
    with pytest.raises(DataError, match="only .* tokens"):
        list(D.BlockStream(lambda _e: iter(["hi"]), tokenizer, 64, repeat=False))
    with pytest.raises(DataError, match="no documents"):
        list(D.BlockStream(lambda _e: iter([]), tokenizer, 8, repeat=True))


def test_iter_blocks_for_evaluation(tmp_path, tokenizer):
    j = _jsonl(tmp_path / "e.jsonl", [f"eval text number {i}" for i in range(400)])
    blocks = list(D.iter_blocks(str(j), "validation", tokenizer, 12))
    val_docs = list(D.load_documents(str(j), "validation"))
    assert torch.cat([b.input_ids[b.mask] for b in blocks]).tolist() == _stream_tokens(tokenizer, val_docs)
    assert len(list(D.iter_blocks(str(j), "validation", tokenizer, 12, max_blocks=2))) == 2


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok-bos")
    save_tokenizer(path, add_bos=True)
    return AutoTokenizer.from_pretrained(str(path))


def test_bos_policy_follows_the_tokenizer(tokenizer, bos_tokenizer):
    from .common import BOS_ID

    assert not D.tokenizer_adds_bos(tokenizer) and D.tokenizer_adds_bos(bos_tokenizer)
    assert D.block_bos(tokenizer) is None and D.block_bos(bos_tokenizer) == BOS_ID
    assert D.block_bos(bos_tokenizer, "never") is None
    assert D.block_bos(tokenizer, "always") == tokenizer.bos_token_id
    with pytest.raises(DataError, match="--bos"):
        D.block_bos(tokenizer, "sometimes")


def test_every_block_starts_with_bos_and_labels_are_unchanged(bos_tokenizer):
    """SPEC section 7: BOS in front of each block, no loss at it, every stream token predicted once."""
    tok, bos = bos_tokenizer, D.block_bos(bos_tokenizer)
    texts = [("word " * n).strip() + f" {n}" for n in (1, 7, 30, 2, 55, 13, 4)]
    stream = _stream_tokens(tok, texts)
    T = 16
    blocks = list(D.BlockStream(lambda _e: iter(texts), tok, T, pad_last=True, bos_id=bos))
    assert all(int(b.input_ids[0]) == bos for b in blocks)
    # Inputs without the inserted BOS are the stream; a block starting at a document's own BOS gets no second.
    inserted = [b for b in blocks if int(b.labels[0]) == D.IGNORE]
    body = torch.cat(
        [b.input_ids[b.mask][1:] if int(b.labels[0]) == D.IGNORE else b.input_ids[b.mask] for b in blocks]
    ).tolist()
    assert body == stream and 0 < len(inserted) < len(blocks)
    # Labels: exactly those of plain packing (the same stream tokens), none at an inserted BOS.
    plain = list(D.BlockStream(lambda _e: iter(texts), tok, T, pad_last=True))
    got = [int(x) for b in blocks for x in b.labels[b.mask] if int(x) != D.IGNORE]
    want = [int(x) for b in plain for x in b.labels[b.mask] if int(x) != D.IGNORE]
    assert got == want
    assert bos not in got  # no loss on predicting a BOS (the EOS before a document's own is ignored)


def test_bos_blocks_resume_and_need_room(bos_tokenizer, tokenizer):
    tok, bos = bos_tokenizer, D.block_bos(bos_tokenizer)
    texts = [f"alpha beta {i} " * (i % 5 + 1) for i in range(9)]
    ref = D.BlockStream(lambda _e: iter(texts), tok, 8, repeat=True, bos_id=bos)
    it = iter(ref)
    blocks, positions = [], []
    for _ in range(30):
        blocks.append(next(it))
        positions.append(ref.position)
    resumed = iter(D.BlockStream(lambda _e: iter(texts), tok, 8, repeat=True, bos_id=bos, position=positions[9]))
    for k in range(10, 30):
        assert torch.equal(next(resumed).input_ids, blocks[k].input_ids)
    with pytest.raises(DataError, match="at least 2"):
        D.BlockStream(lambda _e: iter(texts), tok, 1, bos_id=bos)
    # --bos always on a tokenizer that adds none: its BOS goes in front of every block.
    forced = list(D.BlockStream(lambda _e: iter(texts), tokenizer, 8, bos_id=D.block_bos(tokenizer, "always")))
    assert all(int(b.input_ids[0]) == tokenizer.bos_token_id for b in forced)


STDLIB_TEXT = Path(__import__("textwrap").__file__).read_text()


def test_a_text_file_is_one_document_with_a_contiguous_held_out_tail(tmp_path):
    """Train + validation is the file, each one contiguous span; the tail is ~2% and starts a line;
    `all` is the whole file; the same whether the file is alone or in a directory of 1, 20 or 60."""
    f = tmp_path / "one.py"
    f.write_text(STDLIB_TEXT)
    [head], [tail] = D.load_documents(str(f), "train"), D.load_documents(str(f), "validation")
    assert head + tail == STDLIB_TEXT and list(D.load_documents(str(f), "all")) == [STDLIB_TEXT]
    assert head.endswith("\n") and 0.02 <= len(tail.rstrip()) / len(STDLIB_TEXT.rstrip()) < 0.03
    assert (head.starts, head.ends, tail.starts, tail.ends) == (True, False, False, True)
    for n in (1, 20, 60):
        d = tmp_path / f"dir{n}"
        d.mkdir()
        for i in range(n):
            (d / f"f{i:02d}.py").write_text(STDLIB_TEXT if i == 0 else f"x = {i}\ny = {i}\n")
        assert next(D.load_documents(str(d), "validation")) == tail
        assert next(D.load_documents(str(d), "train")) == head
        assert next(D.load_documents(str(d), "all")) == STDLIB_TEXT


def test_a_file_too_short_to_hold_out_anything(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("oneword\n")
    with pytest.raises(DataError, match="too short to hold out a validation part.*--split all"):
        list(D.load_documents(str(f), "validation"))
    assert list(D.load_documents(str(f), "train")) == ["oneword\n"]
    assert list(D.load_documents(str(f), "all")) == ["oneword\n"]


def test_spans_get_special_tokens_only_where_the_file_has_them(bos_tokenizer):
    """A head gets the BOS and no EOS (the file goes on), a tail the EOS and no BOS; a whole file both."""
    text = "alpha beta\ngamma delta\n" * 40
    head, tail = D.split_text(text, "train"), D.split_text(text, "validation")
    eos, bos = bos_tokenizer.eos_token_id, bos_tokenizer.bos_token_id
    h, t, w = (D.encode_document(bos_tokenizer, x, eos) for x in (head, tail, text))
    assert h[0] == bos and h[-1] != eos
    assert t[0] != bos and t[-1] == eos
    assert w[0] == bos and w[-1] == eos
