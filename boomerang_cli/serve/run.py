"""Running the app: bind the socket first (a taken port is a one-line error), then uvicorn.

On SIGTERM or SIGINT uvicorn stops accepting connections, waits for the
requests in flight to finish (streams included), then the app's lifespan
stops the member workers; :func:`serve_forever` then returns normally, so
the process exits 0. (uvicorn re-raises the signal it caught once it is
done; the handlers installed here absorb that.)
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from ..errors import BoomerangError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BoomerangError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port or stop what holds it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def serve_forever(app: Any, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT, finishing in-flight requests first."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=None)
    server = uvicorn.Server(config)
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:
        raise BoomerangError("the server did not start (see the log above)")
