"""The HTTP server: OpenAI's ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``.

:class:`Server` holds the members (:mod:`.members`) and one batching worker
per member (:mod:`.batching`); :func:`create_app` is the FastAPI app over it.
Every error is an OpenAI-shaped ``{"error": {...}}`` with its status (404 for
an unknown model, listing the names; 400 naming the bad field; 401 without
the API key; 413 over the size cap) and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from .api import ApiError, ChatRequest, CompletionRequest, TextStream, validation_error
from .batching import Job, MemberWorker
from .generate import Sampling
from .limits import Guard
from .members import AutoChoiceError, Served, ServedMember, pick_auto

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServeOptions:
    """How the server behaves (``boomerang serve`` flags)."""

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_batch: int = 16
    batch_wait_s: float = 0.005
    chat_max_tokens: int = 512  # chat default: the rest of the context, at most this
    auto_key: str | None = None  # default perplexity_key of model "auto"


class Server:
    """Members, their workers, and the request logic the routes call."""

    def __init__(self, served: Served, options: ServeOptions | None = None) -> None:
        self.served = served
        self.options = options or ServeOptions()
        self.workers: dict[str, MemberWorker] = {}
        for name, m in served.members.items():
            tok = m.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else (min(m.eos) if m.eos else 0)
            self.workers[name] = MemberWorker(
                name, m.model, pad, m.eos, self.options.max_batch, self.options.batch_wait_s
            )
        self.accepting = False

    def start(self) -> None:
        for w in self.workers.values():
            w.start()
        self.accepting = True

    def stop(self) -> None:
        """No new requests; every accepted one finishes first."""
        self.accepting = False
        for w in self.workers.values():
            w.stop()

    def member_for(self, req: CompletionRequest | ChatRequest) -> ServedMember:
        if req.wants_auto:
            if req.max_perplexity is None:
                raise ApiError(
                    400, 'model "auto" needs max_perplexity (the largest perplexity allowed)', param="max_perplexity"
                )
            try:
                name = pick_auto(self.served, req.max_perplexity, req.perplexity_key or self.options.auto_key)
            except AutoChoiceError as exc:
                raise ApiError(400, str(exc), param=exc.field) from None
            return self.served.members[name]
        if req.model not in self.served.members:
            raise ApiError(
                404,
                f"the model {req.model!r} does not exist; models: {', '.join(self.served.names())}, auto",
                param="model",
                code="model_not_found",
            )
        return self.served.members[req.model]

    def budget(self, m: ServedMember, n_prompt: int, asked: int | None, default: int | None, field: str) -> int:
        """``max_tokens`` checked against the member's context; 400 when prompt (+ tokens) cannot fit."""
        limit = m.max_positions
        if limit is not None and n_prompt >= limit:
            raise ApiError(
                400,
                f"the prompt is {n_prompt} tokens; {m.name} takes at most {limit} tokens "
                "(prompt and completion together)",
                param=field,
                code="context_length_exceeded",
            )
        if asked is None:
            room = (limit - n_prompt) if limit is not None else self.options.chat_max_tokens
            return min(room, default if default is not None else self.options.chat_max_tokens)
        if limit is not None and n_prompt + asked > limit:
            raise ApiError(
                400,
                f"the prompt is {n_prompt} tokens and max_tokens {asked}; {m.name} takes at most {limit} tokens in all",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return asked

    def submit(
        self, m: ServedMember, ids: list[int], sampling: Sampling, stops: list[str]
    ) -> tuple["asyncio.Queue[tuple[str, Any]]", TextStream, Callable[[], None]]:
        """Hand a request to its member's worker; events (``text``/``done``) arrive on the queue."""
        if not self.accepting:
            raise ApiError(503, "the server is shutting down", kind="server_error")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stream = TextStream(m.tokenizer, stops)
        cancelled = [False]

        def on_token(tok: int) -> bool:
            going = stream.add(tok)
            piece = stream.chunk()
            if piece:
                loop.call_soon_threadsafe(events.put_nowait, ("text", piece))
            return going and not cancelled[0]

        def on_done(reason: str | None, error: BaseException | None) -> None:
            piece = stream.chunk(final=True)
            if piece:
                loop.call_soon_threadsafe(events.put_nowait, ("text", piece))
            loop.call_soon_threadsafe(events.put_nowait, ("done", (reason, error)))

        def cancel() -> None:
            cancelled[0] = True

        self.workers[m.name].submit(Job(ids, sampling, on_token, on_done))
        return events, stream, cancel


def _sampling(req: CompletionRequest | ChatRequest, max_tokens: int) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed)


def _prompt_ids(m: ServedMember, req: CompletionRequest) -> list[int]:
    if isinstance(req.prompt, list):
        vocab = m.model.config.get_text_config().vocab_size
        bad = [t for t in req.prompt if not 0 <= t < vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        ids = list(req.prompt)
    else:
        ids = list(m.tokenizer(req.prompt)["input_ids"])
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    return ids


def _chat_ids(m: ServedMember, req: ChatRequest) -> list[int]:
    if not getattr(m.tokenizer, "chat_template", None):
        raise ApiError(400, f"{m.name}'s tokenizer has no chat template; use /v1/completions", param="messages")
    messages = [{"role": x.role, "content": x.text()} for x in req.messages]
    try:
        out = m.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as exc:  # a template that rejects these messages (roles, order)
        raise ApiError(400, f"the chat template rejects these messages: {str(exc)[:200]}", param="messages") from None
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    return list(ids)


async def _collect(events: "asyncio.Queue[tuple[str, Any]]") -> str | None:
    """Wait for the end of a request; its finish reason (errors raise)."""
    while True:
        kind, value = await events.get()
        if kind == "done":
            reason, error = value
            if error is not None:
                raise ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")
            return reason


def _usage(n_prompt: int, n_out: int) -> dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


async def respond(server: Server, req: CompletionRequest | ChatRequest, m: ServedMember, ids: list[int]) -> Any:
    """Run one request: a JSON answer, or server-sent events when ``stream``."""
    from fastapi.responses import JSONResponse, StreamingResponse

    chat = isinstance(req, ChatRequest)
    asked = req.max_tokens
    if isinstance(req, ChatRequest) and req.max_completion_tokens is not None:
        asked = req.max_completion_tokens
    n = server.budget(m, len(ids), asked, None if chat else COMPLETION_DEFAULT_TOKENS, "messages" if chat else "prompt")
    events, stream, cancel = server.submit(m, ids, _sampling(req, n), req.stops())
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if req.stream:
        return StreamingResponse(
            _sse(events, stream, cancel, rid, created, m.name, chat), media_type="text/event-stream"
        )
    reason = await _collect(events)
    choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "token_ids": list(stream.ids)}
    if chat:
        choice["message"] = {"role": "assistant", "content": stream.text}
    else:
        choice.update(text=stream.text, logprobs=None)
    return JSONResponse(
        {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": m.name,
            "choices": [choice],
            "usage": _usage(len(ids), len(stream.ids)),
        }
    )


async def _sse(
    events: "asyncio.Queue[tuple[str, Any]]",
    stream: TextStream,
    cancel: Callable[[], None],
    rid: str,
    created: int,
    model: str,
    chat: bool,
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(piece: str | None, reason: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if piece:
                delta["content"] = piece
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": reason, "logprobs": None}
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n".encode()

    try:
        if chat:
            yield event(None, None, first=True)
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield event(value, None)
                continue
            reason, error = value
            if error is not None:
                err = ApiError(500, f"generation failed: {type(error).__name__}: {error}", kind="server_error")
                yield f"data: {json.dumps(err.body())}\n\n".encode()
            else:
                yield event(None, reason)
            yield b"data: [DONE]\n\n"
            return
    finally:
        cancel()  # a client that went away stops its row at the next token


def create_app(server: Server) -> Any:
    """The FastAPI app; the server's workers start and stop with the app's lifespan."""
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        server.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, server.stop)

    app = FastAPI(title="boomerang serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(Guard, api_key=server.options.api_key, max_body_bytes=server.options.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok" if server.accepting else "stopping"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card() for m in server.served.members.values()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name not in server.served.members:
            raise ApiError(
                404,
                f"the model {name!r} does not exist; models: {', '.join(server.served.names())}",
                param="model",
                code="model_not_found",
            )
        return server.served.members[name].card()

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        pool = server.served.pool
        return {
            "unique_tensors": len(pool.unique),
            "resident_bytes": pool.nbytes,
            "merged_tensors": pool.merged,
            "members": {n: w.stats.to_json() for n, w in server.workers.items()},
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        m = server.member_for(req)
        return await respond(server, req, m, _prompt_ids(m, req))

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        m = server.member_for(req)
        return await respond(server, req, m, _chat_ids(m, req))

    return app
