"""``boomerang family``: sizes, selection, pair check, students from anywhere, resume, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.errors import BoomerangError, PairMismatchError
from boomerang_cli.family import (
    Candidate,
    achievable,
    build_family,
    candidates,
    check_selection_args,
    open_pair,
    parse_size_targets,
    parse_sizes,
    select,
    verify_member,
)
from boomerang_cli.family.open import load_member_from_manifest
from boomerang_cli.manifest import FamilyManifest
from boomerang_cli.orders.names import sequential_members
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.student import init_student

from .common import load, logits, make_model, perturb_saved, sample_ids, save_model

LAYERS = 8
PLAN = Plan.from_paper_flags(LAYERS)  # kept 0,2,4,6,7
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def state_file(tmp_path, monkeypatch):
    """Short forms read/write the last step's outputs; keep them inside the test."""
    path = tmp_path / "state" / "state.json"
    monkeypatch.setenv("BOOMERANG_STATE", str(path))
    return path


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """A llama teacher (8 layers) and its "distilled" student (5 layers); treat as read-only."""
    root = tmp_path_factory.mktemp("pair")
    teacher = save_model(make_model("llama", LAYERS, seed=0), root / "teacher")
    student = root / "student"
    init_student(resolve(str(teacher)), PLAN, student)
    perturb_saved(student, seed=11)
    return teacher, student


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def open_(teacher: Path, student: Path, **kw):
    return open_pair(resolve(str(teacher)), resolve(str(student)), **kw)


def build_all(teacher: Path, student: Path, out: Path, order: str = "last-first", **kw):
    pair = open_(teacher, student)
    cands = candidates(pair, order)
    every = achievable(pair, order)
    picks = select(cands, all_members=True, student_params=every[0].num_params, teacher_params=every[-1].num_params)
    return build_family(pair, picks, out, order=order, **kw)


# -- sizes ------------------------------------------------------------------------------


def test_parse_sizes_units():
    assert parse_sizes("2B,3.5M,500K") == [2_000_000_000, 3_500_000, 500_000]
    assert parse_sizes(" 1.5b , 250m,120000, .5T") == [1_500_000_000, 250_000_000, 120_000, 500_000_000_000]
    assert [t.label for t in parse_size_targets("2B, 3.5M")] == ["2B", "3.5M"]


@pytest.mark.parametrize("text", ["", "2X", "abc", "1.2.3B", "-5M", "0", "0K", "2B,,3B", "2 B B", "B", "3MB"])
def test_parse_sizes_rejects_malformed(text):
    with pytest.raises(BoomerangError, match="--sizes"):
        parse_sizes(text)


def fake_candidates(params: list[int]) -> list[Candidate]:
    plan = Plan.from_keep(12, [0, 2, 4, 6, 8, 10, 11])  # 5 patchable blocks: 4 members between
    members = sequential_members(plan, "last-first")[1:-1]
    assert len(members) == len(params)
    return [Candidate(m, p, False, i + 1) for i, (m, p) in enumerate(zip(members, params))]


def test_select_by_size_takes_the_closest_member_and_merges_duplicates():
    cands = fake_candidates([110, 120, 130, 140])
    picks = select(cands, sizes=parse_size_targets("112,139,141,125"), student_params=100, teacher_params=150)
    assert [(p.candidate.num_params, [t.label for t in p.targets]) for p in picks] == [
        (110, ["112"]),
        (120, ["125"]),
        (140, ["139", "141"]),
    ]
    # A tie goes to the smaller member; the ends of the range are allowed.
    picks = select(cands, sizes=parse_size_targets("115,100,150"), student_params=100, teacher_params=150)
    assert [p.candidate.num_params for p in picks] == [110, 140]


def test_select_never_picks_a_member_larger_than_the_teacher():
    """Tied teacher, members saved untied (SPEC section 6): sizes stay within [student, teacher]."""
    cands = fake_candidates([110, 120, 150, 160])
    picks = select(cands, sizes=parse_size_targets("138"), student_params=100, teacher_params=140)
    assert [p.candidate.num_params for p in picks] == [120]  # not 150, the closer count: it outgrows the teacher
    with pytest.raises(
        BoomerangError,
        match=r"range 100\.\.140 \(student 100 \.\. teacher 140\).*"
        r"2 member\(s\) are larger than the teacher.*--freeze-embeddings",
    ):
        select(cands, sizes=parse_size_targets("158"), student_params=100, teacher_params=140)
    with pytest.raises(BoomerangError, match="no member of this family lies between.*--freeze-embeddings"):
        select(
            fake_candidates([150, 160, 170, 180]),
            sizes=parse_size_targets("120"),
            student_params=100,
            teacher_params=140,
        )


@pytest.mark.parametrize("size", ["99", "151", "1B"])
def test_select_rejects_sizes_outside_student_teacher_range(size):
    with pytest.raises(BoomerangError, match="outside this family's range"):
        select(
            fake_candidates([110, 120, 130, 140]),
            sizes=parse_size_targets(size),
            student_params=100,
            teacher_params=150,
        )


def test_select_num_is_evenly_spaced_and_distinct():
    cands = fake_candidates([110, 120, 130, 140])

    def sel(n: int) -> list[int]:
        return [p.candidate.num_params for p in select(cands, num=n, student_params=100, teacher_params=150)]

    # Positions i*(M+1)/(N+1) along student(0) .. members(1..4) .. teacher(5), rounded.
    assert sel(1) == [130]  # 2.5 -> 3
    assert sel(2) == [120, 130]  # 1.67, 3.33 -> 2, 3
    assert sel(3) == [110, 130, 140]  # 1.25, 2.5, 3.75 -> 1, 3, 4
    assert sel(4) == [110, 120, 130, 140]
    with pytest.raises(BoomerangError, match="only 4 member"):
        sel(5)
    assert [
        p.candidate.num_params for p in select(cands, all_members=True, student_params=100, teacher_params=150)
    ] == [110, 120, 130, 140]
    with pytest.raises(BoomerangError, match="no member between"):
        select([], all_members=True, student_params=100, teacher_params=150)


def test_selection_arguments_are_exclusive_and_required():
    with pytest.raises(BoomerangError, match="choose members"):
        check_selection_args(None, None, False, dry_run=False)
    assert check_selection_args(None, None, False, dry_run=True) is None
    with pytest.raises(BoomerangError, match="exclude each other"):
        check_selection_args("2B", 3, False, dry_run=False)
    with pytest.raises(BoomerangError, match="exclude each other"):
        check_selection_args(None, 3, True, dry_run=False)
    with pytest.raises(BoomerangError, match="at least one"):
        check_selection_args(None, 0, False, dry_run=False)


def test_smollm2_plan_has_13_last_first_members():
    plan = Plan.from_paper_flags(30)
    assert len(sequential_members(plan, "last-first")) - 2 == 13
    assert len(sequential_members(plan, "first-last")) - 2 == 14  # trailing singletons stay the student's


# -- the CLI: build, sizes, dry run, JSON ------------------------------------------------


def test_family_sizes_writes_members_and_manifest(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    pair = open_(teacher, student)
    every = achievable(pair, "last-first")
    mid = every[1].num_params
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--sizes", f"{mid},{mid + 1}")
    assert r.exit_code == 0, r.output
    assert f"sizes {mid}, {mid + 1} all chose {every[1].name}; written once" in r.output
    assert "student" in r.output and "teacher" in r.output  # reference rows
    m = FamilyManifest.read(out)
    assert [e.name for e in m.members] == [every[1].name]
    assert m.members[0].targets == [str(mid), str(mid + 1)]
    assert m.complete and m.order.method == "last-first" and m.plan == PLAN
    assert sorted(p.name for p in out.iterdir()) == sorted([every[1].name, "family.json"])
    assert verify_member(out / m.members[0].path, m.members[0])
    saved = load(out / m.members[0].path)
    assert saved.config.num_hidden_layers == every[1].member.num_layers
    assert sum(p.numel() for p in saved.parameters()) == m.members[0].num_params


def test_family_hashes_each_source_tensor_once_and_reads_no_member_back(tmp_path, pair_dirs, monkeypatch):
    """Weight files get sha256-tensors digests from source tensors hashed once for the whole family;
    no member's weights are read back; the digests verify from the files alone."""
    from boomerang_cli import integrity, tensor_writer

    teacher, student = pair_dirs
    read_back: list[str] = []
    hashed: list[tuple] = []
    real_file, real_range = integrity.sha256_file, tensor_writer.range_digest
    monkeypatch.setattr(integrity, "sha256_file", lambda p: read_back.append(Path(p).name) or real_file(p))
    monkeypatch.setattr(tensor_writer, "range_digest", lambda *a: hashed.append(a[:3]) or real_range(*a))
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--all", "--max-shard-size", "40kB")
    assert r.exit_code == 0, r.output
    assert read_back and not [n for n in read_back if n.endswith(".safetensors")], read_back
    assert hashed and len(hashed) == len(set(hashed))  # every source range hashed once
    assert all(str(p).startswith((str(teacher), str(student))) for p, _, _ in hashed)
    m = FamilyManifest.read(out)
    assert len(m.members) > 1
    for e in m.members:
        weights = [f for f in e.files if f.endswith(".safetensors")]
        assert len(weights) > 1 and all(e.files[f].startswith("sha256-tensors:") for f in weights)
        assert all(e.files[f].startswith("sha256:") for f in e.files if f not in weights)
        assert verify_member(out / e.path, e)
        assert {f: integrity.digest_like(out / e.path / f, d) for f, d in e.files.items()} == e.files


def test_family_json_prints_the_manifest(tmp_path, pair_dirs, state_file):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--all", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data == json.loads((out / "family.json").read_text())
    assert len(data["members"]) == 2 and data["complete"] is True
    assert json.loads(state_file.read_text())["family"] == str((out / "family.json").resolve())


def test_dry_run_lists_every_member_and_writes_nothing(tmp_path, pair_dirs, state_file):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--dry-run", "--order", "first-last")
    assert r.exit_code == 0, r.output
    for name in ("student", "member-06L", "member-07L", "member-08L", "teacher"):
        assert name in r.stdout
    assert not out.exists() and not state_file.exists()
    r = cli("family", teacher, student, "--dry-run", "--json", "--num", "1")
    data = json.loads(r.stdout)
    assert data["dry_run"] is True and len(data["selected"]) == 1
    assert [m["name"] for m in data["members"]] == ["member-06L", "member-07L"]
    assert data["student"]["num_layers"] == 5 and data["teacher"]["num_layers"] == 8
    assert all(m["path"] is None for m in data["members"])


def test_num_and_all(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    r = cli("family", teacher, student, "-o", tmp_path / "a", "--num", "1", "--order", "first-last")
    assert r.exit_code == 0, r.output
    assert [e.name for e in FamilyManifest.read(tmp_path / "a").members] == ["member-07L"]
    r = cli("family", teacher, student, "-o", tmp_path / "b", "--all", "--order", "first-last")
    assert [e.name for e in FamilyManifest.read(tmp_path / "b").members] == ["member-06L", "member-07L", "member-08L"]


def test_short_forms_use_the_recorded_student_and_its_teacher(tmp_path, monkeypatch, state_file):
    teacher = save_model(make_model("llama", LAYERS, seed=0), tmp_path / "teacher")
    monkeypatch.chdir(tmp_path)
    assert cli("init-student", "teacher", "-o", "stu").exit_code == 0
    r = cli("family", "--num", "1")
    assert r.exit_code == 0, r.output
    fam = tmp_path / "stu-family"
    assert (fam / "family.json").exists()
    assert json.loads(state_file.read_text())["family"] == str(fam / "family.json")
    m = FamilyManifest.read(fam)
    assert Path(m.teacher.path) == teacher.resolve() and Path(m.student.path) == (tmp_path / "stu").resolve()
    # One positional: the student (it names its teacher).
    r = cli("family", "stu", "--all", "-o", "other")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "other" / "family.json").exists()
    # A lone argument that is not a student is refused.
    r = cli("family", "teacher", "--all", "-o", "third")
    assert r.exit_code == 2 and "lone argument" in r.output and not (tmp_path / "third").exists()


def test_no_models_and_no_state_is_an_error(tmp_path):
    r = cli("family", "--all")
    assert r.exit_code == 2 and "pass TEACHER STUDENT" in r.output


# -- students from anywhere -----------------------------------------------------------------


def test_reference_code_student(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    ref = tmp_path / "ref-student"
    shutil.copytree(student, ref)
    (ref / "boomerang.json").unlink()
    assert json.loads((ref / "student_config.json").read_text())["copied_teacher_layers"] == list(PLAN.kept)
    r = cli("family", teacher, ref, "-o", tmp_path / "fam", "--all", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["plan_source"] == "student_config.json" and data["plan"]["kept"] == list(PLAN.kept)
    assert "records no teacher fingerprint" in r.stderr


def test_any_pair_with_explicit_keep(tmp_path, pair_dirs):
    """Like gpt2 + distilgpt2 --keep 0,2,4,7,9,11: a student made elsewhere, no boomerang files."""
    teacher, _ = pair_dirs
    other = save_model(make_model("llama", 5, seed=5), tmp_path / "distilled-elsewhere")
    r = cli("family", teacher, other, "-o", tmp_path / "no-plan", "--all")
    assert r.exit_code == 2 and "--keep" in r.output and not (tmp_path / "no-plan").exists()
    out = tmp_path / "fam"
    r = cli("family", teacher, other, "-o", out, "--all", "--keep", "0,2,4,6,7")
    assert r.exit_code == 0, r.output
    m = FamilyManifest.read(out)
    assert m.plan_source == "--keep" and m.plan.kept == (0, 2, 4, 6, 7)
    for e in m.members:
        assert load(out / e.path).config.num_hidden_layers == e.num_layers


# -- bad input: exit 2, nothing written -----------------------------------------------------


def _bad(tmp_path, *args, match: str) -> None:
    out = tmp_path / "bad-out"
    r = cli("family", *args, "-o", out)
    assert r.exit_code == 2, r.output
    assert match in r.output
    assert not out.exists()


def test_bad_sizes_and_selection(tmp_path, pair_dirs):
    t, s = pair_dirs
    _bad(tmp_path, t, s, "--sizes", "2Q", match="cannot read size '2Q'")
    _bad(tmp_path, t, s, "--sizes", "1B", match="outside this family's range")
    _bad(tmp_path, t, s, "--sizes", "1K", match="outside this family's range")
    _bad(tmp_path, t, s, match="choose members")
    _bad(tmp_path, t, s, "--all", "--num", "2", match="exclude each other")
    _bad(tmp_path, t, s, "--num", "9", match="only 2 member")
    _bad(tmp_path, t, s, "--all", "--order", "middle-out", match="unknown --order")


def test_pair_check_fingerprint_and_force(tmp_path, pair_dirs):
    _, student = pair_dirs
    stranger = save_model(make_model("llama", LAYERS, seed=99), tmp_path / "stranger")  # same shapes
    _bad(tmp_path, stranger, student, "--all", match="teacher fingerprint differs")
    out = tmp_path / "forced"
    r = cli("family", stranger, student, "-o", out, "--all", "--force")
    assert r.exit_code == 0, r.output
    m = FamilyManifest.read(out)
    assert m.forced and any("fingerprint" in x for x in m.forced_reasons)


def test_pair_check_architecture_hidden_vocab_layers(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    mistral = save_model(make_model("mistral", LAYERS, seed=0), tmp_path / "mistral")
    _bad(tmp_path, mistral, student, "--all", match="architecture llama vs teacher mistral")
    wide = save_model(make_model("llama", LAYERS, seed=0, hidden_size=64), tmp_path / "wide")
    _bad(tmp_path, wide, student, "--all", "--force", match="not even with --force")
    vocab = save_model(make_model("llama", LAYERS, seed=0, vocab_size=600), tmp_path / "vocab")
    _bad(
        tmp_path,
        vocab,
        student,
        "--all",
        "--force",
        match="embed_tokens.weight has shape [512, 32] vs teacher [600, 32]",
    )
    deep = save_model(make_model("llama", 10, seed=0), tmp_path / "deep")
    _bad(tmp_path, deep, student, "--all", match="8-layer teacher")
    other = save_model(make_model("llama", 5, seed=5), tmp_path / "five")
    _bad(tmp_path, teacher, other, "--all", "--keep", "0,2,4", match="has 5 layers but its plan")
    _bad(tmp_path, teacher, student, "--all", "--keep", "0,2,4,5,7", match="contradicts the student's boomerang.json")
    _bad(tmp_path, teacher, teacher, "--all", match="same model")
    _bad(tmp_path, teacher, tmp_path / "missing", "--all", match="no such file or directory")


def test_bad_output_directories(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    f = tmp_path / "a-file"
    f.write_text("x")
    r = cli("family", teacher, student, "-o", f, "--all")
    assert r.exit_code == 2 and "not a directory" in r.output and f.read_text() == "x"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    r = cli("family", teacher, student, "-o", busy, "--all")
    assert r.exit_code == 2 and "holds no family.json" in r.output
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    r = cli("family", teacher, student, "-o", busy, "--all", "--overwrite")
    assert r.exit_code == 0 and not (busy / "notes.txt").exists() and (busy / "family.json").exists()
    r = cli("family", teacher, student, "-o", student.parent, "--all", "--overwrite")
    assert r.exit_code == 2 and "contains the teacher" in r.output
    assert (student / "boomerang.json").exists()
    # An existing family of another order is not mixed into.
    r = cli("family", teacher, student, "-o", busy, "--all", "--order", "first-last")
    assert r.exit_code == 2 and "another order (last-first)" in r.output
    assert [e.name for e in FamilyManifest.read(busy).members] == ["member-06L", "member-07L"]


# -- resume -------------------------------------------------------------------------------------


class InterruptAt:
    """Progress that raises mid-write of one member (Ctrl-C / crash stand-in)."""

    def __init__(self, name: str) -> None:
        self.name, self.current = name, ""

    def task(self, description, total, unit="it"):
        return self

    def finish(self, task):
        pass

    def update(self, **fields):
        self.current = str(fields.get("description", self.current))

    def advance(self, amount=1):
        if self.current == f"writing {self.name}":
            raise KeyboardInterrupt


def test_resume_after_interrupted_write(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    with pytest.raises(KeyboardInterrupt):
        build_all(teacher, student, out, progress=InterruptAt("member-07L"))
    m = FamilyManifest.read(out)
    assert not m.complete and [e.name for e in m.members] == ["member-06L"]
    assert sorted(p.name for p in out.iterdir()) == ["family.json", "member-06L"]  # no half member
    # A killed run leaves atomic_dir's temp directory behind; the rerun removes it.
    (out / ".member-07L.tmp-k1ll3d").mkdir()
    (out / ".member-07L.tmp-k1ll3d" / "model.safetensors").write_bytes(b"partial")
    before = (out / "member-06L" / "model.safetensors").stat().st_mtime_ns
    res = build_all(teacher, student, out)
    assert res.reused == ["member-06L"] and res.written == ["member-07L"]
    assert (out / "member-06L" / "model.safetensors").stat().st_mtime_ns == before
    assert sorted(p.name for p in out.iterdir()) == ["family.json", "member-06L", "member-07L"]
    assert FamilyManifest.read(out).complete


def test_rerun_verifies_and_rewrites_what_does_not_match(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    cli("family", teacher, student, "-o", out, "--all")
    m = FamilyManifest.read(out)
    # Metrics from `eval` live in the same entries and survive a rerun.
    m.members[0].metrics = {"wikitext": {"word_perplexity": 12.5}}
    m.teacher.metrics = {"wikitext": {"word_perplexity": 10.0}}
    m.write(out / "family.json")
    r = cli("family", teacher, student, "-o", out, "--all")
    assert r.exit_code == 0 and "(0 written, 2 reused)" in " ".join(r.output.split())
    m = FamilyManifest.read(out)
    assert m.members[0].metrics and m.teacher.metrics
    # A corrupted weight file: rewritten.
    weights = out / "member-07L" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # A member directory the manifest does not list: rewritten.
    m.members = [e for e in m.members if e.name != "member-06L"]
    m.write(out / "family.json")
    res = build_all(teacher, student, out)
    assert sorted(res.written) == ["member-06L", "member-07L"] and res.reused == []
    for e in FamilyManifest.read(out).members:
        assert verify_member(out / e.path, e)


def test_rerun_with_other_selection_keeps_earlier_members(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    assert cli("family", teacher, student, "-o", out, "--num", "1").exit_code == 0
    first = [e.name for e in FamilyManifest.read(out).members]
    assert cli("family", teacher, student, "-o", out, "--all").exit_code == 0
    names = [e.name for e in FamilyManifest.read(out).members]
    assert set(first) < set(names) and names == ["member-06L", "member-07L"]


def test_dtype_is_recorded_and_not_mixed(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    assert cli("family", teacher, student, "-o", out, "--all", "--dtype", "bf16").exit_code == 0
    m = FamilyManifest.read(out)
    assert m.dtype == "bf16"
    from safetensors import safe_open

    with safe_open(str(out / "member-06L" / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    r = cli("family", teacher, student, "-o", out, "--all")
    assert r.exit_code == 2 and "another dtype (bf16)" in r.output


# -- the in-memory API --------------------------------------------------------------------------


def test_load_member_from_manifest(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    res = build_all(teacher, student, out)
    ids = sample_ids()
    for name, ref in (("teacher", teacher), ("student", student)):
        torch.testing.assert_close(logits(load_member_from_manifest(out, name), ids), logits(load(ref), ids))
    for e in res.manifest.members:
        torch.testing.assert_close(
            logits(load_member_from_manifest(res.manifest_path, e.name), ids), logits(load(out / e.path), ids)
        )
    with pytest.raises(BoomerangError, match="no member 'member-99L'"):
        load_member_from_manifest(out, "member-99L")
    # The family remembers which teacher it was built from.
    moved = tmp_path / "teacher-copy"
    shutil.copytree(teacher, moved)
    perturb_saved(moved, seed=1)
    m = FamilyManifest.read(out)
    m.teacher.path = str(moved)
    m.write(out / "family.json")
    with pytest.raises(PairMismatchError, match="not the one this family was built from"):
        load_member_from_manifest(out, "member-06L")


# -- the real family ----------------------------------------------------------------------------


@pytest.mark.integration
def test_smollm2_family_two_members(tmp_path):
    teacher = resolve("smollm2-135m")
    student = tmp_path / "student"
    init_student(teacher, Plan.from_paper_flags(30), student)
    out = tmp_path / "fam"
    r = cli("family", "smollm2-135m", student, "-o", out, "--sizes", "100M,125M")
    assert r.exit_code == 0, r.output
    m = FamilyManifest.read(out)
    assert len(m.members) == 2 and m.teacher.num_params > m.student.num_params
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1345, 28, 2]])
    for e in m.members:
        # Members are 3.54M apart (one Llama layer of SmolLM2): the closest is within half of that.
        assert abs(e.num_params - {"100M": 100e6, "125M": 125e6}[e.targets[0]]) < 1.8e6
        model = load(out / e.path)
        # The undistilled student holds the teacher's embedding byte for byte: every member is tied.
        assert model.config.num_hidden_layers == e.num_layers and model.config.tie_word_embeddings and e.tied
        assert model.num_parameters() == e.num_params
        torch.testing.assert_close(logits(model, ids), logits(load_member_from_manifest(out, e.name), ids))


def test_default_output_is_next_to_a_local_student(tmp_path):
    from boomerang_cli.family.run import default_output

    (tmp_path / "stu").mkdir()
    assert default_output(str(tmp_path / "stu") + "/") == tmp_path / "stu-family"
    assert default_output("HuggingFaceTB/SmolLM2-135M") is None  # hub ids need -o
