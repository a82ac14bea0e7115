"""The OpenAI request bodies the server accepts, the errors it answers with, and text out of tokens.

Bodies are pydantic models, so a wrong type or an out-of-range value is a
400 naming the field (``error.param``), the shape OpenAI's clients parse.
Fields beyond OpenAI's: ``max_perplexity`` and ``perplexity_key`` (the
budget of ``model: "auto"``), and each choice's ``token_ids`` in answers.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status; the server keeps serving."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Common(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1)
    user: str | None = None
    size: str | None = None  # "auto": same as model "auto"
    max_perplexity: float | None = Field(None, gt=0.0)
    perplexity_key: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def wants_auto(self) -> bool:
        return self.model == "auto" or self.size == "auto"


class CompletionRequest(_Common):
    prompt: Union[str, list[int]]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        """The message's text (content parts of type ``text`` joined)."""
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


_TYPE_TAG = re.compile(r"str|int|float|bool|none|.*\[.*\]")


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A pydantic/FastAPI validation failure as one 400 naming the first bad field."""
    first: dict[str, Any] = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        ctx: dict[str, Any] = first.get("ctx") or {}
        return ApiError(400, f"malformed JSON body: {ctx.get('error', first.get('msg'))}")
    # A union's error names the member type it tried (``prompt.str``, ``stop.list[str]``): not a field.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _TYPE_TAG.fullmatch(str(p))]
    param = ".".join(loc) or None
    where = f"field {param!r}: " if param else ""
    return ApiError(400, f"{where}{first.get('msg', 'invalid value')}", param=param)


class TextStream:
    """Text of the tokens so far, cut at the first stop string; hands out what is safe to show.

    While streaming, the last ``len(longest stop) - 1`` characters are held back
    (they may begin a stop string), and so is a trailing partial UTF-8 character.
    """

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def add(self, token: int) -> bool:
        """Add a token; False once a stop string has appeared (the text ends before it)."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            return False
        self.text = text
        return True

    def chunk(self, final: bool = False) -> str:
        """The text not handed out yet that can be shown now (all of it when ``final``)."""
        safe = len(self.text)
        if not final:
            safe -= self.hold
            if self.text.endswith("\ufffd"):
                safe = min(safe, len(self.text) - 1)
        if safe <= self.sent:
            return ""
        out = self.text[self.sent : safe]
        self.sent = safe
        return out
