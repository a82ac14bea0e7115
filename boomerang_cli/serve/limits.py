"""What every ``/v1`` request must pass before a route sees it: the API key and the body size cap.

A plain ASGI middleware, so an oversized body is refused while it streams in
(by its ``Content-Length``, or once the bytes read pass the cap), before
anything is parsed or held in memory.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _error(
    send: Send,
    status: int,
    message: str,
    code: str,
    kind: str = "invalid_request_error",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Bearer API key (when set) and a request size cap on every ``/v1`` path."""

    def __init__(self, app: Any, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_key:
            return True
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        return hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1"):
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _error(
                send,
                401,
                "missing or wrong API key; send the header Authorization: Bearer <key>",
                "invalid_api_key",
                headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        headers = dict(scope.get("headers") or [])
        cap = self.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > cap:
            await _error(
                send,
                413,
                f"the request body is {int(length)} bytes; this server takes at most {cap}",
                "request_too_large",
            )
            return
        seen = 0
        refused = False  # a 413 has been sent: whatever the app answers after it is dropped

        async def counted() -> dict[str, Any]:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > cap:
                    refused = True
                    await _error(
                        send,
                        413,
                        f"the request body is over {cap} bytes, the most this server takes",
                        "request_too_large",
                    )
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: dict[str, Any]) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, guarded)
