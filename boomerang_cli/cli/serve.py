"""``boomerang serve``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import typer

from .app import app
from .common import err_console, handle_errors, split_list
from .options import TrustRemoteCode

if TYPE_CHECKING:
    import socket

    from ..serve.members import Served


@app.command("serve")
def serve_cmd(
    family: str = typer.Argument(..., help="A family (its directory or family.json), or one model directory."),
    members: Optional[str] = typer.Option(
        None,
        "--members",
        help="Only these members, e.g. student,member-18L,teacher (default: every member, "
        "student and teacher included).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port, printed)."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        help="Require Authorization: Bearer KEY on every /v1 request (default: "
        "$BOOMERANG_API_KEY if set, else no key).",
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="Hold the weights as fp32 (default), bf16 or fp16."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="CPU threads per forward pass (default: torch's; 1 is fastest when other processes share the CPUs).",
    ),
    max_batch: int = typer.Option(16, "--max-batch", help="Most requests one member decodes together."),
    batch_wait_ms: float = typer.Option(
        5.0, "--batch-wait-ms", help="How long a member waits for more requests to batch with the first."
    ),
    max_body: str = typer.Option("1MB", "--max-body", help="Largest request body accepted (413 above it)."),
    auto_key: Optional[str] = typer.Option(
        None,
        "--auto-key",
        help='Perplexity record (a manifest key) that model "auto" judges by when a request names none.',
    ),
    trust_remote_code: bool = TrustRemoteCode,
) -> None:
    """Serve every size of a family from one copy of its weights, behind the OpenAI API.

    Each member is built in memory over the teacher's and student's own
    tensors (nothing copied); a request's "model" picks the member, or "auto"
    with max_perplexity picks the smallest good enough. SIGTERM finishes the
    requests in flight, then exits 0. See docs/serve.md.
    """
    with handle_errors():
        from ..models import resolve_device
        from ..tensors import parse_dtype
        from ..units import parse_size

        names = _checked_flags(members, max_batch, threads)
        from ..serve.app import ServeOptions, Server, create_app
        from ..serve.members import open_members, require_source
        from ..serve.run import bind, serve_forever

        require_source(family)
        sock = bind(host, port)  # before loading: a taken port fails in a second, not after minutes
        served = open_members(family, names, parse_dtype(dtype), resolve_device(device), trust_remote_code)
        options = ServeOptions(
            api_key=api_key or os.environ.get("BOOMERANG_API_KEY") or None,
            max_body_bytes=parse_size(max_body),
            max_batch=max_batch,
            batch_wait_s=batch_wait_ms / 1000,
            auto_key=auto_key,
        )
        server = Server(served, options)
        _announce(served, host, sock)
        serve_forever(create_app(server), sock)
        err_console.print("stopped: every request in flight finished", markup=False, highlight=False)


def _checked_flags(members: Optional[str], max_batch: int, threads: Optional[int]) -> Optional[list[str]]:
    """What can be refused before a model loads (the serve extra, the flags' ranges); ``--threads`` applied.
    The member names asked for (None: every member)."""
    from ..errors import BoomerangError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise BoomerangError("serving needs FastAPI and uvicorn; pip install 'boomerang-cli[serve]'") from None
    names = split_list([members]) if members else None
    if members is not None and not names:
        raise BoomerangError("--members is empty; name members like --members student,teacher")
    if max_batch < 1:
        raise BoomerangError("--max-batch must be at least 1")
    if threads is not None:
        if threads < 1:
            raise BoomerangError("--threads must be at least 1")
        import torch

        torch.set_num_threads(threads)
    return names


def _announce(served: Served, host: str, sock: socket.socket) -> None:
    """One line on stderr: what is served, from how many unique tensors, and where."""
    from ..serve.run import bound_port

    shown = f"[{host}]" if ":" in host else host
    err_console.print(
        f"serving {len(served.members)} members ({', '.join(served.names())}) from {served.source}: "
        f"{len(served.pool.unique)} unique tensors, {served.pool.nbytes / 1e6:.1f} MB; "
        f"OpenAI API at http://{shown}:{bound_port(sock)}/v1",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
