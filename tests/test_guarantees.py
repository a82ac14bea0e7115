"""What the tool promises on bad input, interruption and concurrency (docs/guarantees.md), as one table.

Each row of ``CASES`` is a case a careful but hostile user tries: the command,
the exit code, a fragment of the one-line message, and what must (or must not)
be on disk afterwards. Rows for the failures issues 14 and 25 found sit beside
rows for neighbouring cases that already behaved, so a regression in either
fails here. A row may inject a fault during the command only (``patch``: a full
disk, Ctrl-C just after a rename) and check that a rerun then finishes.
Every row runs in-process on tiny models (``tests/common.py``) in a fresh copy
of one small world: a 4-layer teacher, its 2-layer student, a family of them
and a text corpus. The cases that need a second process (kill -9 and resume,
two writers) are the tests after the table.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.cli import app
from boomerang_cli.guard import lock_path, output_lock

from .common import perturb_saved, tiny_model_dir

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

CORPUS = "".join(f"The quick brown fox {i} jumps over the lazy dog. def add(a, b): return a + b\n" for i in range(400))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """teacher/ (4 layers), student/ (kept 0,2), fam/ (its one member), corpus.txt; copied per test."""
    root = tmp_path_factory.mktemp("world")
    teacher = tiny_model_dir(root, "llama", layers=4)
    teacher.rename(root / "teacher")
    (root / "corpus.txt").write_text(CORPUS)
    env = {"BOOMERANG_STATE": str(root / "state.json"), "BOOMERANG_PROGRESS": "0"}
    r = runner.invoke(
        app, ["init-student", str(root / "teacher"), "-o", str(root / "student"), "--keep", "0,2"], env=env
    )
    assert r.exit_code == 0, r.output
    perturb_saved(root / "student", seed=3)
    r = runner.invoke(
        app, ["family", str(root / "teacher"), str(root / "student"), "-o", str(root / "fam"), "--all"], env=env
    )
    assert r.exit_code == 0, r.output
    (root / "state.json").unlink(missing_ok=True)
    return root


@dataclass
class World:
    root: Path
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    expected: set[str] = field(default_factory=set)  # hidden entries that are not leftovers (held locks)

    def hold_lock(self, name: str) -> None:
        """Another writer (this process, on another file description) holds ``name``'s lock."""
        self.held.enter_context(output_lock(self.root / name))
        self.expected.add(lock_path(self.root / name).name)

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def tree(self, name: str) -> dict[str, int]:
        """Relative path -> size of every file under ``name`` (what must survive a refused run)."""
        top = self.root / name
        return {str(p.relative_to(top)): p.stat().st_size for p in sorted(top.rglob("*")) if p.is_file()}


@pytest.fixture
def w(base, tmp_path, monkeypatch) -> Iterator[World]:
    root = tmp_path / "w"
    shutil.copytree(base, root, symlinks=True)
    monkeypatch.setenv("BOOMERANG_STATE", str(root / "state.json"))
    monkeypatch.setenv("BOOMERANG_PROGRESS", "0")
    monkeypatch.chdir(root)
    # A family records absolute teacher/student paths: point the copy's manifest at the copy.
    m = json.loads((root / "fam" / "family.json").read_text())
    for role in ("teacher", "student"):
        m[role]["path"] = str(root / role)
        m[role]["ref"] = str(root / role)
    (root / "fam" / "family.json").write_text(json.dumps(m, indent=2))
    world = World(root)
    with world.held:
        yield world


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


# -- the table --------------------------------------------------------------------------------------

Setup = Callable[[World], None]
Check = Callable[[World], None]


@dataclass
class Case:
    id: str
    args: list[str]  # "{name}" is replaced by the world's path of name
    code: int
    message: str = ""  # a fragment of the one-line error (or of the output when code is 0)
    setup: Setup | None = None
    after: Check | None = None  # what must be on disk afterwards
    keeps: list[str] = field(default_factory=list)  # world entries that must be byte-for-byte unchanged
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a fault injected during the command only
    leftovers: bool = False  # hidden siblings (a held lock, a live run's temp dir) are expected afterwards


def _fill(arg: str, w: World) -> str:
    return arg.replace("{w}", str(w.root))


def unchanged(*names: str) -> list[str]:
    return list(names)


def absent(*names: str) -> Check:
    def check(w: World) -> None:
        for n in names:
            assert not (w / n).exists(), f"{n} should not exist"

    return check


def present(*names: str) -> Check:
    def check(w: World) -> None:
        for n in names:
            assert (w / n).exists(), f"{n} should exist"

    return check


def no_hidden_leftovers(w: World) -> None:
    """No temp dirs, lock files or .old entries next to any output."""
    junk = [
        p.name
        for d in (w.root, w / "fam")
        if d.is_dir()
        for p in d.iterdir()
        if p.name.startswith(".")
        and (".tmp-" in p.name or p.name.endswith(".lock") or ".old-" in p.name)
        and p.name not in w.expected
    ]
    assert not junk, junk


def texts(w: World) -> None:
    (w / "texts").mkdir()
    (w / "texts" / "a.txt").write_text(CORPUS)


def edit_manifest(w: World, change: Callable[[dict], object]) -> None:
    path = w / "fam" / "family.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m, indent=2))


def truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep < len(data) else data[:-1])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def nan_model(w: World, name: str) -> None:
    """A copy of the teacher whose final norm is NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(w / "teacher", w / name)
    f = w / name / "model.safetensors"
    tensors = load_file(f)
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, f, metadata={"format": "pt"})


def custom_class(w: World, name: str, auto_map: bool, arch: str = "MyLlamaForCausalLM") -> None:
    """A copy of the teacher whose config names a class transformers does not ship."""
    shutil.copytree(w / "teacher", w / name)
    cfg = json.loads((w / name / "config.json").read_text())
    cfg["architectures"] = [arch]
    if auto_map:
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_my.MyLlamaForCausalLM"}
    (w / name / "config.json").write_text(json.dumps(cfg))


def strict_json(path: Path, expect_marker: bool = False) -> None:
    """Parses with a parser that refuses NaN/Infinity (as JavaScript's JSON.parse does)."""

    def refuse(x: str):
        raise AssertionError(f"{path} holds bare {x}")

    text = path.read_text()
    json.loads(text, parse_constant=refuse)
    assert ('"finite": false' in text) == expect_marker, text


def break_header(w: World, name: str, kind: str) -> None:
    """A copy of the teacher whose safetensors file is broken in one way."""
    shutil.copytree(w / "teacher", w / name)
    f = w / name / "model.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n]
    if kind == "utf8":
        data = data[:8] + b"\xff" + header[1:] + data[8 + n :]
    elif kind == "json":
        data = data[:8] + b"[" + header[1:] + data[8 + n :]
    elif kind == "cut":
        data = data[: 8 + n // 2]
    elif kind == "data":
        data = data[:-10]
    elif kind in ("dtype", "overlap", "shape"):
        entries = json.loads(header)
        names = sorted((k for k in entries if k != "__metadata__"), key=lambda k: entries[k]["data_offsets"])
        first, second = entries[names[0]], entries[names[1]]
        if kind == "dtype":
            first["dtype"] = "Q7"
        elif kind == "overlap":  # the second tensor reads the first one's bytes
            second["data_offsets"] = [
                first["data_offsets"][0],
                first["data_offsets"][0] + second["data_offsets"][1] - second["data_offsets"][0],
            ]
        else:
            first["shape"] = [first["shape"][0] * 2, *first["shape"][1:]]
        raw = json.dumps(entries).encode()
        raw += b" " * (-len(raw) % 8)
        data = len(raw).to_bytes(8, "little") + raw + data[8 + n :]
    else:
        data = data[:5]
    f.write_bytes(data)


@functools.lru_cache(maxsize=1)
def dead_pid() -> int:
    """The pid of a process that has exited (as a killed run's is)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(w: World, name: str) -> None:
    (w / name).mkdir(parents=True)
    (w / name / "model.safetensors").write_bytes(b"partial")


def scored_on(fragment: str) -> Check:
    """r.json holds a perplexity on a data key ending in ``fragment``."""

    def check(w: World) -> None:
        keys = [k for m in json.loads((w / "r.json").read_text())["models"] for k in m["metrics"]["perplexity"]]
        assert any(k.split("|")[0].endswith(fragment) for k in keys), keys

    return check


def read_only_dir(w: World, name: str) -> None:
    (w / name).mkdir()
    (w / name).chmod(0o555)


def change_unsampled(w: World, name: str = "teacher") -> None:
    """Change one byte of ``name``'s weights that the sampled fingerprint (compose.fingerprint) never reads."""
    from boomerang_cli.tensors import read_header

    f = w / name / "model.safetensors"
    entries, _ = read_header(f)
    e = max(entries.values(), key=lambda e: e.nbytes)
    sampled = {e.begin + (e.nbytes - 64) * j // 15 + k for j in range(16) for k in range(64)}
    off = next(o for o in range(e.begin, e.end) if o not in sampled)
    data = bytearray(f.read_bytes())
    data[off] ^= 0x01
    f.write_bytes(bytes(data))


def state_at(w: World, cwd: str | None = None, env: str | None = None) -> None:
    """Run from ``cwd`` with the default state file, or with ``BOOMERANG_STATE`` set to ``env``
    (the fixture's monkeypatch restores both)."""
    if env is None:
        os.environ.pop("BOOMERANG_STATE", None)
    else:
        os.environ["BOOMERANG_STATE"] = _fill(env, w)
    if cwd is not None:
        os.chdir(w / cwd)


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def enospc(target: str, error: Callable = disk_full) -> Callable[[pytest.MonkeyPatch], None]:
    """The write at ``target`` ("module:attribute") fails as on a full disk."""
    module, attr = target.split(":")
    return lambda m: m.setattr(f"{module}.{attr}", error)


def torch_disk_full(*_args, **_kwargs):
    raise RuntimeError(
        "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: file write failed"
    )


def interrupt_after_rename(name: str) -> Callable[[pytest.MonkeyPatch], None]:
    """Ctrl-C arrives just after the output ``name`` was renamed into place (the signal, not the rename, wins)."""
    real = os.replace

    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if Path(dst).name == name:
            raise KeyboardInterrupt

    return lambda m: m.setattr(os, "replace", replace)


def then_rerun(*args: str, message: str = "") -> Check:
    """Nothing left behind, and the same command run again (no fault now) finishes the job."""

    def check(w: World) -> None:
        no_hidden_leftovers(w)
        r = invoke(*(_fill(a, w) for a in args))
        assert r.exit_code == 0 and message in " ".join(r.output.split()), r.output
        no_hidden_leftovers(w)

    return check


def results_file(w: World, change: Callable[[dict], object]) -> None:
    """r.json as eval writes it, then changed by ``change``."""
    r = invoke("eval", w / "teacher", "-o", w / "r.json", *(_fill(a, w) for a in EVAL))
    assert r.exit_code == 0, r.output
    data = json.loads((w / "r.json").read_text())
    change(data)
    (w / "r.json").write_text(json.dumps(data))


def edit_config(w: World, name: str, text: Callable[[str], str]) -> None:
    """A copy of the teacher whose config.json text is changed by ``text``."""
    shutil.copytree(w / "teacher", w / name)
    f = w / name / "config.json"
    f.write_text(text(f.read_text()))


def nan_field(text: str) -> str:
    cfg = json.loads(text)
    cfg["rms_norm_eps"] = float("nan")
    cfg["max_position_embeddings"] = float("nan")
    return json.dumps(cfg)


def trained(w: World, keep: str = "0,2") -> None:
    """out-checkpoints/ holding step-0000001 of a 2-step run (its output removed, as after a kill)."""
    r = invoke(
        "distill", w / "teacher", "-o", w / "out", *(_fill(a, w) for a in TRAIN2), "--keep", keep, "--keep-checkpoints"
    )
    assert r.exit_code == 0, r.output
    shutil.rmtree(w / "out")
    assert (w / "out-checkpoints" / "step-0000001" / "trainer_state.json").is_file()


def edit_trainer_state(w: World, change: Callable[[dict], object]) -> None:
    path = w / "out-checkpoints" / "step-0000001" / "trainer_state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def resumed_from(step: int) -> Check:
    def check(w: World) -> None:
        assert json.loads((w / "out" / "boomerang.json").read_text())["training"]["resumed_from"] == step
        no_hidden_leftovers(w)

    return check


EVAL = ["--data", "{w}/corpus.txt", "--max-tokens", "32", "--seq-len", "16"]  # one file: validation split
TRAIN = ["--data", "{w}/corpus.txt", "--steps", "1", "--seq-len", "16", "--batch-size", "1", "--save-every", "0"]
TRAIN2 = ["--data", "{w}/corpus.txt", "--steps", "2", "--seq-len", "16", "--batch-size", "1", "--save-every", "1"]
RESUME = ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2, "--keep", "0,2", "--resume"]

CASES: list[Case] = [
    # 1. An output never overlaps an input, whatever --overwrite says.
    Case(
        "distill-o-teacher",
        ["distill", "{w}/teacher", "-o", "{w}/teacher", "--overwrite", *TRAIN],
        2,
        "is the teacher",
        keeps=unchanged("teacher"),
    ),
    Case(
        "distill-o-parent-of-teacher",
        ["distill", "{w}/teacher", "-o", "{w}", "--overwrite", *TRAIN],
        2,
        "contains the teacher",
        keeps=unchanged("teacher", "student", "fam"),
    ),
    Case(
        "distill-o-student",
        ["distill", "--student", "{w}/student", "-o", "{w}/student", "--overwrite", *TRAIN],
        2,
        "is the student",
        keeps=unchanged("student"),
    ),
    Case(
        "distill-o-inside-teacher",
        ["distill", "{w}/teacher", "-o", "{w}/teacher/sub", *TRAIN],
        2,
        "is inside the teacher",
        keeps=unchanged("teacher"),
    ),
    Case(
        "distill-o-data-file",
        ["distill", "{w}/teacher", "-o", "{w}/corpus.txt", "--overwrite", *TRAIN],
        2,
        "not a writable directory",
        keeps=unchanged("corpus.txt"),
    ),
    Case(
        "distill-o-data-dir",
        ["distill", "{w}/teacher", "-o", "{w}/texts", "--overwrite", *TRAIN, "--data", "{w}/texts"],
        2,
        "the data source",
        setup=lambda w: texts(w),
        keeps=unchanged("texts"),
    ),
    Case(
        "distill-checkpoint-dir-teacher",
        ["distill", "{w}/teacher", "-o", "{w}/out", "--checkpoint-dir", "{w}/teacher", *TRAIN],
        2,
        "--checkpoint-dir",
        keeps=unchanged("teacher"),
    ),
    Case(
        "distill-ok",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN],
        0,
        "distilled",
        after=lambda w: (present("out/model.safetensors", "out/boomerang.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "export-o-family",
        ["export", "{w}/fam", "-o", "{w}/fam", "--type", "f32", "--overwrite"],
        2,
        "is the family",
        keeps=unchanged("fam"),
    ),
    Case(
        "export-o-teacher",
        ["export", "{w}/fam", "-o", "{w}/teacher", "--type", "f32", "--overwrite"],
        2,
        "is the teacher",
        keeps=unchanged("teacher"),
    ),
    Case(
        "export-ok",
        ["export", "{w}/fam", "-o", "{w}/gg", "--type", "f32"],
        0,
        "export.json",
        after=lambda w: (present("gg/export.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "init-student-o-teacher",
        ["init-student", "{w}/teacher", "-o", "{w}/teacher", "--overwrite"],
        2,
        "is the teacher",
        keeps=unchanged("teacher"),
    ),
    Case(
        "init-student-o-parent",
        ["init-student", "{w}/teacher", "-o", "{w}", "--overwrite"],
        2,
        "contains the teacher",
        keeps=unchanged("teacher"),
    ),
    Case(
        "init-student-nonempty",
        ["init-student", "{w}/teacher", "-o", "{w}/fam"],
        2,
        "--overwrite",
        keeps=unchanged("fam"),
    ),
    Case(
        "init-student-ok",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        0,
        "written to",
        after=lambda w: (present("s2/boomerang.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "family-o-parent",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}", "--all", "--overwrite"],
        2,
        "contains the teacher",
        keeps=unchanged("teacher", "student"),
    ),
    Case(
        "family-o-student",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/student", "--all", "--overwrite"],
        2,
        "is the student",
        keeps=unchanged("student"),
    ),
    Case(
        "family-o-calib-data",
        [
            "family",
            "{w}/teacher",
            "{w}/student",
            "-o",
            "{w}/corpus.txt",
            "--all",
            "--order",
            "kl-greedy",
            "--calib-data",
            "{w}/corpus.txt",
            "--overwrite",
        ],
        2,
        "the data source",
        keeps=unchanged("corpus.txt"),
    ),
    # 1b. Resume continues the checkpoint's trajectory or refuses, naming what differs; never starts over.
    Case(
        "resume-latest-pointer-missing",
        RESUME,
        0,
        "distilled",
        setup=lambda w: (trained(w), (w / "out-checkpoints" / "latest").unlink()),
        after=resumed_from(1),
    ),
    Case(
        "no-resume-latest-pointer-missing",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2, "--keep", "0,2"],
        2,
        "holds checkpoints of an earlier run",
        setup=lambda w: (trained(w), (w / "out-checkpoints" / "latest").unlink()),
        keeps=unchanged("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "resume-no-complete-step",
        RESUME,
        2,
        "holds no complete checkpoint",
        setup=lambda w: (trained(w), (w / "out-checkpoints" / "step-0000001" / "state.pt").unlink()),
        keeps=unchanged("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "resume-other-teacher-same-shapes",
        [*RESUME[:1], "{w}/t2", *RESUME[2:]],
        2,
        "teacher (",
        setup=lambda w: (trained(w), shutil.copytree(w / "teacher", w / "t2"), perturb_saved(w / "t2", seed=9)),
        keeps=unchanged("out-checkpoints", "t2"),
        after=absent("out"),
    ),
    Case(
        "resume-teacher-changed-in-place",
        RESUME,
        2,
        "teacher (",
        setup=lambda w: (trained(w), flip_byte(w / "teacher" / "model.safetensors")),
        keeps=unchanged("out-checkpoints", "teacher"),
        after=absent("out"),
    ),
    Case(
        "resume-other-plan-same-depth",
        [*RESUME[:-3], "--keep", "0,1", "--resume"],
        2,
        "plan (--keep 0,1, the checkpoint's 0,2)",
        setup=lambda w: trained(w),
        keeps=unchanged("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "resume-data-changed-in-place",
        RESUME,
        2,
        "data (",
        setup=lambda w: (trained(w), (w / "corpus.txt").write_text(CORPUS.replace("fox", "cat"))),
        keeps=unchanged("out-checkpoints", "corpus.txt"),
        after=absent("out"),
    ),
    Case(
        "resume-data-touched-resumes",
        RESUME,
        0,
        "distilled",
        setup=lambda w: (trained(w), os.utime(w / "corpus.txt")),
        after=resumed_from(1),
    ),
    Case(
        "resume-trainer-state-list",
        RESUME,
        2,
        "trainer_state.json: not a JSON object",
        setup=lambda w: (trained(w), (w / "out-checkpoints" / "step-0000001" / "trainer_state.json").write_text("[]")),
        keeps=unchanged("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "resume-trainer-state-step-string",
        RESUME,
        2,
        "step should be int, not str",
        setup=lambda w: (trained(w), edit_trainer_state(w, lambda st: st.update(step="1"))),
        keeps=unchanged("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "distill-o-nonempty",
        ["distill", "{w}/teacher", "-o", "{w}/fam", *TRAIN],
        2,
        "--overwrite",
        keeps=unchanged("fam"),
    ),
    # 2. One writer per output: a second run is refused at once, naming the holder.
    Case(
        "family-locked",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        2,
        "being written by another boomerang run (pid",
        setup=lambda w: w.hold_lock("fam"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-family-locked",
        ["eval", "{w}/fam", "--data", "{w}/corpus.txt", "--max-tokens", "32", "--seq-len", "16"],
        2,
        "being written by another",
        setup=lambda w: w.hold_lock("fam"),
        keeps=unchanged("fam"),
    ),
    Case(
        "distill-locked",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN],
        2,
        "being written by another",
        setup=lambda w: w.hold_lock("out"),
        after=absent("out"),
    ),
    Case(
        "distill-checkpoint-dir-locked",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN],
        2,
        "out-checkpoints is being written by another",
        setup=lambda w: w.hold_lock("out-checkpoints"),
        after=absent("out"),
    ),
    Case(
        "export-locked",
        ["export", "{w}/fam", "-o", "{w}/gg", "--type", "f32"],
        2,
        "being written by another",
        setup=lambda w: w.hold_lock("gg"),
        after=absent("gg"),
    ),
    Case(
        "init-student-locked",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        2,
        "being written by another",
        setup=lambda w: w.hold_lock("s2"),
        after=absent("s2"),
    ),
    Case(
        "eval-o-locked",
        [
            "eval",
            "{w}/teacher",
            "-o",
            "{w}/r.json",
            "--data",
            "{w}/corpus.txt",
            "--max-tokens",
            "32",
            "--seq-len",
            "16",
        ],
        2,
        "being written by another",
        setup=lambda w: w.hold_lock("r.json"),
        after=absent("r.json"),
    ),
    Case(
        "family-other-output-not-locked",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam2", "--all"],
        0,
        "1 written",
        setup=lambda w: w.hold_lock("fam"),
        after=present("fam2/family.json"),
    ),
    # 2b. Every written path passes the guard: plots, the remembered state, locks, a second output.
    Case(
        "eval-plot-inside-teacher",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL, "--plot", "{w}/teacher/p.png"],
        2,
        "--plot {w}/teacher/p.png is inside the model",
        keeps=unchanged("teacher"),
        after=absent("r.json"),
    ),
    Case(
        "eval-family-plot-inside-member",
        ["eval", "{w}/fam", *EVAL, "--plot", "{w}/fam/member-03L/p.png"],
        2,
        "is inside the member member-03L",
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-family-plot-inside-teacher",
        ["eval", "{w}/fam", *EVAL, "--plot", "{w}/teacher/p.png"],
        2,
        "is inside the teacher",
        keeps=unchanged("fam", "teacher"),
    ),
    Case(
        "eval-o-fifo",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "exists and is not a regular file",
        setup=lambda w: os.mkfifo(w / "r.json"),
    ),
    Case(
        "state-not-written-inside-teacher",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        0,
        "not remembering this step",
        setup=lambda w: state_at(w, cwd="teacher"),
        keeps=unchanged("teacher"),
        after=present("s2/boomerang.json"),
    ),
    Case(
        "state-not-written-inside-family",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        0,
        "not remembering this step",
        setup=lambda w: state_at(w, cwd="fam"),
        after=absent("fam/.boomerang"),
    ),
    Case(
        "state-not-written-inside-teacher-distill",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN],
        0,
        "not remembering this step",
        setup=lambda w: state_at(w, cwd="teacher"),
        keeps=unchanged("teacher"),
        after=present("out/boomerang.json"),
    ),
    Case(
        "state-under-a-regular-file-init",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        0,
        "not remembering this step",
        setup=lambda w: state_at(w, env="{w}/corpus.txt/state.json"),
        keeps=unchanged("corpus.txt"),
        after=present("s2/boomerang.json"),
    ),
    Case(
        "state-under-a-regular-file-family",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam2", "--all"],
        0,
        "not remembering this step",
        setup=lambda w: state_at(w, env="{w}/corpus.txt/state.json"),
        keeps=unchanged("corpus.txt"),
        after=present("fam2/family.json"),
    ),
    Case(
        "lock-keyed-by-the-whole-name",
        ["init-student", "{w}/teacher", "-o", "{w}/" + "n" * 210 + "b"],
        0,
        "written to",
        setup=lambda w: w.hold_lock("n" * 210 + "a"),
        after=present("n" * 210 + "b/boomerang.json"),
    ),
    Case(
        "distill-checkpoint-dir-is-output",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--checkpoint-dir", "{w}/out"],
        2,
        "--checkpoint-dir {w}/out is -o {w}/out",
        after=lambda w: (absent("out")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "distill-checkpoint-dir-inside-output",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--checkpoint-dir", "{w}/out/ck"],
        2,
        "--checkpoint-dir {w}/out/ck is inside -o {w}/out",
        after=lambda w: (absent("out")(w), no_hidden_leftovers(w)),
    ),
    # 6. A full disk is one line, exit 2, nothing left; an interrupt at the final rename leaves nothing either.
    Case(
        "distill-disk-full-checkpoint",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2],
        2,
        "cannot write checkpoint",
        patch=enospc("torch:save", torch_disk_full),
        after=lambda w: (
            absent("out", "out-checkpoints")(w),
            then_rerun("distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2, message="distilled")(w),
        ),
    ),
    Case(
        "distill-disk-full-output",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN],
        2,
        "the disk is full",
        patch=enospc("transformers.PreTrainedModel:save_pretrained"),
        after=lambda w: (
            absent("out", "out-checkpoints")(w),
            then_rerun("distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, message="distilled")(w),
        ),
    ),
    Case(
        "distill-disk-full-output-resumes",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2],
        2,
        "the disk is full",
        patch=enospc("transformers.PreTrainedModel:save_pretrained"),
        after=lambda w: (
            absent("out")(w),
            then_rerun("distill", "{w}/teacher", "-o", "{w}/out", *TRAIN2, "--resume", message="resumed at 1")(w),
        ),
    ),
    Case(
        "eval-disk-full",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "the disk is full",
        patch=enospc("boomerang_cli.atomic:_write"),
        after=lambda w: (absent("r.json")(w), then_rerun("eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL)(w)),
    ),
    Case(
        "eval-family-disk-full",
        ["eval", "{w}/fam", *EVAL],
        2,
        "the disk is full",
        patch=enospc("boomerang_cli.atomic:_write"),
        keeps=unchanged("fam"),
        after=then_rerun("eval", "{w}/fam", *EVAL, message="results written"),
    ),
    Case(
        "eval-removes-dead-tmp",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        0,
        "results written",
        setup=lambda w: (w / f".r.json.tmp-{dead_pid()}-abc").write_text("{"),
        after=no_hidden_leftovers,
    ),
    Case(
        "family-removes-dead-manifest-tmp",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        0,
        "reused",
        setup=lambda w: (w / "fam" / f".family.json.tmp-{dead_pid()}-x").write_text("{"),
        after=no_hidden_leftovers,
    ),
    Case(
        "init-student-interrupted-at-rename",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        130,
        "interrupted",
        patch=interrupt_after_rename("s2"),
        after=lambda w: (
            absent("s2")(w),
            then_rerun("init-student", "{w}/teacher", "-o", "{w}/s2", message="written to")(w),
        ),
    ),
    Case(
        "export-interrupted-at-rename",
        ["export", "{w}/fam", "-o", "{w}/gg", "--type", "f32"],
        130,
        "interrupted",
        patch=interrupt_after_rename("gg"),
        keeps=unchanged("fam"),
        after=lambda w: (
            absent("gg")(w),
            then_rerun("export", "{w}/fam", "-o", "{w}/gg", "--type", "f32", message="export.json")(w),
        ),
    ),
    # 7. The last tracebacks: a results file, a config or a calibration length of the wrong shape.
    Case(
        "eval-o-models-not-a-list",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "models should be a list",
        setup=lambda w: results_file(w, lambda d: d.update(models={"a": 1})),
        keeps=unchanged("r.json"),
    ),
    Case(
        "eval-o-metrics-a-string",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "metrics should be an object",
        setup=lambda w: results_file(w, lambda d: d["models"][0].update(metrics="x")),
        keeps=unchanged("r.json"),
    ),
    Case(
        "eval-o-model-not-an-object",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "should be an object",
        setup=lambda w: results_file(w, lambda d: d.update(models=[1])),
        keeps=unchanged("r.json"),
    ),
    Case(
        "eval-o-v1-record-gone-bad",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        2,
        "perplexity should be an object",
        setup=lambda w: results_file(
            w, lambda d: (d.update(schema_version=1), d["models"][0].update(metrics={"perplexity": [1, 2]}))
        ),
        keeps=unchanged("r.json"),
    ),
    Case(
        "init-student-config-nan",
        ["init-student", "{w}/bad", "-o", "{w}/s2"],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", nan_field),
        after=absent("s2"),
        keeps=unchanged("bad"),
    ),
    Case(
        "eval-config-nan",
        ["eval", "{w}/bad", "-o", "{w}/r.json", *EVAL],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", nan_field),
        after=absent("r.json"),
        keeps=unchanged("bad"),
    ),
    Case(
        "distill-config-nan",
        ["distill", "{w}/bad", "-o", "{w}/out", *TRAIN],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", nan_field),
        after=absent("out"),
        keeps=unchanged("bad"),
    ),
    Case(
        "init-student-config-truncated",
        ["init-student", "{w}/bad", "-o", "{w}/s2"],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", lambda t: t[: len(t) // 2]),
        after=absent("s2"),
        keeps=unchanged("bad"),
    ),
    Case(
        "eval-config-truncated",
        ["eval", "{w}/bad", "-o", "{w}/r.json", *EVAL],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", lambda t: t[: len(t) // 2]),
        after=absent("r.json"),
    ),
    Case(
        "family-config-truncated",
        ["family", "{w}/bad", "{w}/student", "-o", "{w}/fam2", "--all"],
        2,
        "config.json",
        setup=lambda w: edit_config(w, "bad", lambda t: t[: len(t) // 2]),
        after=absent("fam2"),
    ),
    Case(
        "family-calib-seq-len-past-positions",
        [
            "family",
            "{w}/teacher",
            "{w}/student",
            "-o",
            "{w}/fam2",
            "--all",
            "--order",
            "kl-greedy",
            "--calib-data",
            "{w}/corpus.txt",
            "--calib-seq-len",
            "100000",
        ],
        2,
        "--calib-seq-len 100000",
        after=absent("fam2"),
    ),
    # 3. Data and plans: nothing silently trained or evaluated on something else than asked.
    Case(
        "distill-empty-file",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/empty.txt"],
        2,
        "empty.txt: empty file",
        setup=lambda w: (w / "empty.txt").write_text(""),
        after=absent("out"),
    ),
    Case(
        "distill-blank-file",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/blank.txt"],
        2,
        "no documents",
        setup=lambda w: (w / "blank.txt").write_text("\n  \n\n"),
        after=absent("out"),
    ),
    Case(
        "distill-binary-file",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/teacher/model.safetensors"],
        2,
        "model.safetensors: binary data",
        after=absent("out"),
    ),
    Case(
        "distill-binary-in-dir",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/texts"],
        2,
        "b.txt: binary data",
        setup=lambda w: (texts(w), (w / "texts" / "b.txt").write_bytes(b"ab\0cd" * 50)),
        after=absent("out"),
    ),
    Case(
        "distill-latin1",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/l1.txt"],
        2,
        "l1.txt: not UTF-8",
        setup=lambda w: (w / "l1.txt").write_bytes("caf\u00e9 ".encode("latin-1") * 200),
        after=absent("out"),
    ),
    Case(
        "distill-jsonl-not-utf8",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/d.jsonl"],
        2,
        "not UTF-8",
        setup=lambda w: (w / "d.jsonl").write_bytes(b'{"text": "caf\xe9"}\n' * 300),
        after=absent("out"),
    ),
    Case(
        "distill-missing-data",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", "{w}/nope.txt"],
        2,
        "no such file",
        after=absent("out"),
    ),
    Case(
        "distill-data-weights-count",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--data-weights", "1,1"],
        2,
        "gives 2 weights for 1 --data sources",
        after=absent("out"),
    ),
    Case(
        "distill-data-weights-zero",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--data", "stdlib-docs", "--data-weights", "1,0"],
        2,
        "--data-weights must be numbers > 0",
        after=absent("out"),
    ),
    Case(
        "distill-data-weights-not-numbers",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--data-weights", "half"],
        2,
        "cannot read --data-weights 'half'",
        after=absent("out"),
    ),
    Case(
        "distill-mix-not-a-probability",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--mix", "1.5"],
        2,
        "--mix must be a probability in [0, 1]",
        after=absent("out"),
    ),
    Case(
        "distill-mix-with-fsdp",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--mix", "0.5", "--fsdp"],
        2,
        "--fsdp/--shard cannot shard",
        after=absent("out"),
    ),
    Case(
        "demo-prose-missing",
        ["demo", "-o", "{w}/demo", "--teacher", "{w}/teacher", "--prose-data", "{w}/nope.txt"],
        2,
        "--prose-data",
        after=absent("demo"),
    ),
    Case(
        "demo-data-weights-count",
        ["demo", "-o", "{w}/demo", "--teacher", "{w}/teacher", "--data-weights", "1,2,3"],
        2,
        "gives 3 weights for 2 --data sources",
        after=absent("demo"),
    ),
    Case(
        "demo-data-weights-one-source",
        ["demo", "-o", "{w}/demo", "--teacher", "{w}/teacher", "--data", "stdlib", "--data-weights", "1,3"],
        2,
        "gives 2 weights for 1 --data sources",
        after=absent("demo"),
    ),
    Case(
        "demo-mix-negative",
        ["demo", "-o", "{w}/demo", "--teacher", "{w}/teacher", "--mix=-0.5"],
        2,
        "--mix must be a probability",
        after=absent("demo"),
    ),
    Case(
        "eval-binary-data",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL[2:], "--data", "{w}/teacher/model.safetensors"],
        2,
        "binary data",
        after=absent("r.json"),
    ),
    Case(
        "eval-empty-data",
        ["eval", "{w}/fam", *EVAL[2:], "--data", "{w}/empty.txt"],
        2,
        "empty file",
        setup=lambda w: (w / "empty.txt").write_text(""),
        keeps=unchanged("fam"),
    ),
    Case(
        "family-calib-binary",
        [
            "family",
            "{w}/teacher",
            "{w}/student",
            "-o",
            "{w}/fam2",
            "--all",
            "--order",
            "kl-greedy",
            "--calib-data",
            "{w}/teacher/model.safetensors",
        ],
        2,
        "binary data",
        after=absent("fam2"),
    ),
    Case(
        "keep-empty",
        ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", ""],
        2,
        "--keep is empty",
        after=absent("s2"),
    ),
    Case(
        "keep-backwards-range",
        ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", "0,2-1"],
        2,
        "runs backwards",
        after=absent("s2"),
    ),
    Case(
        "keep-not-a-number",
        ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", "0,x"],
        2,
        "is not a layer index",
        after=absent("s2"),
    ),
    Case(
        "keep-no-zero",
        ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", "1,2"],
        2,
        "start at 0",
        after=absent("s2"),
    ),
    Case(
        "keep-out-of-range", ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", "0,9"], 2, "", after=absent("s2")
    ),
    Case(
        "distill-keep-empty",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN, "--keep", ""],
        2,
        "--keep is empty",
        after=absent("out"),
    ),
    Case(
        "family-keep-backwards",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam2", "--all", "--keep", "0,3-2"],
        2,
        "runs backwards",
        after=absent("fam2"),
    ),
    Case(
        "init-student-keep-range-ok",
        ["init-student", "{w}/teacher", "-o", "{w}/s2", "--keep", "0-1,3"],
        0,
        "3 of 4 layers kept",
        after=present("s2/boomerang.json"),
    ),
    # 4. eval records results only for member directories the manifest describes.
    Case(
        "eval-member-missing",
        ["eval", "{w}/fam", *EVAL],
        2,
        "member member-03L of",
        setup=lambda w: shutil.rmtree(w / "fam" / "member-03L"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-member-path-outside",
        ["eval", "{w}/fam", *EVAL],
        2,
        "outside the family directory",
        setup=lambda w: edit_manifest(w, lambda m: m["members"][0].update(path="../../etc")),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-member-symlink",
        ["eval", "{w}/fam", *EVAL],
        2,
        "outside the family directory",
        setup=lambda w: (shutil.rmtree(w / "fam" / "member-03L"), (w / "fam" / "member-03L").symlink_to(w / "teacher")),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-member-truncated",
        ["eval", "{w}/fam", *EVAL],
        2,
        "bytes, the manifest says",
        setup=lambda w: truncate(w / "fam" / "member-03L" / "model.safetensors"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-member-changed-verify",
        ["eval", "{w}/fam", "--verify", *EVAL],
        2,
        "does not match its recorded checksum",
        setup=lambda w: flip_byte(w / "fam" / "member-03L" / "model.safetensors"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-member-changed-cheap",
        ["eval", "{w}/fam", *EVAL],
        0,
        "results written",  # sizes only: use --verify
        setup=lambda w: flip_byte(w / "fam" / "member-03L" / "model.safetensors"),
    ),
    Case(
        "eval-members-leave-out-missing",
        ["eval", "{w}/fam", "--members", "student,teacher", *EVAL],
        0,
        "results written",
        setup=lambda w: shutil.rmtree(w / "fam" / "member-03L"),
    ),
    Case(
        "eval-family-verify-ok", ["eval", "{w}/fam", "--verify", *EVAL], 0, "results written", after=no_hidden_leftovers
    ),
    # 4b. Teacher and student are checked by content (recorded per-file digests), not by sampled bytes.
    Case(
        "family-rerun-teacher-changed-unsampled",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        2,
        "another teacher (",
        setup=change_unsampled,
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-family-teacher-changed-unsampled",
        ["eval", "{w}/fam", *EVAL],
        2,
        "model.safetensors differs in content); restore it",
        setup=change_unsampled,
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-family-student-changed-unsampled",
        ["eval", "{w}/fam", *EVAL],
        2,
        "differs in content",
        setup=lambda w: change_unsampled(w, "student"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-manifest-embed-from-elsewhere",
        ["eval", "{w}/fam", *EVAL],
        2,
        "has embed_from 'elsewhere'",
        setup=lambda w: edit_manifest(w, lambda m: m["members"][0].update(embed_from="elsewhere")),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-manifest-head-from-swapped",
        ["eval", "{w}/fam", *EVAL],
        2,
        "has head_from",
        setup=lambda w: edit_manifest(
            w,
            lambda m: m["members"][0].update(
                head_from="teacher" if m["members"][0]["head_from"] == "student" else "student"
            ),
        ),
        keeps=unchanged("fam"),
    ),
    Case(
        "family-rerun-touched-teacher-reuses",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        0,
        "reused",
        setup=lambda w: os.utime(w / "teacher" / "model.safetensors"),
        keeps=unchanged("fam/member-03L"),
        after=no_hidden_leftovers,
    ),
    # 5. Strict JSON: NaN weights give null perplexities, marked, never bare NaN.
    Case(
        "eval-nan-model-strict-json",
        ["eval", "{w}/nan", "-o", "{w}/r.json", "--json", *EVAL],
        0,
        '"finite": false',
        setup=lambda w: nan_model(w, "nan"),
        after=lambda w: strict_json(w / "r.json", expect_marker=True),
    ),
    Case(
        "family-json-is-strict",
        ["eval", "{w}/fam", *EVAL],
        0,
        "results written",
        after=lambda w: strict_json(w / "fam" / "family.json"),
    ),
    # 7. NaN weights are named as such, not blamed on the architecture (or on --lr).
    Case(
        "distill-nan-teacher",
        ["distill", "{w}/nan", "-o", "{w}/out", *TRAIN],
        2,
        "holds NaN or infinite values",
        setup=lambda w: nan_model(w, "nan"),
        after=absent("out"),
    ),
    # 6. Broken files and manifests: one line, exit 2, never a traceback, nothing written.
    *[
        Case(
            f"{cmd}-header-{kind}",
            [*args, *extra],
            2,
            msg,
            setup=lambda w, k=kind: break_header(w, "bad", k),
            after=absent("s2", "fam2", "r.json", "out"),
            keeps=unchanged("bad"),
        )
        for kind, msg in (
            ("utf8", "header is not UTF-8"),
            ("json", "header is not JSON"),
            ("cut", "ends inside its"),
            ("data", "truncated:"),
            ("short", "truncated header"),
            ("dtype", "has dtype 'Q7'"),
            ("overlap", "overlaps"),
            ("shape", "but its data_offsets span"),
        )
        for cmd, args, extra in (
            ("init-student", ["init-student", "{w}/bad", "-o", "{w}/s2"], []),
            ("family", ["family", "{w}/bad", "{w}/student", "-o", "{w}/fam2", "--all"], []),
            ("eval", ["eval", "{w}/bad", "-o", "{w}/r.json"], EVAL),
            ("distill", ["distill", "{w}/bad", "-o", "{w}/out"], TRAIN),
            ("distill-student", ["distill", "{w}/teacher", "--student", "{w}/bad", "-o", "{w}/out"], TRAIN),
        )
    ],
    Case(
        "index-not-json",
        ["init-student", "{w}/bad", "-o", "{w}/s2"],
        2,
        "not a valid safetensors index",
        setup=lambda w: (
            shutil.copytree(w / "teacher", w / "bad"),
            (w / "bad" / "model.safetensors.index.json").write_text("{"),
        ),
        after=absent("s2"),
    ),
    Case(
        "eval-manifest-wrong-type",
        ["eval", "{w}/fam", *EVAL],
        2,
        "should be int",
        setup=lambda w: edit_manifest(w, lambda m: m["members"][0].update(num_params="12M")),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-manifest-metrics-not-object",
        ["eval", "{w}/fam", *EVAL],
        2,
        "metrics should be",
        setup=lambda w: edit_manifest(w, lambda m: m["teacher"].update(metrics=[1])),
        keeps=unchanged("fam"),
    ),
    Case(
        "family-rerun-wrong-type",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        2,
        "--overwrite",
        setup=lambda w: edit_manifest(w, lambda m: m.update(forced_reasons="x")),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-manifest-not-json",
        ["eval", "{w}/fam/family.json", *EVAL],
        2,
        "not valid JSON",
        setup=lambda w: (w / "fam" / "family.json").write_text("{"),
        keeps=unchanged("fam"),
    ),
    Case(
        "eval-incomplete-family",
        ["eval", "{w}/fam", *EVAL],
        2,
        "incomplete",
        setup=lambda w: edit_manifest(w, lambda m: m.update(complete=False)),
        keeps=unchanged("fam"),
    ),
    # 7/8. Leftovers of killed runs are removed by the next run; a live run's are not.
    Case(
        "init-student-removes-dead-tmp",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        0,
        "written to",
        setup=lambda w: leftover(w, f".s2.tmp-{dead_pid()}-abc"),
        after=lambda w: no_hidden_leftovers(w),
    ),
    Case(
        "init-student-keeps-live-tmp",
        ["init-student", "{w}/teacher", "-o", "{w}/s2"],
        0,
        "written to",
        setup=lambda w: leftover(w, ".s2.tmp-1-abc"),
        after=present(".s2.tmp-1-abc"),
        leftovers=True,
    ),
    Case(
        "family-removes-dead-member-siblings",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        0,
        "reused",
        setup=lambda w: (
            leftover(w, f"fam/.member-03L.old-{dead_pid()}"),
            leftover(w, f"fam/.member-03L.tmp-{dead_pid()}-x"),
        ),
        after=no_hidden_leftovers,
    ),
    # 9. A custom class over a known model type is refused as what it is, not as "not a causal LM".
    Case(
        "init-student-custom-class",
        ["init-student", "{w}/custom", "-o", "{w}/s2"],
        2,
        "is a custom class, not transformers' LlamaForCausalLM",
        setup=lambda w: custom_class(w, "custom", False),
        after=absent("s2"),
        keeps=unchanged("custom"),
    ),
    Case(
        "init-student-remote-code-class",
        ["init-student", "{w}/custom", "-o", "{w}/s2"],
        2,
        "pass --trust-remote-code",
        setup=lambda w: custom_class(w, "custom", True),
        after=absent("s2"),
        keeps=unchanged("custom"),
    ),
    Case(
        "init-student-masked-lm-still-refused",
        ["init-student", "{w}/custom", "-o", "{w}/s2"],
        2,
        "not a causal language model",
        setup=lambda w: custom_class(w, "custom", False, "MyLlamaForMaskedLM"),
        after=absent("s2"),
    ),
    # 7. Messages are plain text (no rich markup or emoji), long names are fine, too long ones exit 2.
    Case(
        "message-keeps-brackets-and-colons",
        ["init-student", "{w}/teacher", "-o", "{w}/a[bold]b:train:"],
        2,
        "a[bold]b:train: exists and is not empty",
        setup=lambda w: leftover(w, "a[bold]b:train:/x"),
    ),
    Case(
        "init-student-o-closing-tag",
        ["init-student", "{w}/teacher", "-o", "{w}/x[/bold]"],
        0,
        "{w}/x[/bold]",
        after=lambda w: (present("x[/bold]/boomerang.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "init-student-o-bold-tags",
        ["init-student", "{w}/teacher", "-o", "{w}/[bold]x[/bold]"],
        0,
        "written to {w}/[bold]x[/bold]",
        after=present("[bold]x[/bold]/boomerang.json"),
    ),
    Case(
        "init-student-o-emoji-code",
        ["init-student", "{w}/teacher", "-o", "{w}/a:train:b"],
        0,
        "written to {w}/a:train:b",
        after=present("a:train:b/boomerang.json"),
    ),
    Case(
        "init-student-teacher-named-tag",
        ["init-student", "{w}/t[/b]", "-o", "{w}/s2"],
        0,
        "t[/b]",
        setup=lambda w: shutil.copytree(w / "teacher", w / "t[/b]"),
        after=present("s2/boomerang.json"),
    ),
    Case(
        "distill-o-closing-tag",
        ["distill", "{w}/teacher", "-o", "{w}/x[/bold]", *TRAIN],
        0,
        "x[/bold]",
        after=present("x[/bold]/boomerang.json"),
    ),
    Case(
        "distill-teacher-named-tag",
        ["distill", "{w}/t[/b]", "-o", "{w}/out", *TRAIN],
        0,
        "t[/b]",
        setup=lambda w: shutil.copytree(w / "teacher", w / "t[/b]"),
        after=present("out/boomerang.json"),
    ),
    Case(
        "family-o-closing-tag",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/f[/b]", "--all"],
        0,
        "1 written",
        after=present("f[/b]/family.json"),
    ),
    Case(
        "eval-teacher-named-tag",
        ["eval", "{w}/t[/b]", "-o", "{w}/r[/b].json", *EVAL],
        0,
        "results written to {w}/r[/b].json",
        setup=lambda w: shutil.copytree(w / "teacher", w / "t[/b]"),
        after=present("r[/b].json"),
    ),
    Case(
        "export-o-closing-tag",
        ["export", "{w}/fam", "-o", "{w}/g[/b]", "--type", "f32"],
        0,
        "g[/b]",
        after=present("g[/b]/export.json"),
    ),
    Case(
        "eval-o-emoji-code",
        ["eval", "{w}/teacher", "-o", "{w}/r:train:.json", *EVAL],
        0,
        "results written to {w}/r:train:.json",
        after=present("r:train:.json"),
    ),
    Case(
        "family-teacher-named-tag",
        ["family", "{w}/t[/b]", "{w}/student", "-o", "{w}/fam2", "--all"],
        0,
        "1 written",
        setup=lambda w: shutil.copytree(w / "teacher", w / "t[/b]"),
        after=present("fam2/family.json"),
    ),
    Case(
        "eval-family-named-tag",
        ["eval", "{w}/f[b]", *EVAL],
        0,
        "results written to {w}/f[b]/family.json",
        setup=lambda w: shutil.copytree(w / "fam", w / "f[b]"),
    ),
    Case(
        "distill-student-named-tag",
        ["distill", "{w}/teacher", "--student", "{w}/s[/i]", "-o", "{w}/out", *TRAIN],
        0,
        "written to {w}/out",
        setup=lambda w: shutil.copytree(w / "student", w / "s[/i]"),
        after=present("out/boomerang.json"),
    ),
    Case(
        "eval-o-not-utf8-name",
        ["eval", "{w}/teacher", "-o", os.fsdecode(b"{w}/r\xff.json"), *EVAL],
        0,
        "results written to {w}/r\\xff.json",
        after=present(os.fsdecode(b"r\xff.json")),
    ),
    Case(
        "distill-data-not-utf8-name",
        ["distill", "{w}/teacher", "-o", "{w}/out", *TRAIN[2:], "--data", os.fsdecode(b"{w}/c\xff.txt")],
        0,
        "distilled",
        setup=lambda w: shutil.copy(w / "corpus.txt", w.root / os.fsdecode(b"c\xff.txt")),
        after=present("out/boomerang.json"),
    ),
    Case(
        "eval-data-not-utf8-name",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL[2:], "--data", os.fsdecode(b"{w}/c\xff.txt")],
        0,
        "results written",
        setup=lambda w: shutil.copy(w / "corpus.txt", w.root / os.fsdecode(b"c\xff.txt")),
        after=present("r.json"),
    ),
    Case(
        "init-student-o-not-utf8-name",
        ["init-student", "{w}/teacher", "-o", os.fsdecode(b"{w}/s\xff")],
        0,
        "written to {w}/s\\xff",
        after=lambda w: (present(os.fsdecode(b"s\xff") + "/boomerang.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "init-student-o-not-utf8-refused",
        ["init-student", "{w}/teacher", "-o", os.fsdecode(b"{w}/s\xff")],
        2,
        "s\\xff exists and is not empty",
        setup=lambda w: leftover(w, os.fsdecode(b"s\xff") + "/x"),
    ),
    Case(
        "output-name-250-chars",
        ["init-student", "{w}/teacher", "-o", "{w}/" + "n" * 250],
        0,
        "written to",
        after=lambda w: (present("n" * 250 + "/boomerang.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "output-name-too-long",
        ["init-student", "{w}/teacher", "-o", "{w}/" + "n" * 300],
        2,
        "too long",
        after=no_hidden_leftovers,
    ),
    # 8. A user's own single evaluation file has a held-out part; --split all takes all of it.
    Case(
        "eval-single-file-validation",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        0,
        "results written",
        after=scored_on("corpus.txt:validation"),
    ),
    Case(
        "eval-single-file-all",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL, "--split", "all"],
        0,
        "results written",
        after=scored_on("corpus.txt:all"),
    ),
    Case(
        "eval-paragraph-file",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL[2:], "--data", "{w}/p.txt"],
        0,
        "results written",
        setup=lambda w: (w / "p.txt").write_text("\n\n".join(CORPUS.splitlines()[:40])),
        after=scored_on("p.txt:validation"),
    ),
    Case(
        "eval-one-word-validation",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL[2:], "--data", "{w}/one.txt", "--split", "validation"],
        2,
        "too short to hold out a validation part (its last 2% must start at a line or word boundary); pass --split all",
        setup=lambda w: (w / "one.txt").write_text("oneword\n"),
        after=absent("r.json"),
    ),
    Case(
        "eval-bad-split",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL, "--split", "test"],
        2,
        "use validation (held out), train or all",
        after=absent("r.json"),
    ),
    # 7. eval -o is checked before any evaluation (results are never computed only to be lost).
    Case(
        "eval-o-directory", ["eval", "{w}/teacher", "-o", "{w}/fam", *EVAL], 2, "is a directory", keeps=unchanged("fam")
    ),
    Case(
        "eval-o-not-results",
        ["eval", "{w}/teacher", "-o", "{w}/notes.json", *EVAL],
        2,
        "not valid JSON",
        setup=lambda w: (w / "notes.json").write_text("hello"),
        keeps=unchanged("notes.json"),
    ),
    *(
        []
        if os.geteuid() == 0
        else [  # root writes anywhere
            Case(
                "eval-o-read-only-dir",
                ["eval", "{w}/teacher", "-o", "{w}/ro/r.json", *EVAL],
                2,
                "not a writable",
                setup=lambda w: read_only_dir(w, "ro"),
                after=absent("ro/r.json"),
            )
        ]
    ),
    Case(
        "eval-o-over-data",
        ["eval", "{w}/teacher", "-o", "{w}/corpus.txt", *EVAL],
        2,
        "the data source",
        keeps=unchanged("corpus.txt"),
    ),
    Case(
        "eval-o-inside-model",
        ["eval", "{w}/teacher", "-o", "{w}/teacher/r.json", *EVAL],
        2,
        "is inside the model",
        keeps=unchanged("teacher"),
    ),
    Case(
        "eval-o-ok",
        ["eval", "{w}/teacher", "-o", "{w}/r.json", *EVAL],
        0,
        "results written",
        after=lambda w: (present("r.json")(w), no_hidden_leftovers(w)),
    ),
    Case(
        "family-rerun-reuses",
        ["family", "{w}/teacher", "{w}/student", "-o", "{w}/fam", "--all"],
        0,
        "reused",
        keeps=unchanged("fam/member-03L"),
        after=no_hidden_leftovers,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, w: World, monkeypatch):
    if case.setup is not None:
        case.setup(w)
    before = {name: w.tree(name) if (w / name).is_dir() else (w / name).read_bytes() for name in case.keeps}
    with monkeypatch.context() as m:
        if case.patch is not None:
            case.patch(m)
        r = invoke(*(_fill(a, w) for a in case.args))
    out = r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), (
        f"traceback instead of a message: {r.exception!r}\n{out}"
    )
    assert r.exit_code == case.code, out
    message = _fill(case.message, w)
    if case.code != 0:
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, out
        assert message in errors[0], out
    else:  # a table's wrapping depends on the path length: compare with whitespace collapsed
        assert message in " ".join(out.split()), out
    for name, old in before.items():
        now = w.tree(name) if (w / name).is_dir() else (w / name).read_bytes()
        assert now == old, f"{name} changed"
    if not case.leftovers:  # whatever the outcome, the run left no temp file, lock or .old sibling
        no_hidden_leftovers(w)
    if case.after is not None:
        case.after(w)


# -- cases that need a second process ---------------------------------------------------------------


def _holder(path: Path) -> subprocess.Popen:
    """A second process holding ``path``'s lock until killed."""
    code = (
        "import sys, time\nfrom boomerang_cli.guard import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_two_writers_then_kill_9_of_the_first(w: World):
    """The second `family` on one output is refused naming the first's pid; once that one is killed
    with -9 (its lock file left behind), a rerun takes the lock and finishes."""
    holder = _holder(w / "fam")
    try:
        r = invoke("family", w / "teacher", w / "student", "-o", w / "fam", "--all")
        assert r.exit_code == 2 and f"(pid {holder.pid})" in r.output, r.output
    finally:
        holder.kill()
        holder.wait()
    assert (w / ".fam.lock").exists()  # SIGKILL leaves the file; the kernel dropped the lock
    r = invoke("family", w / "teacher", w / "student", "-o", w / "fam", "--all")
    assert r.exit_code == 0, r.output
    no_hidden_leftovers(w)


def test_sigterm_is_an_interrupt_while_a_command_runs():
    """SIGTERM raises KeyboardInterrupt inside a command (so cleanup and rollbacks run, exit 130),
    and the previous handler is back afterwards."""
    import typer

    from boomerang_cli.cli.common import handle_errors

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as exit_info:
        with handle_errors():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert exit_info.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_no_lock_file_inside_a_model_directory(w: World):
    """An output inside the teacher (refused by the overlap check) gets no lock file there, so even a
    kill -9 at that moment leaves the teacher as it was; an output beside it is locked as usual."""
    with output_lock(w / "teacher" / "r.json"):
        assert not (w / "teacher" / ".r.json.lock").exists()
    with output_lock(w / "teacher" / "sub" / "r.json"):
        assert not (w / "teacher" / "sub").exists()
    with output_lock(w / "r.json"):
        assert (w / ".r.json.lock").exists()


def test_sigterm_at_the_final_rename_leaves_nothing_and_the_rerun_finishes(w: World):
    """A real SIGTERM delivered just after init-student renamed its output into place: exit 130, the
    output taken back (nothing of the run left), and the same command then writes it."""
    code = (
        "import os, signal, sys\nreal = os.replace\n"
        "def replace(src, dst, *a, **k):\n    real(src, dst, *a, **k)\n"
        "    if os.path.basename(dst) == 's2':\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.replace = replace\nfrom boomerang_cli.cli import app\n"
        "sys.argv = ['boomerang', 'init-student', sys.argv[1], '-o', sys.argv[2]]\napp()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(w / "teacher"), str(w / "s2")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 130 and "error: interrupted" in proc.stderr, proc.stderr
    assert not (w / "s2").exists()
    no_hidden_leftovers(w)
    r = invoke("init-student", w / "teacher", "-o", w / "s2")
    assert r.exit_code == 0 and (w / "s2" / "boomerang.json").is_file(), r.output
    no_hidden_leftovers(w)


def test_strict_json_writer_marks_non_finite_numbers():
    from boomerang_cli.jsonio import dumps

    data = {"a": {"ppl": float("inf"), "nll": float("nan"), "tokens": 3}, "b": [1.0, float("-inf")], "c": 2.5}
    out = json.loads(dumps(data), parse_constant=lambda x: pytest.fail(x))
    assert out["a"] == {
        "ppl": None,
        "nll": None,
        "tokens": 3,
        "finite": False,
        "nonfinite": {"ppl": "inf", "nll": "nan"},
    }
    assert out["b"] == [1.0, None] and out["finite"] is False and out["nonfinite"] == {"b[1]": "-inf"}
    assert json.loads(dumps({"x": 1.0, "y": [2]})) == {"x": 1.0, "y": [2]}  # finite data: unchanged


def test_interrupted_family_leaves_a_resumable_output(w: World, monkeypatch):
    """Ctrl-C while a member is written: exit 130, no temp dirs or lock left, the manifest says
    incomplete (so eval refuses it), and the same command then finishes the family."""
    import boomerang_cli.family.writer as family

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(family, "write_model_dir", interrupted)
        r = invoke("family", w / "teacher", w / "student", "-o", w / "fam2", "--all")
    assert r.exit_code == 130 and "interrupted" in r.output, r.output
    assert json.loads((w / "fam2" / "family.json").read_text())["complete"] is False
    no_hidden_leftovers(w)
    assert not [p for p in (w / "fam2").iterdir() if p.name.startswith(".")]
    r = invoke("eval", w / "fam2", *(_fill(a, w) for a in EVAL))
    assert r.exit_code == 2 and "incomplete" in r.output, r.output
    r = invoke("family", w / "teacher", w / "student", "-o", w / "fam2", "--all")
    assert r.exit_code == 0 and "1 written" in " ".join(r.output.split()), r.output
    assert json.loads((w / "fam2" / "family.json").read_text())["complete"] is True


def test_sigint_during_distill_keeps_the_checkpoint_and_resumes(w: World):
    """Ctrl-C (SIGINT) mid-training: exit 130 with one line, no output and no temp dir or lock left,
    the last checkpoint kept; a `--resume` with other flags is refused and keeps it too (a resume to
    the end is tests/test_distill.py's kill -9 case)."""
    out, ckpt = w / "out", w / "out-checkpoints"
    flags = [_fill(a, w) for a in TRAIN if a not in ("--save-every", "0")]
    flags[flags.index("--steps") + 1] = "100000"
    cmd = [
        sys.executable,
        "-m",
        "boomerang_cli",
        "distill",
        str(w / "teacher"),
        "-o",
        str(out),
        *flags,
        "--save-every",
        "2",
    ]
    # As in a terminal, Ctrl-C has its default action in the child even if this test process was
    # started with SIGINT ignored (an ignored disposition is inherited, and Python then keeps it).
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 900  # start-up alone takes minutes on a busy machine
    while not (ckpt / "latest").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    assert (w / ".out.lock").exists()  # held while it runs
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: interrupted; rerun the same command to resume where supported"
    ], err
    assert not out.exists() and (ckpt / "latest").exists()
    no_hidden_leftovers(w)
    step = int((ckpt / "latest").read_text().strip().split("-")[1])
    r = invoke(
        "distill",
        w / "teacher",
        "-o",
        out,
        *flags[: flags.index("--steps")],
        "--steps",
        step + 1,
        *flags[flags.index("--steps") + 2 :],
        "--save-every",
        "2",
        "--resume",
    )
    assert r.exit_code != 0 and "cannot resume" in r.output  # other --steps: refused, the checkpoint kept
    assert (ckpt / "latest").exists()
