"""``eval`` core: shared-trunk perplexity, baselines, results in the manifest, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from boomerang_cli.compose import LayerSource
from boomerang_cli.errors import BoomerangError, DataError
from boomerang_cli.evaluate.family import open_family
from boomerang_cli.evaluate.results import read_results
from boomerang_cli.models import load_tokenizer
from boomerang_cli.evaluate.baselines import block_influence, plan_baselines, plan_prune_layers, shortgpt_layers
from boomerang_cli.forward.perplexity import EvalData, NLL, batch_nll, load_eval_data, model_nll, relative_difference
from boomerang_cli.evaluate.plot import plot_results
from boomerang_cli.evaluate.options import EvalOptions
from boomerang_cli.evaluate.family import evaluate_family
from boomerang_cli.evaluate.plain import evaluate_models
from boomerang_cli.forward.trunk import LayerRunner, Stack, TrunkEvaluator, prefix_tree, tree_layer_passes
from boomerang_cli.manifest import FamilyManifest, perplexity_key
from boomerang_cli.member import Member
from boomerang_cli.orders.names import sequential_members
from boomerang_cli.plan import Plan

from .common import ARCHS, load, make_model, save_tokenizer
from .eval_helpers import build_family, ppl_for, write_corpus

LAYERS = 8  # plan kept 0,2,4,6,7: 3 patchable blocks; last-first 2 members, first-last 3
SEQ = 32  # longer than the tiny sliding windows (8), so sliding layers differ from full ones


pytestmark = pytest.mark.usefixtures("one_thread")


def opts_for(corpus: Path, **kw) -> EvalOptions:
    base = dict(sources=[str(corpus)], split="train", seq_len=SEQ, max_tokens=4 * SEQ, batch_size=3)
    base.update(kw)
    return EvalOptions(**base)


def standalone_nll(path: Path | str, data: EvalData) -> NLL:
    return model_nll(load(Path(path)), data, batch_size=2)


def validate_manifest(path: Path) -> None:
    """The manifest ``eval`` rewrote still matches the published JSON Schema."""
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads(Path(path).read_text()), schema)


def saved_paths(manifest_path: Path) -> dict[str, Path]:
    """Every model of a family on disk: teacher, student and each saved member directory."""
    m = FamilyManifest.read(manifest_path)
    out = {"teacher": Path(m.teacher.path), "student": Path(m.student.path)}
    for e in m.members:
        out[e.name] = manifest_path.parent / e.path
    return out


# -- shared trunk == each saved member loaded with from_pretrained ----------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_trunk_equals_saved_members_in_both_orders(tmp_path: Path, arch: str) -> None:
    corpus = write_corpus(tmp_path / "data")
    for order in ("last-first", "first-last"):
        mpath = build_family(tmp_path / order, arch, order, layers=LAYERS)
        report = evaluate_family(mpath, opts_for(corpus))
        assert report.trunk is not None and report.trunk.used, report.trunk
        assert report.trunk.layer_passes < report.trunk.flat_layer_passes
        paths = saved_paths(mpath)
        assert {r.name for r in report.rows} == set(paths)
        tok = load_tokenizer(paths["teacher"])
        data = load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ)
        assert report.data["fingerprint"] == data.fingerprint()
        for row in report.rows:
            expected = standalone_nll(paths[row.name], data)
            assert row.perplexity["tokens"] == expected.tokens > 0
            assert relative_difference(row.perplexity["nll"], expected.nll) <= 1e-4, (arch, order, row.name)
            assert row.perplexity["ppl"] == pytest.approx(math.exp(row.perplexity["nll"]))


def test_trunk_equals_member_by_member_with_padding(tmp_path: Path) -> None:
    """A padded last block (the split runs out) goes through the trunk with its mask."""
    corpus = write_corpus(tmp_path / "data", docs=60)
    mpath = build_family(tmp_path, "qwen2", "first-last", layers=LAYERS)
    opts = opts_for(corpus, split="validation", max_tokens=10**6)
    trunk = evaluate_family(mpath, opts, write=False)
    flat = evaluate_family(mpath, opts_for(corpus, split="validation", max_tokens=10**6, trunk=False), write=False)
    assert trunk.trunk.used and not flat.trunk.used and flat.trunk.reason == "disabled (--no-trunk)"
    tok = load_tokenizer(saved_paths(mpath)["teacher"])
    data = load_eval_data([str(corpus)], "validation", tok, SEQ, 10**6)
    assert not bool(data.mask.all()), "the test needs a padded last block"
    for a, b in zip(trunk.rows, flat.rows):
        assert a.name == b.name and a.perplexity["tokens"] == b.perplexity["tokens"]
        assert relative_difference(a.perplexity["nll"], b.perplexity["nll"]) <= 1e-5


def test_prefix_tree_shares_leading_layers() -> None:
    t, s = "teacher", "student"
    stacks = {
        "a": Stack(s, (LayerSource(s, 0), LayerSource(s, 1), LayerSource(t, 4)), t),
        "b": Stack(s, (LayerSource(s, 0), LayerSource(s, 1), LayerSource(s, 2)), s),
        "c": Stack(s, (LayerSource(s, 0), LayerSource(t, 2)), t),
        "d": Stack(t, (LayerSource(s, 0),), t),  # other embeddings: its own root, nothing shared
        "e": Stack(s, (LayerSource(s, 0), LayerSource(s, 1)), t),  # ends inside another's path
    }
    roots = prefix_tree(stacks)
    assert set(roots) == {s, t}
    # s0 | s1 | t4, s2 | t2   +   t-root: s0
    assert tree_layer_passes(roots) == 6
    assert roots[s].children[LayerSource(s, 0)].children[LayerSource(s, 1)].ends == [("e", t)]


def test_walk_holds_only_the_current_path(tmp_path: Path) -> None:
    """Live activations never exceed the depth of the tree (+ the one being computed)."""
    import weakref

    import copy

    model = make_model("llama", layers=LAYERS).eval()
    reference = copy.deepcopy(model)
    runner = LayerRunner(model, "model.layers")
    live: list[weakref.ref] = []
    peak = 0
    real_layer = runner.layer

    def layer(index, hidden, cap):
        nonlocal peak
        out = real_layer(index, hidden, cap)
        live.append(weakref.ref(out))
        peak = max(peak, sum(r() is not None for r in live))
        return out

    runner.layer = layer  # type: ignore[method-assign]
    plan = Plan.from_paper_flags(LAYERS)
    stacks = {f"m{i}": Stack.of_layers("teacher", range(LAYERS - i)) for i in range(4)}
    stacks.update(
        {
            f"p{i}": Stack.of_layers("teacher", plan_prune_layers(m))
            for i, m in enumerate(sequential_members(plan, "last-first"))
        }
    )
    ev = TrunkEvaluator({"teacher": runner}, stacks)
    seen: dict[str, torch.Tensor] = {}
    ids = torch.randint(2, 500, (2, 16))
    ev.run(ids, None, lambda k, logits: seen.setdefault(k, logits))
    assert set(seen) == set(stacks)
    assert ev.layer_passes < ev.flat_passes
    assert peak <= LAYERS + 1
    for key, stack in stacks.items():  # every stack's logits are those of the pruned model itself
        pruned = copy.deepcopy(reference)
        pruned.model.layers = torch.nn.ModuleList([pruned.model.layers[ls.layer] for ls in stack.layers])
        pruned.config.num_hidden_layers = len(stack.layers)
        with torch.no_grad():
            expected = pruned(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(seen[key], expected, rtol=1e-5, atol=1e-5)


# -- the check on the first batch and the fallback --------------------------------------


def test_trunk_mismatch_falls_back_member_by_member(tmp_path: Path, monkeypatch) -> None:
    corpus = write_corpus(tmp_path / "data")
    mpath = build_family(tmp_path, "llama", "last-first", layers=LAYERS)
    good = evaluate_family(mpath, opts_for(corpus), write=False)
    real = LayerRunner.layer

    def broken(self, index, hidden, cap):  # e.g. a model whose layers need arguments we did not capture
        return real(self, index, hidden, cap) * 1.01

    monkeypatch.setattr(LayerRunner, "layer", broken)
    report = evaluate_family(mpath, opts_for(corpus))
    assert not report.trunk.used
    assert "disagrees with standalone" in report.trunk.reason
    for a, b in zip(good.rows, report.rows):
        assert relative_difference(a.perplexity["nll"], b.perplexity["nll"]) <= 1e-5
    m = FamilyManifest.read(mpath)
    assert ppl_for(m.members[0].metrics, report.data["key"])["trunk"] is False


def test_unsupported_architecture_falls_back(tmp_path: Path, monkeypatch) -> None:
    from boomerang_cli.errors import UnsupportedArchitectureError

    corpus = write_corpus(tmp_path / "data")
    mpath = build_family(tmp_path, "gpt2", "last-first", layers=LAYERS)

    def refuse(self, ids, mask):
        raise UnsupportedArchitectureError("GPT2LMHeadModel: cannot run its layers alone")

    monkeypatch.setattr(LayerRunner, "capture", refuse)
    report = evaluate_family(mpath, opts_for(corpus), write=False)
    assert not report.trunk.used and "cannot run its layers alone" in report.trunk.reason
    assert all(r.perplexity and r.perplexity["trunk"] is False for r in report.rows)


# -- results in the manifest ------------------------------------------------------------


def test_results_land_in_manifest_entries(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "data")
    mpath = build_family(tmp_path, "llama", "first-last", layers=LAYERS)
    before = FamilyManifest.read(mpath)
    report = evaluate_family(mpath, opts_for(corpus), members=["member-07L", "teacher"])
    assert [r.name for r in report.rows] == ["member-07L", "teacher"]
    m = FamilyManifest.read(mpath)
    key = perplexity_key(report.rows[0].perplexity)
    assert key == f"{corpus}:train|seq_len={SEQ}|tokens={report.rows[0].perplexity['tokens']}|bos=false|dtype=float32"
    rec = m.member("member-07L").metrics["perplexity"][key]
    assert set(rec) >= {
        "nll",
        "ppl",
        "tokens",
        "data",
        "seq_len",
        "bos",
        "blocks",
        "data_fingerprint",
        "trunk",
        "dtype",
        "evaluated",
    }
    assert rec["seq_len"] == SEQ and rec["tokens"] == report.rows[0].perplexity["tokens"] and rec["bos"] is False
    assert key in m.teacher.metrics["perplexity"]
    assert m.student.metrics == {} and m.member("member-06L").metrics == {}
    # everything else is untouched
    assert [e.files for e in m.members] == [e.files for e in before.members]
    assert m.plan == before.plan and m.created == before.created
    # another data set, another block length or BOS policy each add an entry beside the others
    keys = {key}
    for opts in (
        opts_for(corpus, split="validation", max_tokens=10**6),
        opts_for(corpus, seq_len=SEQ // 2),
        opts_for(corpus, bos="always"),
    ):
        again = evaluate_family(mpath, opts, members=["member-07L"])
        keys.add(perplexity_key(again.rows[0].perplexity))
    recs = FamilyManifest.read(mpath).member("member-07L").metrics["perplexity"]
    assert set(recs) == keys and len(keys) == 4
    assert recs[key] == rec  # the first measurement is untouched
    assert {r["seq_len"] for r in recs.values()} == {SEQ, SEQ // 2} and {r["bos"] for r in recs.values()} == {
        False,
        True,
    }
    # the same settings again replace their own entry
    evaluate_family(mpath, opts_for(corpus), members=["member-07L"])
    assert set(FamilyManifest.read(mpath).member("member-07L").metrics["perplexity"]) == keys
    validate_manifest(mpath)


def test_plain_models_write_a_results_file(tmp_path: Path) -> None:
    from .common import tiny_model_dir

    corpus = write_corpus(tmp_path / "data")
    a = tiny_model_dir(tmp_path, "llama", layers=2, seed=1)
    b = tiny_model_dir(tmp_path, "gpt_neox", layers=3, seed=2)
    out = tmp_path / "res.json"
    report = evaluate_models([str(a), str(b)], opts_for(corpus), out)
    data = json.loads(out.read_text())
    assert data["format"] == "boomerang-eval" and data["schema_version"] == 3
    refs = {e["ref"]: e for e in data["models"]}
    assert set(refs) == {str(a), str(b)}
    tok = load_tokenizer(a)
    expected = standalone_nll(a, load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ))
    got = ppl_for(refs[str(a)]["metrics"], f"{corpus}:train")
    assert got["nll"] == pytest.approx(expected.nll, rel=1e-6) and got["trunk"] is False
    assert refs[str(b)]["num_layers"] == 3
    assert report.trunk is not None and not report.trunk.used
    # a second run on other data merges into the same file
    evaluate_models([str(a)], opts_for(corpus, split="validation", max_tokens=10**6), out)
    data = json.loads(out.read_text())
    assert len(data["models"]) == 2
    metrics = {e["ref"]: e for e in data["models"]}[str(a)]["metrics"]["perplexity"]
    assert {e["data"] for e in metrics.values()} == {f"{corpus}:train", f"{corpus}:validation"}
    # a schema-1 results file is read and re-keyed
    v1 = dict(data, schema_version=1)
    v1["models"] = [
        dict(
            e,
            metrics={
                "perplexity": {
                    f"{corpus}:train": {
                        k: v for k, v in ppl_for(e["metrics"], f"{corpus}:train").items() if k not in ("data", "bos")
                    }
                }
            },
        )
        for e in data["models"]
    ]
    out.write_text(json.dumps(v1))
    migrated = read_results(out)
    assert migrated["schema_version"] == 3
    assert all(ppl_for(e["metrics"], f"{corpus}:train")["bos"] is False for e in migrated["models"])


# -- baselines ---------------------------------------------------------------------------


def identity_layers_model(tmp_path: Path, identity: set[int]):
    """A llama whose layers in ``identity`` add nothing to the residual stream (influence 0)."""
    model = make_model("llama", layers=LAYERS)
    with torch.no_grad():
        for i in identity:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def test_block_influence_and_shortgpt_drop_lowest(tmp_path: Path) -> None:
    model = identity_layers_model(tmp_path, {2, 5})
    save_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    corpus = write_corpus(tmp_path / "data")
    data = load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ)
    bi = block_influence(LayerRunner(model, "model.layers"), data, batch_size=2)
    assert len(bi) == LAYERS
    assert bi[2] == pytest.approx(0.0, abs=1e-6) and bi[5] == pytest.approx(0.0, abs=1e-6)
    assert min(b for i, b in enumerate(bi) if i not in (2, 5)) > 1e-3
    assert shortgpt_layers(bi, LAYERS - 2) == [0, 1, 3, 4, 6, 7]
    # and the measure is 1 - cos(input, output) of each layer, recomputed by hand
    with torch.no_grad():
        hs = model(input_ids=data.input_ids, output_hidden_states=True).hidden_states
        hooks_out: list[torch.Tensor] = []
        handle = model.model.layers[LAYERS - 1].register_forward_hook(lambda m, a, o: hooks_out.append(o))
        model(input_ids=data.input_ids)
        handle.remove()
    outs = list(hs[1:LAYERS]) + [hooks_out[0]]
    for i in (0, 3, LAYERS - 1):
        cos = torch.nn.functional.cosine_similarity(hs[i], outs[i], dim=-1)
        assert bi[i] == pytest.approx(float((1 - cos).mean()), rel=1e-4)


def test_shortgpt_layers_order_and_bounds() -> None:
    bi = [0.9, 0.1, 0.5, 0.1, 0.7]
    assert shortgpt_layers(bi, 5) == [0, 1, 2, 3, 4]
    assert shortgpt_layers(bi, 3) == [0, 2, 4]
    assert shortgpt_layers(bi, 4) == [0, 2, 3, 4]  # tie: the earlier layer goes first
    assert shortgpt_layers(bi, 1) == [0]
    with pytest.raises(BoomerangError):
        shortgpt_layers(bi, 0)


def test_plan_prune_takes_the_members_teacher_layers() -> None:
    plan = Plan.from_paper_flags(LAYERS)  # kept 0,2,4,6,7; blocks [0,2) [2,4) [4,6) [6,7) [7,8)
    assert plan_prune_layers(Member(plan, frozenset())) == [0, 2, 4, 6, 7]
    assert plan_prune_layers(Member(plan, frozenset({1, 3, 4}))) == [0, 2, 3, 4, 6, 7]
    assert plan_prune_layers(Member(plan, frozenset(range(5)))) == list(range(LAYERS))
    members = sequential_members(plan, "last-first")
    bs = plan_baselines(["shortgpt", "plan-prune"], members, [0.5] * LAYERS)
    assert {b.name for b in bs} == {
        "shortgpt-05L",
        "shortgpt-06L",
        "shortgpt-07L",
        "plan-prune-05L",
        "plan-prune-06L",
        "plan-prune-07L",
    }
    assert all(b.num_layers == int(b.name[-3:-1]) for b in bs)
    # first-last's last member is as deep as the teacher (trailing singletons still the
    # student's): pruning nothing would be the teacher itself, so no baseline there.
    deep = Member(plan, frozenset({0, 1, 2}))
    assert deep.num_layers == LAYERS and not deep.is_teacher
    assert {b.num_layers for b in plan_baselines(["shortgpt", "plan-prune"], [deep], [0.5] * LAYERS)} == set()


def test_baselines_are_evaluated_and_recorded(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "data")
    mpath = build_family(tmp_path, "llama", "last-first", layers=LAYERS)
    opts = opts_for(corpus, baselines=["shortgpt", "plan-prune"], calibration_tokens=2 * SEQ)
    report = evaluate_family(mpath, opts)
    base = [r for r in report.rows if r.kind == "baseline"]
    assert {r.name for r in base} == {
        "shortgpt-05L",
        "shortgpt-06L",
        "shortgpt-07L",
        "plan-prune-05L",
        "plan-prune-06L",
        "plan-prune-07L",
    }
    m = FamilyManifest.read(mpath)
    entries = {b.name: b for b in m.baselines}
    assert set(entries) == {r.name for r in base}
    student_pp = entries["plan-prune-05L"]
    assert student_pp.method == "plan-prune" and student_pp.teacher_layers == list(m.plan.kept)
    assert student_pp.num_params == m.student.num_params
    sg = entries["shortgpt-06L"]
    assert sg.method == "shortgpt" and len(sg.teacher_layers) == 6
    assert len(sg.metrics["selection"]["block_influence"]) == LAYERS
    assert sg.metrics["selection"]["calibration"] == f"{corpus}:train"
    # the baseline's perplexity is that of the pruned teacher as a standalone model
    fam = open_family(mpath, opts)
    tok = load_tokenizer(fam.infos["teacher"].path)
    data = load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ)
    for name in ("shortgpt-06L", "plan-prune-07L"):
        model = fam.build(Stack.of_layers("teacher", entries[name].teacher_layers))
        got = ppl_for(entries[name].metrics, f"{corpus}:train")["nll"]
        assert relative_difference(got, model_nll(model, data, 2).nll) <= 1e-5
    # rerunning replaces entries, never duplicates them
    evaluate_family(mpath, opts)
    assert len(FamilyManifest.read(mpath).baselines) == 6
    validate_manifest(mpath)


# -- plot ------------------------------------------------------------------------------


def test_plot_is_a_valid_png(tmp_path: Path) -> None:
    import matplotlib.image

    rows = [
        {
            "name": "student",
            "kind": "student",
            "method": None,
            "num_params": 1.0e8,
            "ppl": 30.0,
            "tasks": {"arc_easy": ("acc", 0.40)},
        },
        {
            "name": "member-18L",
            "kind": "member",
            "method": None,
            "num_params": 1.1e8,
            "ppl": 25.0,
            "tasks": {"arc_easy": ("acc", 0.45)},
        },
        {
            "name": "teacher",
            "kind": "teacher",
            "method": None,
            "num_params": 1.35e8,
            "ppl": 20.0,
            "tasks": {"arc_easy": ("acc", 0.5)},
        },
        {
            "name": "shortgpt-16L",
            "kind": "baseline",
            "method": "shortgpt",
            "num_params": 1.0e8,
            "ppl": 3000.0,
            "tasks": {"arc_easy": ("acc", 0.27)},
        },
        {
            "name": "plan-prune-16L",
            "kind": "baseline",
            "method": "plan-prune",
            "num_params": 1.0e8,
            "ppl": 900.0,
            "tasks": {},
        },
    ]
    cases = (("ppl.png", rows, ()), ("both.png", rows, ("arc_easy",)), ("linear.png", rows[:3], ()))
    for name, points, tasks in cases:
        out = plot_results(points, tmp_path / name, title="family", data_key="stdlib:validation", tasks=tasks)
        raw = out.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(out)
        assert img.shape[0] > 300 and img.shape[1] > 500
    assert (
        matplotlib.image.imread(tmp_path / "both.png").shape[1] > matplotlib.image.imread(tmp_path / "ppl.png").shape[1]
    )
    with pytest.raises(BoomerangError):
        plot_results(rows, tmp_path / "x.jpg", title="t", data_key=None)


# -- data errors -----------------------------------------------------------------------


def test_no_data_is_a_clear_error(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    with pytest.raises(DataError, match="no such file"):
        load_eval_data([str(tmp_path / "missing.jsonl")], "validation", tok, SEQ, 100)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no text"):
        load_eval_data([str(tmp_path / "empty")], "validation", tok, SEQ, 100)
    with pytest.raises(DataError, match="no evaluation data"):
        load_eval_data([], "validation", tok, SEQ, 100)
    with pytest.raises(DataError, match="max-tokens"):
        load_eval_data([str(tmp_path)], "validation", tok, SEQ, 0)


def test_batch_nll_ignores_masked_labels() -> None:
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, 3:] = -100
    total, n = batch_nll(logits, labels, chunk_rows=3)
    keep = labels != -100
    ref = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
    assert n == int(keep.sum()) == 8
    assert total == pytest.approx(float(ref), rel=1e-6)


def test_plot_lines_follow_the_family_not_the_parameter_count() -> None:
    """Untied members can outgrow the teacher; the family line still ends at the teacher, and each
    compared order runs from the student through its members by depth to the teacher."""
    from boomerang_cli.evaluate.plot import _series

    rows = [
        {"name": "student", "kind": "student", "num_params": 85, "num_layers": 16, "ppl": 9.0},
        {"name": "member-17L", "kind": "member", "num_params": 117, "num_layers": 17, "ppl": 8.0},
        {"name": "member-30L", "kind": "member", "num_params": 163, "num_layers": 30, "ppl": 7.5},
        {"name": "teacher", "kind": "teacher", "num_params": 135, "num_layers": 30, "ppl": 7.0},
        {"name": "beam/member-18L", "kind": "order", "method": "beam", "num_params": 92, "num_layers": 18, "ppl": 8.5},
        {"name": "beam/member-17L", "kind": "order", "method": "beam", "num_params": 120, "num_layers": 17, "ppl": 8.2},
    ]
    series = _series(rows, lambda r: r["ppl"])
    assert [p[2] for p in series["family"]] == ["student", "member-17L", "member-30L", "teacher"]
    assert [p[2] for p in series["order:beam"]] == ["student", "beam/member-17L", "beam/member-18L", "teacher"]


def test_bos_tokenizer_gets_bos_at_every_eval_and_shortgpt_block(tmp_path: Path) -> None:
    """SPEC section 7 through eval: blocks of a BOS-adding tokenizer start with BOS, recorded as ``bos``."""
    from .common import BOS_ID

    corpus = write_corpus(tmp_path / "data")
    mpath = build_family(tmp_path, "llama", "last-first", layers=LAYERS, bos=True)
    tok = load_tokenizer(FamilyManifest.read(mpath).teacher.path)
    data = load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ)
    assert data.bos and bool((data.input_ids[:, 0] == BOS_ID).all())
    plain = load_eval_data([str(corpus)], "train", tok, SEQ, 4 * SEQ, bos="never")
    assert not plain.bos and not bool((plain.input_ids[:, 0] == BOS_ID).all())
    report = evaluate_family(mpath, opts_for(corpus, baselines=["shortgpt"], calibration_tokens=2 * SEQ))
    assert report.data["bos"] is True
    assert all(r.perplexity["bos"] is True for r in report.rows)
    m = FamilyManifest.read(mpath)
    assert all(b.metrics["selection"]["bos"] is True for b in m.baselines)
    evaluate_family(mpath, opts_for(corpus, bos="never"), members=["teacher"])
    assert sorted(e["bos"] for e in FamilyManifest.read(mpath).teacher.metrics["perplexity"].values()) == [False, True]
    with pytest.raises(DataError, match="--bos"):
        evaluate_family(mpath, opts_for(corpus, bos="maybe"))
