"""What a scripted model answers: ScriptedResponse and the helpers that build it tersely."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack


@dataclass(frozen=True)
class ScriptedToolCall:
    """One tool call the model makes.

    ``arguments`` is a dict (sent as JSON) or a raw string, so a test can send invalid JSON.
    Without ``id`` the server makes a unique one (``call_<n>``).
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ScriptedUsage:
    """Token counts reported for one response (``total_tokens`` is prompt + completion)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class ScriptedResponse:
    """One model answer, or one HTTP error, for one request.

    ``usage="auto"`` estimates tokens from the request and answer sizes (about 4 bytes a token);
    ``usage=None`` sends no usage at all, even when the client asks for it with
    ``stream_options.include_usage``. Text and each tool call's arguments are streamed in pieces of
    ``text_chunk_size`` / ``arguments_chunk_size`` characters. ``delay`` is waited before the
    first byte, ``chunk_delay`` between chunks. ``error_status`` answers an OpenAI-shaped error
    instead; ``disconnect_after_chunks`` drops the connection after that many stream chunks (a
    reset: the client sees a broken body). ``headers`` are added to the HTTP response (e.g.
    ``{"retry-after-ms": "10"}``).

    Quirks of real servers, to test against: ``end_after_chunks`` ends the body cleanly after that
    many chunks, with no ``finish_reason`` and no ``[DONE]`` (a server closing the connection
    mid-answer); ``usage_in_last_choice`` sends usage in the chunk carrying the ``finish_reason``
    instead of a ``choices: []`` chunk (llama.cpp); ``null_first_delta`` starts with a delta of
    only ``{"role": "assistant", "content": null}``. Tool-call ids of any shape are set with
    ``ScriptedToolCall.id``.
    """

    text: str = ""
    tool_calls: list[ScriptedToolCall] = field(default_factory=list)
    usage: ScriptedUsage | Literal["auto"] | None = "auto"
    finish_reason: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    text_chunk_size: int = 16
    arguments_chunk_size: int = 16
    error_status: int | None = None
    error_message: str | None = None
    error_code: str | None = None
    disconnect_after_chunks: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    end_after_chunks: int | None = None
    usage_in_last_choice: bool = False
    null_first_delta: bool = False

    def __post_init__(self) -> None:
        if self.delay < 0 or self.chunk_delay < 0:
            raise ValueError(
                f"ScriptedResponse delays must be >= 0 seconds, got delay={self.delay!r}, "
                f"chunk_delay={self.chunk_delay!r}"
            )
        if self.text_chunk_size < 1 or self.arguments_chunk_size < 1:
            raise ValueError(
                "ScriptedResponse chunk sizes must be >= 1 character, got "
                f"text_chunk_size={self.text_chunk_size!r}, "
                f"arguments_chunk_size={self.arguments_chunk_size!r}"
            )
        if self.error_status is not None and not 400 <= self.error_status <= 599:
            raise ValueError(
                f"ScriptedResponse.error_status must be an HTTP error status (400-599), "
                f"got {self.error_status!r}"
            )
        if self.disconnect_after_chunks is not None and self.disconnect_after_chunks < 0:
            raise ValueError(
                "ScriptedResponse.disconnect_after_chunks must be >= 0 or None, "
                f"got {self.disconnect_after_chunks!r}"
            )
        if self.end_after_chunks is not None and self.end_after_chunks < 0:
            raise ValueError(
                f"ScriptedResponse.end_after_chunks must be >= 0 or None, "
                f"got {self.end_after_chunks!r}"
            )
        if self.end_after_chunks is not None and self.disconnect_after_chunks is not None:
            raise ValueError(
                "ScriptedResponse takes end_after_chunks (a clean end) or "
                "disconnect_after_chunks (a reset), not both"
            )


@dataclass(frozen=True)
class RecordedRequest:
    """A request the server received: JSON body, lower-cased headers, path, arrival time."""

    body: dict[str, Any]
    headers: dict[str, str]
    path: str
    timestamp: float = field(default_factory=time.time)


Responder = Callable[[dict[str, Any]], ScriptedResponse | Awaitable[ScriptedResponse]]
"""Makes the answer for a request body; used when the script queue is empty. May be async."""


class ResponseOptions(TypedDict, total=False):
    """The ScriptedResponse fields the helpers accept as keywords."""

    usage: ScriptedUsage | Literal["auto"] | None
    finish_reason: str | None
    delay: float
    chunk_delay: float
    text_chunk_size: int
    arguments_chunk_size: int
    disconnect_after_chunks: int | None
    headers: dict[str, str]
    end_after_chunks: int | None
    usage_in_last_choice: bool
    null_first_delta: bool


def text(content: str, **options: Unpack[ResponseOptions]) -> ScriptedResponse:
    """A plain text answer, e.g. ``text("hi", delay=0.5)``."""
    return ScriptedResponse(text=content, **options)


def tool_call(
    name: str,
    arguments: dict[str, Any] | str | None = None,
    *,
    id: str | None = None,
    **options: Unpack[ResponseOptions],
) -> ScriptedResponse:
    """An answer calling one tool, e.g. ``tool_call("bash", {"command": "ls"})``.

    For parallel calls build ``ScriptedResponse(tool_calls=[ScriptedToolCall(...), ...])``.
    """
    call = ScriptedToolCall(name=name, arguments={} if arguments is None else arguments, id=id)
    return ScriptedResponse(tool_calls=[call], **options)


def error(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    delay: float = 0.0,
) -> ScriptedResponse:
    """An HTTP error with an OpenAI-shaped body, e.g. ``error(429)`` or
    ``error(400, code="context_length_exceeded")``."""
    return ScriptedResponse(
        error_status=status,
        error_message=message,
        error_code=code,
        headers=headers or {},
        delay=delay,
    )
