#!/usr/bin/env python3
"""``boomerang serve`` on a SmolLM2-135M family: resident memory, and a load test.

Memory: the resident set (``VmRSS`` of the server process, after one request
to every member it holds) of one ``boomerang serve`` holding all 15 sizes
(student, 13 members, teacher), of the same server holding only the teacher,
and of one Python process loading the same 15 member directories as separate
models (``from_pretrained`` + a 32-token forward each, which pages every
weight in), beside the floor (the interpreter with torch, transformers and
the server's libraries imported).

Load: one server holding 3 members (student, a middle member, teacher);
``--clients`` threads each send ``--requests`` greedy completions, round
robin over the 3 members, all at once; then the same requests one at a time.
Latency per request (p50/p95), errors, and completion tokens per second of
wall time.

The family is built once into ``--workdir`` (no training: ``init-student``,
then the student's decoder layers and final norm are moved by seeded noise to
stand in for distillation, embeddings kept as with ``distill
--freeze-embeddings``; then ``boomerang family --all``). ``--student`` uses a
real student instead.

    nice python bench/serve.py --workdir /tmp/s24            # markdown on stdout
    nice python bench/serve.py --workdir /tmp/s24 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\ndef main():",
    "class Stack:\n    def __init__(self):",
    "The capital of France is",
    "for i in range(10):",
    "Once upon a time,",
]

SEPARATE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
models = []
for d in sys.argv[1:]:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        m(input_ids=torch.arange(2, 34).unsqueeze(0), use_cache=False)
    models.append(m)
print(open("/proc/self/status").read())
"""

FLOOR = r"""
import torch, transformers, fastapi, uvicorn
from transformers import AutoModelForCausalLM
from transformers.models.llama import modeling_llama
import boomerang_cli.serve.app, boomerang_cli.cli
print(open("/proc/self/status").read())
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {key} in /proc status")


def cli(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "boomerang_cli", *args], env=env(), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"boomerang {' '.join(args)} failed:\n{p.stderr}")


def build_family(work: Path, student: str | None) -> Path:
    """The SmolLM2 family with every member (built once; reused when ``work/family`` is complete)."""
    fam = work / "family"
    if (fam / "family.json").exists():
        return fam
    if student is None:
        import torch
        from transformers import AutoModelForCausalLM

        student = str(work / "student")
        cli("init-student", "smollm2-135m", "-o", student, "--overwrite")
        m = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # stand-in for distillation; embeddings (tied) kept
            for name, p in m.named_parameters():
                if "embed_tokens" not in name:
                    p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        m.save_pretrained(student)
    cli("family", "smollm2-135m", student, "-o", str(fam), "--all", "--overwrite")
    return fam


class ServerProc:
    """``boomerang serve`` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, fam: Path, members: list[str] | None, threads: int | None = None) -> None:
        cmd = [sys.executable, "-m", "boomerang_cli", "serve", str(fam), "--port", "0", "--device", "cpu"]
        if members:
            cmd += ["--members", ",".join(members)]
        if threads:
            cmd += ["--threads", str(threads)]
        e = env()
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=e, text=True)
        self.url = ""
        while not self.url:
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"server did not start (exit {self.proc.wait()})")
            if "http://" in line:
                self.url = line[line.index("http://") :].strip()

    def status(self) -> str:
        return Path(f"/proc/{self.proc.pid}/status").read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def request(h, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    t = time.perf_counter()
    r = h.post(
        url + "/completions",
        json={"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        timeout=600,
    )
    out = {"latency_s": time.perf_counter() - t, "status": r.status_code, "model": model}
    if r.status_code == 200:
        out["tokens"] = r.json()["usage"]["completion_tokens"]
    return out


def memory(fam: Path) -> dict:
    import httpx

    manifest = json.loads((fam / "family.json").read_text())
    names = ["student"] + [m["name"] for m in manifest["members"]] + ["teacher"]
    out: dict = {"members": len(names)}
    for label, members in (("all", None), ("teacher_only", ["teacher"])):
        srv = ServerProc(fam, members)
        with httpx.Client() as h:
            for name in members or names:
                assert request(h, srv.url, name, "Hello", 4)["status"] == 200
            stats = h.get(srv.url + "/stats").json()
        st = srv.status()
        out[label] = {
            "rss_mb": status_kib(st, "VmRSS") / 1024,
            "peak_mb": status_kib(st, "VmHWM") / 1024,
            "resident_weights_mb": stats["resident_bytes"] / 1e6,
            "unique_tensors": stats["unique_tensors"],
            "exit_code": srv.stop(),
        }
    dirs = (
        [manifest["student"]["path"]]
        + [str(fam / m["path"]) for m in manifest["members"]]
        + [manifest["teacher"]["path"]]
    )
    for label, script, argv in (("separate", SEPARATE, dirs), ("floor", FLOOR, [])):
        p = subprocess.run([sys.executable, "-c", script, *argv], env=env(), capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr)
        out[label] = {"rss_mb": status_kib(p.stdout, "VmRSS") / 1024, "peak_mb": status_kib(p.stdout, "VmHWM") / 1024}
    out["saved_mb"] = sum(f.stat().st_size for d in dirs for f in Path(d).glob("*.safetensors")) / 1e6
    return out


def summarize(results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency_s"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": wall,
        "p50_s": statistics.median(lat) if lat else None,
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else None,
    }


def load(fam: Path, clients: int, per_client: int, max_tokens: int, threads: int | None) -> dict:
    import httpx

    manifest = json.loads((fam / "family.json").read_text())
    middle = manifest["members"][len(manifest["members"]) // 2]["name"]
    members = ["student", middle, "teacher"]
    plan = [
        (members[(c + i) % 3], PROMPTS[(c * per_client + i) % len(PROMPTS)])
        for c in range(clients)
        for i in range(per_client)
    ]
    srv = ServerProc(fam, members, threads)
    try:
        with httpx.Client() as h:  # warm-up: one request per member
            for m in members:
                request(h, srv.url, m, "Hello", 2)

        def client(c: int) -> list[dict]:
            with httpx.Client() as h:
                return [request(h, srv.url, *plan[c * per_client + i], max_tokens) for i in range(per_client)]

        t = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            concurrent = [r for rs in pool.map(client, range(clients)) for r in rs]
        wall_c = time.perf_counter() - t
        with httpx.Client() as h:
            stats = h.get(srv.url + "/stats").json()
            t = time.perf_counter()
            sequential = [request(h, srv.url, m, p, max_tokens) for m, p in plan]
            wall_s = time.perf_counter() - t
    finally:
        code = srv.stop()
    return {
        "members": members,
        "clients": clients,
        "requests_per_client": per_client,
        "max_tokens": max_tokens,
        "concurrent": summarize(concurrent, wall_c),
        "sequential": summarize(sequential, wall_s),
        "threads": threads,
        "batches": stats["members"],
        "exit_code": code,
    }


def markdown(mem: dict | None, ld: dict | None) -> str:
    lines = []
    if mem:
        t = mem["teacher_only"]["rss_mb"]
        lines += ["| process | RSS (MB) | peak (MB) | x teacher-only server |", "|---|---:|---:|---:|"]
        for label, what in (
            ("floor", "python + torch + transformers + FastAPI/uvicorn + boomerang imported"),
            ("teacher_only", "`boomerang serve --members teacher`"),
            ("all", f"`boomerang serve` holding all {mem['members']} sizes"),
            ("separate", f"{mem['members']} separate `from_pretrained` loads (+ forward)"),
        ):
            r = mem[label]
            lines.append(f"| {what} | {r['rss_mb']:.0f} | {r['peak_mb']:.0f} | {r['rss_mb'] / t:.2f} |")
        lines += [
            "",
            f"On disk: {mem['saved_mb']:.0f} MB of safetensors for the {mem['members']} sizes. "
            f"Resident weights: all sizes {mem['all']['resident_weights_mb']:.0f} MB in "
            f"{mem['all']['unique_tensors']} unique tensors; teacher only "
            f"{mem['teacher_only']['resident_weights_mb']:.0f} MB.",
            "",
        ]
    if ld:
        lines += [
            f"Load: {ld['clients']} clients x {ld['requests_per_client']} greedy requests, "
            f"max_tokens {ld['max_tokens']}, over {', '.join(ld['members'])} (--threads {ld['threads']}).",
            "",
            "| mode | requests | errors | wall (s) | p50 (s) | p95 (s) | tokens/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for mode in ("concurrent", "sequential"):
            r = ld[mode]
            lines.append(
                f"| {mode} | {r['requests']} | {r['errors']} | {r['wall_s']:.1f} | {r['p50_s']:.2f} | "
                f"{r['p95_s']:.2f} | {r['tokens_per_s']:.1f} |"
            )
        lines += [
            "",
            "Batches (concurrent phase): "
            + "; ".join(
                f"{n}: {b['requests']} requests in {b['batches']} batches, largest {b['largest_batch']}"
                for n, b in ld["batches"].items()
            ),
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/boomerang-bench-serve"))
    ap.add_argument("--student", default=None, help="A trained SmolLM2 student (default: a stand-in).")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2, help="Requests per client.")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="serve --threads for the load test (1: fastest on CPUs shared with other work; 0: torch's)",
    )
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    fam = build_family(args.workdir, args.student)
    mem = None if args.skip_memory else memory(fam)
    ld = None if args.skip_load else load(fam, args.clients, args.requests, args.max_tokens, args.threads or None)
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"machine": info, "memory": mem, "load": ld}, indent=2))
    else:
        print(markdown(mem, ld))


if __name__ == "__main__":
    main()
