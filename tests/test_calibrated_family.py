"""``family --order kl-greedy|beam``: the search's choices, checked by brute force, written and recorded."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boomerang_cli.arch import ModelInfo
from boomerang_cli.orders.calibration import CalibrationSpec
from boomerang_cli.orders.cost import greedy_cost, search_cost
from boomerang_cli.orders.kl import KLScorer
from boomerang_cli.cli import app
from boomerang_cli.family.open import load_member_from_manifest
from boomerang_cli.member import Member
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.student import init_student

from .common import load, logits, make_model, perturb_saved, sample_ids, save_model

LAYERS = 8
PLAN = Plan.from_paper_flags(LAYERS)  # kept 0,2,4,6,7: 5 blocks, 32 subsets
CALIB = ["--calib-data", "stdlib", "--calib-samples", "4", "--calib-seq-len", "16", "--device", "cpu"]
runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def state_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state" / "state.json"))


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calibrated")
    teacher = save_model(make_model("llama", LAYERS, seed=0), root / "teacher")
    student = root / "student"
    init_student(resolve(str(teacher)), PLAN, student)
    perturb_saved(student, seed=5)
    return teacher, student


@pytest.fixture(scope="module")
def brute(pair_dirs) -> dict[frozenset[int], float]:
    """KL of every one of the 32 subsets, scored directly (no search)."""
    teacher, student = pair_dirs
    models = {"teacher": ModelInfo.load(teacher), "student": ModelInfo.load(student)}
    scorer = KLScorer(models, CalibrationSpec(("stdlib",), samples=4, seq_len=16))
    subsets = [
        frozenset(c)
        for k in range(PLAN.num_student_layers + 1)
        for c in itertools.combinations(range(PLAN.num_student_layers), k)
    ]
    return dict(zip(subsets, scorer([Member(PLAN, s) for s in subsets])))


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_kl_greedy_family_follows_the_lowest_kl_at_every_step(tmp_path, pair_dirs, brute):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--order", "kl-greedy", *CALIB, "--all", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    order = m["order"]
    assert order["method"] == "kl-greedy" and order["beam"] is None
    assert order["calibration"]["data"] == ["stdlib"] and order["calibration"]["samples"] == 4
    assert order["calibration"]["key"] == "stdlib:train" and order["calibration"]["tokens"] > 0
    assert order["calibration"]["evaluated"] == greedy_cost(PLAN.num_student_layers) == 16
    # The trace: at each depth every remaining block was tried, and the lowest KL was kept.
    current: frozenset[int] = frozenset()
    assert len(order["trace"]) == PLAN.num_student_layers
    for step in order["trace"]:
        cands = {current | {b}: brute[current | {b}] for b in range(PLAN.num_student_layers) if b not in current}
        assert {frozenset(current | {c["block"]}) for c in step["candidates"]} == set(cands)
        for c in step["candidates"]:
            assert c["kl"] == pytest.approx(cands[current | {c["block"]}], rel=1e-5, abs=1e-7)
        chosen = frozenset(step["teacher_blocks"])
        assert brute[chosen] == pytest.approx(min(cands.values()), rel=1e-5, abs=1e-7)
        assert chosen == current | {step["block"]}
        current = chosen
    # Members are the chain's, one per layer count, nested, each with its KL.
    steps = {s["num_layers"]: s for s in order["steps"]}
    prev: set[int] = set()
    for entry in m["members"]:
        s = steps[entry["num_layers"]]
        assert entry["teacher_blocks"] == s["teacher_blocks"]
        assert s["kl"] == pytest.approx(brute[frozenset(s["teacher_blocks"])], rel=1e-5, abs=1e-7)
        assert prev <= set(entry["teacher_blocks"])
        prev = set(entry["teacher_blocks"])
        # Written members reload as the member they describe.
        saved = load(out / entry["path"])
        torch.testing.assert_close(
            logits(saved, sample_ids()),
            logits(load_member_from_manifest(out / "family.json", entry["name"]), sample_ids()),
            rtol=1e-4,
            atol=1e-5,
        )
    from .test_manifest import VALIDATOR

    VALIDATOR.validate(json.loads((out / "family.json").read_text()))
    card = (out / m["members"][0]["path"] / "README.md").read_text()
    assert "kl-greedy order" in card and "`stdlib` (train split)" in card


def test_wide_beam_is_exhaustive_at_every_size(tmp_path, pair_dirs, brute):
    teacher, student = pair_dirs
    width = 10  # C(5, 2) = C(5, 3) = 10: nothing is ever dropped
    r = cli(
        "family",
        teacher,
        student,
        "-o",
        tmp_path / "fam",
        "--order",
        "beam",
        "--beam",
        width,
        *CALIB,
        "--all",
        "--json",
    )
    assert r.exit_code == 0, r.output
    order = json.loads(r.stdout)["order"]
    assert order["beam"] == width
    assert order["calibration"]["evaluated"] == len(brute) == search_cost(PLAN.num_student_layers, width) == 32
    by_layers: dict[int, float] = {}
    for s, kl in brute.items():
        n = Member(PLAN, s).num_layers
        by_layers[n] = min(by_layers.get(n, float("inf")), kl)
    assert {s["num_layers"] for s in order["steps"]} == set(by_layers)
    for s in order["steps"]:
        assert s["kl"] == pytest.approx(by_layers[s["num_layers"]], rel=1e-5, abs=1e-7)
        assert brute[frozenset(s["teacher_blocks"])] == pytest.approx(s["kl"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("order", ["kl-dp", "auto"])
def test_fast_orders_against_their_probes_the_fixed_orders_and_exhaustive_search(order, tmp_path, pair_dirs, brute):
    """kl-dp/auto on the real KL: every recorded KL is the member's own (checked against a direct score of
    all 32 subsets), each size keeps the lowest of its proposals, and auto is never worse than a fixed order."""
    from boomerang_cli.orders.cost import dp_cost
    from boomerang_cli.orders.names import FIXED_ORDERS, sequential_members
    from boomerang_cli.orders.search import dp_subsets

    teacher, student = pair_dirs
    r = cli("family", teacher, student, "-o", tmp_path / "fam", "--order", order, *CALIB, "--all", "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)
    info = m["order"]
    n = PLAN.num_student_layers
    full = frozenset(range(n))
    probes = [t for t in info["trace"] if "probe" in t]
    assert [p["probe"] for p in probes] == list(range(n))
    for p in probes:
        b = p["probe"]
        assert p["kl_teacher_with_block_from_student"] == pytest.approx(brute[full - {b}], rel=1e-5, abs=1e-7)
        assert p["kl_student_with_block_from_teacher"] == pytest.approx(brute[frozenset({b})], rel=1e-5, abs=1e-7)
    # The DP's proposals are the oracle's: the best subsets for the probes' additive costs.
    costs = {
        "dp-teacher-side": [brute[full - {b}] - brute[full] for b in range(n)],
        "dp-student-side": [brute[frozenset()] - brute[frozenset({b})] for b in range(n)],
    }
    sizes = [t for t in info["trace"] if "candidates" in t]
    for t in sizes:
        for c in t["candidates"]:
            assert c["kl"] == pytest.approx(brute[frozenset(c["teacher_blocks"])], rel=1e-5, abs=1e-7)
            if c["from"] in costs:
                assert frozenset(c["teacher_blocks"]) == full - dp_subsets(PLAN, costs[c["from"]])[t["num_layers"]]
    best = {t["num_layers"]: min(c["kl"] for c in t["candidates"]) for t in sizes}
    exhaustive: dict[int, float] = {}
    for subset, kl in brute.items():
        k = Member(PLAN, subset).num_layers
        exhaustive[k] = min(exhaustive.get(k, float("inf")), kl)
    for s in info["steps"]:
        k = s["num_layers"]
        assert s["kl"] >= exhaustive[k] - 1e-7  # never better than exhaustive, of course
        if k in best and 0 < k < LAYERS and s["teacher_blocks"] not in ([], sorted(full)):
            assert s["kl"] == pytest.approx(best[k], rel=1e-5, abs=1e-7)
    if order == "auto":
        for fixed in FIXED_ORDERS:
            for mem in sequential_members(PLAN, fixed):
                if not (mem.is_student or mem.is_teacher):
                    assert (
                        min(s["kl"] for s in info["steps"] if s["num_layers"] == mem.num_layers)
                        <= brute[mem.teacher_blocks] + 1e-7
                    )
    assert info["calibration"]["evaluated"] <= dp_cost(n, 2 * (n + 1) if order == "auto" else 0)
    from .test_manifest import VALIDATOR

    VALIDATOR.validate(json.loads((tmp_path / "fam" / "family.json").read_text()))


def test_rerun_reuses_the_search_and_the_members(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    args = ("family", teacher, student, "-o", out, "--order", "kl-greedy", *CALIB, "--num", "2")
    first = cli(*args)
    assert first.exit_code == 0, first.output
    second = cli(*args)
    assert second.exit_code == 0, second.output
    text = " ".join(second.stdout.split())
    assert "reused from the family's manifest" in text and "0 written, 2 reused" in text
    # Other calibration settings: a new search (same members or not, the manifest says which).
    third = cli(
        "family",
        teacher,
        student,
        "-o",
        out,
        "--order",
        "kl-greedy",
        *CALIB[:-4],
        "--calib-seq-len",
        "12",
        "--device",
        "cpu",
        "--num",
        "2",
        "--json",
    )
    assert third.exit_code == 0, third.output
    assert json.loads(third.stdout)["order"]["calibration"]["seq_len"] == 12


def test_dry_run_searches_and_writes_nothing(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, "--order", "kl-greedy", *CALIB, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "KL" in r.stdout and "kl-greedy search" in r.stdout
    assert not out.exists()


def test_calibration_defaults_to_the_distillation_data(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    distilled = tmp_path / "distilled"
    import shutil

    shutil.copytree(student, distilled)
    record = json.loads((distilled / "boomerang.json").read_text())
    record["training"] = {"config": {"data": ["stdlib"], "text_field": "text"}}
    (distilled / "boomerang.json").write_text(json.dumps(record))
    r = cli(
        "family",
        teacher,
        distilled,
        "--order",
        "kl-greedy",
        "--calib-samples",
        "2",
        "--calib-seq-len",
        "16",
        "--device",
        "cpu",
        "--dry-run",
        "--json",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["order"]["calibration"]["data"] == ["stdlib"]


def test_unusable_output_is_refused_before_the_search(tmp_path, pair_dirs, monkeypatch):
    teacher, student = pair_dirs
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def no_search(*a, **k):
        raise AssertionError("searched before checking the output")

    monkeypatch.setattr("boomerang_cli.orders.kl.search", no_search)
    r = cli("family", teacher, student, "-o", out, "--order", "kl-greedy", *CALIB, "--all")
    assert r.exit_code == 2 and "pass --overwrite" in " ".join(r.output.split())
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--order", "kl-greedy"], "pass --calib-data"),
        (
            ["--order", "last-first", "--calib-data", "stdlib"],
            "--calib-data apply to a calibrated --order (kl-greedy, beam, kl-dp, auto), not last-first",
        ),
        (["--order", "kl-greedy", "--calib-data", "stdlib", "--beam", "3"], "use --order beam"),
        (["--order", "beam", "--calib-data", "stdlib", "--beam", "0"], "--beam must be at least 1"),
        (["--order", "beam", "--calib-data", "stdlib", "--calib-samples", "0"], "--calib-samples must be at least 1"),
        (["--order", "kl-greedy", "--calib-data", "stdlib", "--device", "tpu"], "--device 'tpu' is not a device"),
        (["--order", "shortest"], "unknown --order 'shortest'"),
        (["--order", "kl-greedy", "--calib-data", "/no/such/corpus"], "/no/such/corpus"),
    ],
)
def test_bad_calibration_arguments(tmp_path, pair_dirs, args, match):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    r = cli("family", teacher, student, "-o", out, *args, "--all")
    assert r.exit_code == 2, r.output
    assert match in r.output.replace("\n", " ")
    assert not out.exists()


EVAL = ["--max-tokens", "64", "--seq-len", "16", "--batch-size", "2"]


@pytest.fixture(scope="module")
def last_first_family(pair_dirs, tmp_path_factory) -> Path:
    teacher, student = pair_dirs
    out = tmp_path_factory.mktemp("lf") / "fam"
    r = cli("family", teacher, student, "-o", out, "--all")
    assert r.exit_code == 0, r.output
    return out


def test_eval_compares_orders_in_memory(tmp_path, last_first_family, brute):
    fam = last_first_family
    before = json.loads((fam / "family.json").read_text())
    plot = tmp_path / "orders.png"
    args = [
        "eval",
        fam,
        "--compare-orders",
        "last-first,first-last,kl-greedy,beam",
        "--beam",
        "10",
        *CALIB[:-2],
        *EVAL,
        "--device",
        "cpu",
        "--plot",
        plot,
        "--json",
    ]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    rows = [x for x in report["results"] if x["kind"] == "order"]
    by_order: dict[str, list[dict]] = {}
    for x in rows:
        by_order.setdefault(x["method"], []).append(x)
    assert set(by_order) == {"last-first", "first-last", "kl-greedy", "beam"}
    # Fixed orders: their sequential members; calibrated: the search's, with its KL.
    assert [x["selection"]["teacher_blocks"] for x in by_order["first-last"]] == [[0], [0, 1], [0, 1, 2]]
    for method in ("kl-greedy", "beam"):
        info = report["orders"][method]
        assert info["source"] == "searched for this comparison" and info["calibration"]["key"] == "stdlib:train"
        for x in by_order[method]:
            assert x["selection"]["kl"] == pytest.approx(
                brute[frozenset(x["selection"]["teacher_blocks"])], rel=1e-5, abs=1e-7
            )
    # The family's own last-first members and the compared last-first rows are the same models.
    members = {x["num_layers"]: x["perplexity"]["ppl"] for x in report["results"] if x["kind"] == "member"}
    for x in by_order["last-first"]:
        assert x["perplexity"]["ppl"] == pytest.approx(members[x["num_layers"]], rel=1e-6)
    # Arbitrary subsets through the shared trunk equal each member evaluated on its own.
    flat = cli(*[a for a in args if a not in ("--plot", plot)], "--no-trunk")
    assert flat.exit_code == 0, flat.output
    flat_ppl = {x["name"]: x["perplexity"]["ppl"] for x in json.loads(flat.stdout)["results"]}
    assert report["trunk"]["used"] is True
    for x in rows:
        assert x["perplexity"]["ppl"] == pytest.approx(flat_ppl[x["name"]], rel=1e-5)
    assert plot.stat().st_size > 0
    # Compared members are reported, not recorded: the manifest's members and baselines are unchanged.
    after = json.loads((fam / "family.json").read_text())
    assert [m["name"] for m in after["members"]] == [m["name"] for m in before["members"]]
    assert after["baselines"] == before["baselines"] == []


def test_eval_reuses_the_familys_own_search(tmp_path, pair_dirs):
    teacher, student = pair_dirs
    out = tmp_path / "fam"
    assert cli("family", teacher, student, "-o", out, "--order", "kl-greedy", *CALIB, "--all").exit_code == 0
    r = cli("eval", out, "--compare-orders", "kl-greedy", *EVAL, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["orders"]["kl-greedy"]["source"] == "the family's own search"
    written = {m["num_layers"]: m for m in json.loads((out / "family.json").read_text())["members"]}
    ppl = {x["num_layers"]: x["perplexity"]["ppl"] for x in report["results"] if x["kind"] == "member"}
    compared = [x for x in report["results"] if x["kind"] == "order"]
    assert len(compared) == len(written)
    for x in compared:
        assert x["selection"]["teacher_blocks"] == written[x["num_layers"]]["teacher_blocks"]
        assert x["perplexity"]["ppl"] == pytest.approx(ppl[x["num_layers"]], rel=1e-6)


@pytest.mark.parametrize(
    "args, match",
    [
        (["--compare-orders", "zigzag"], "unknown order 'zigzag' in --compare-orders"),
        (["--compare-orders", ","], "--compare-orders is empty"),
        (["--compare-orders", "beam", "--beam", "0"], "--beam must be at least 1"),
        (["--compare-orders", "last-first", "--no-perplexity", "--tasks", "x"], "drop --no-perplexity"),
    ],
)
def test_bad_compare_orders(last_first_family, args, match):
    r = cli("eval", last_first_family, *args, *EVAL)
    assert r.exit_code == 2, r.output
    assert match in " ".join(r.output.split())


def test_eval_calibration_options_apply_without_calib_data(last_first_family):
    """--calib-samples/--calib-seq-len alone still set the search's calibration (train split of --data)."""
    r = cli(
        "eval",
        last_first_family,
        "--compare-orders",
        "kl-greedy",
        "--calib-samples",
        "3",
        "--calib-seq-len",
        "12",
        *EVAL,
        "--device",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)["orders"]["kl-greedy"]["calibration"]
    assert (cal["samples"], cal["seq_len"], cal["key"]) == (3, 12, "stdlib:train")
    assert 3 * 11 <= cal["tokens"] <= 3 * 12
