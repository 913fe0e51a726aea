"""What a scripted model answers: ScriptedResponse and the helpers that build it tersely."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, Unpack

from rho_agent.output import FINAL_ANSWER_TOOL


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

    ``output`` is a structured answer (JSON text, see ``structured``), sent the way the request
    asked for it: as a call of the ``final_answer`` tool when the request offers that tool, else
    as the text (structured output through ``response_format``).
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
    output: str | None = None

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


def structured(data: Any, **options: Unpack[ResponseOptions]) -> ScriptedResponse:
    """A structured answer, e.g. ``structured({"severity": 3})``: JSON data, or a ``str`` sent
    as it is (to send JSON that is invalid, or does not match the schema)."""
    output = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return ScriptedResponse(output=output, **options)


def shaped_for(response: ScriptedResponse, body: dict[str, Any]) -> ScriptedResponse:
    """A structured answer as text or as a ``final_answer`` call, as ``body`` asked for it."""
    if response.output is None:
        return response
    if _offers_final_answer(body):
        call = ScriptedToolCall(name=FINAL_ANSWER_TOOL, arguments=response.output)
        return dataclasses.replace(response, output=None, text="", tool_calls=[call])
    return dataclasses.replace(response, output=None, text=response.output)


def asks_json_schema(body: dict[str, Any]) -> bool:
    """The request asks for structured output (``response_format`` of type ``json_schema``)."""
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def _offers_final_answer(body: dict[str, Any]) -> bool:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return False
    return any(
        isinstance(tool, dict)
        and isinstance(tool.get("function"), dict)
        and tool["function"].get("name") == FINAL_ANSWER_TOOL
        for tool in tools
    )


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
