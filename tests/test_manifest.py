"""family.json: the published JSON Schema, round trips, versioning and documentation."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path

import jsonschema
import pytest

from boomerang_cli.errors import BoomerangError
from boomerang_cli.family import achievable, build_family, dry_run_json, open_pair, select
from boomerang_cli.manifest import SCHEMA_VERSION, FamilyManifest, perplexity_key
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.student import init_student

from .common import make_model, save_model

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA = json.loads((DOCS / "manifest.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A written gpt2 family (tied teacher), built with --sizes, and its dry-run JSON."""
    root = tmp_path_factory.mktemp("manifest")
    teacher = save_model(make_model("gpt2", 6, seed=0), root / "teacher")
    student = root / "student"
    init_student(resolve(str(teacher)), Plan.from_paper_flags(6), student)
    pair = open_pair(resolve(str(teacher)), resolve(str(student)))
    every = achievable(pair, "first-last")
    from boomerang_cli.family import parse_size_targets

    picks = select(
        every[1:-1],
        sizes=parse_size_targets(f"{every[1].num_params},{every[-2].num_params}"),
        student_params=every[0].num_params,
        teacher_params=every[-1].num_params,
    )
    res = build_family(pair, picks, root / "fam", order="first-last")
    return res.manifest_path, dry_run_json(pair, "first-last", every, picks)


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_written_manifest_validates(family):
    path, _ = family
    data = json.loads(path.read_text())
    VALIDATOR.validate(data)
    assert data["members"] and all(m["files"] for m in data["members"])
    # Member paths are relative to the manifest; the files they list exist there.
    for m in data["members"]:
        assert not Path(m["path"]).is_absolute()
        assert sorted(m["files"]) == sorted(p.name for p in (path.parent / m["path"]).iterdir())
    assert stat.S_IMODE(path.stat().st_mode) & 0o044  # readable by others (umask permitting)


def test_dry_run_json_validates(family):
    _, dry = family
    VALIDATOR.validate(dry)
    assert dry["dry_run"] is True  # an extra property: allowed, readers ignore what they do not know


def _schema_paths(schema: dict, node: dict, prefix: str, out: set[str]) -> None:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    for k, sub in node.get("properties", {}).items():
        out.add(prefix + k)
        _schema_paths(schema, sub, prefix + k + ".", out)
    if "items" in node and isinstance(node["items"], dict):
        _schema_paths(schema, node["items"], prefix.rstrip(".") + "[].", out)


def _data_paths(data, prefix: str, out: set[str], free: tuple[str, ...]) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            out.add(prefix + k)
            if prefix + k not in free:
                _data_paths(v, prefix + k + ".", out, free)
    elif isinstance(data, list):
        for v in data:
            _data_paths(v, prefix.rstrip(".") + "[].", out, free)


def test_schema_documents_every_field_written(family):
    path, _ = family
    data = json.loads(path.read_text())
    data["baselines"] = [
        {
            "name": "shortgpt-4L",
            "method": "shortgpt",
            "num_layers": 4,
            "num_params": 1,
            "teacher_layers": [0, 1, 2, 5],
            "metrics": {},
        }
    ]
    VALIDATOR.validate(data)
    free = (
        "teacher.metrics",
        "student.metrics",
        "members[].metrics",
        "members[].files",
        "members[].sizes",
        "teacher.identity",
        "student.identity",
        "baselines[].metrics",
        "order.calibration",
        "order.steps",
    )
    written: set[str] = set()
    _data_paths(data, "", written, free)
    documented: set[str] = set()
    _schema_paths(SCHEMA, SCHEMA, "", documented)
    assert {"members[].tied", "members[].files", "plan.kept", "teacher.fingerprint"} <= written
    assert written - documented == set()
    # ... and every top-level, member and model field is required (written every time).
    assert set(SCHEMA["required"]) == set(data)
    # (sizes came later within schema version 2, so older manifests lack it: written every time, not required)
    assert set(SCHEMA["$defs"]["member"]["required"]) == set(data["members"][0]) - {"sizes"}
    # (identity, too, came later within schema version 2)
    assert set(SCHEMA["$defs"]["model"]["required"]) == set(data["teacher"]) - {"identity"}


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d.pop("members"),
        lambda d: d.update(schema_version=4),
        lambda d: d.update(format="something-else"),
        lambda d: d["members"][0].update(num_params="12M"),
        lambda d: d["members"][0].update(layers=[["teacher", 0, 1]]),
        lambda d: d["members"][0].update(embed_from="other"),
        lambda d: d["members"][0]["files"].update({"model.safetensors": "md5:abc"}),
        lambda d: d["teacher"].pop("fingerprint"),
        lambda d: d.update(created="yesterday"),
        lambda d: d["plan"].update(blocks=[[0, 2, 4]]),
    ],
)
def test_schema_rejects_broken_manifests(family, break_it):
    path, _ = family
    data = copy.deepcopy(json.loads(path.read_text()))
    break_it(data)
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(data)


def test_round_trip_and_unknown_fields(family, tmp_path):
    path, _ = family
    data = json.loads(path.read_text())
    m = FamilyManifest.read(path)
    assert m.to_json() == data
    # A newer boomerang may add fields within schema version 2: this one ignores them.
    newer = copy.deepcopy(data)
    newer["future_top"] = 1
    newer["members"][0]["future_member_field"] = {"x": 1}
    newer["teacher"]["future_model_field"] = "y"
    assert FamilyManifest.from_json(newer).to_json() == data
    m.members[0].metrics = {"arc_easy": {"acc": 0.5}}
    m.write(tmp_path / "family.json")
    assert FamilyManifest.read(tmp_path).members[0].metrics == {"arc_easy": {"acc": 0.5}}


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda d: d.update(schema_version=4), "schema version 4"),
        (lambda d: d.pop("format"), "not a boomerang family manifest"),
        (lambda d: d.pop("teacher"), "malformed manifest"),
        (lambda d: d["members"][0].pop("name"), "malformed manifest"),
        (lambda d: d["plan"].update(kept=[1, 2]), "invalid plan"),
    ],
)
def test_reader_errors_are_one_line_and_name_the_fix(family, tmp_path, edit, match):
    path, _ = family
    data = json.loads(path.read_text())
    edit(data)
    bad = tmp_path / "family.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(BoomerangError, match=match) as err:
        FamilyManifest.read(bad)
    assert "\n" not in str(err.value)
    bad.write_text("{not json")
    with pytest.raises(BoomerangError, match="not valid JSON"):
        FamilyManifest.read(bad)
    with pytest.raises(BoomerangError, match="run `boomerang family` first"):
        FamilyManifest.read(tmp_path / "nowhere")


def test_manifest_doc_describes_every_field():
    doc = (DOCS / "manifest.md").read_text()
    fields = set(SCHEMA["properties"])
    for d in ("model", "member", "baseline"):
        fields |= set(SCHEMA["$defs"][d]["properties"])
    fields |= set(SCHEMA["properties"]["order"]["properties"]) | set(SCHEMA["properties"]["plan"]["properties"])
    missing = [f for f in sorted(fields) if f"`{f}`" not in doc]
    assert missing == []


def test_schema_1_is_read_and_perplexity_rekeyed(family, tmp_path):
    """A version-1 manifest kept one perplexity per data key; it is migrated, nothing lost."""
    path, _ = family
    data = json.loads(path.read_text())
    old = {
        "nll": 2.0,
        "ppl": 7.389,
        "tokens": 4000,
        "seq_len": 128,
        "blocks": 32,
        "data_fingerprint": "sha256:ab",
        "trunk": True,
        "dtype": "float32",
        "evaluated": "2026-11-28T05:30:48Z",
    }
    v1 = copy.deepcopy(data)
    v1["schema_version"] = 1
    v1["members"][0]["metrics"] = {"perplexity": {"stdlib:validation": old}, "tasks": {"arc_easy": {"acc": 0.5}}}
    v1["teacher"]["metrics"] = {"perplexity": {"stdlib:validation": dict(old, nll=1.0)}}
    m = FamilyManifest.from_json(v1)
    assert m.schema_version == 3
    key = "stdlib:validation|seq_len=128|tokens=4000|bos=false|dtype=float32"
    assert perplexity_key(m.members[0].metrics["perplexity"][key]) == key
    assert m.members[0].metrics["perplexity"] == {key: dict(old, data="stdlib:validation", bos=False, split_rule=2)}
    assert m.members[0].metrics["tasks"] == {"arc_easy": {"acc": 0.5}}
    assert list(m.teacher.metrics["perplexity"]) == [key]
    m.write(tmp_path / "family.json")
    written = json.loads((tmp_path / "family.json").read_text())
    assert written["schema_version"] == 3
    VALIDATOR.validate(written)


def test_schema_2_records_of_text_sources_are_keyed_apart(family, tmp_path):
    """Split rule 1 cut text sources of < 50 files into paragraphs: such a record (a text path, or a hub id
    that could be one) gets split_rule 1 and its own key, never shared with a whole-file measurement;
    stdlib and row sources split the same way under both rules and keep their keys."""
    path, _ = family
    v2 = json.loads(path.read_text())
    v2["schema_version"] = 2
    base = {"nll": 2.0, "ppl": 7.389, "tokens": 4000, "seq_len": 128, "bos": False, "dtype": "float32"}
    datas = ["stdlib:validation", "notes.txt:validation", "corpus/+rows.jsonl:train", "hf:org/x:all", "org/x:all"]
    v2["members"][0]["metrics"] = {
        "perplexity": {perplexity_key(dict(base, data=d)): dict(base, data=d) for d in datas}
    }
    records = FamilyManifest.from_json(v2).members[0].metrics["perplexity"]
    rules = {r["data"]: (r["split_rule"], k.endswith("|split_rule=1")) for k, r in records.items()}
    assert rules == {
        "stdlib:validation": (2, False),
        "notes.txt:validation": (1, True),
        "corpus/+rows.jsonl:train": (1, True),
        "hf:org/x:all": (2, False),
        "org/x:all": (1, True),
    }
    fresh = dict(base, data="notes.txt:validation", split_rule=2, window="packed")
    assert perplexity_key(fresh) not in records and perplexity_key(dict(fresh, window="rolling")).endswith(
        "|window=rolling"
    )
