"""OpenAI's chat-completions wire format: a ScriptedResponse as SSE events or one JSON body.

Everything is encoded straight to bytes by one compact JSON encoder on small dicts (no models),
because benchmarks push thousands of requests a second through this path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from rho_agent.testing._responses import ScriptedResponse, ScriptedUsage

DONE_EVENT = b"data: [DONE]\n\n"
_dumps = json.JSONEncoder(separators=(",", ":")).encode

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Completion:
    """Per-request facts the encoding needs besides the response itself."""

    seq: int
    created: int
    model: str
    prompt_bytes: int

    @property
    def id(self) -> str:
        return f"chatcmpl-scripted-{self.seq}"

    def call_id(self, index: int) -> str:
        return f"call_scripted_{self.seq}_{index}"


def error_body(status: int, message: str | None, code: str | None = None) -> bytes:
    """An OpenAI-shaped error: ``{"error": {"message", "type", "code", "param"}}``."""
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    if message is None:
        message = f"Scripted error {status}: {_phrase(status)}"
    error = {"message": message, "type": kind, "param": None, "code": code or default_code}
    return _dumps({"error": error}).encode()


def stream_events(
    response: ScriptedResponse, completion: Completion, *, include_usage: bool
) -> list[bytes]:
    """Every SSE event of a streamed answer, ``data: [DONE]`` last."""
    prefix = (
        f'data: {{"id":"{completion.id}","object":"chat.completion.chunk",'
        f'"created":{completion.created},"model":{_dumps(completion.model)},"choices":'
    )
    deltas = _deltas(response, completion)
    if response.null_first_delta:
        deltas.insert(0, {"content": None})
    events = []
    for index, delta in enumerate(deltas):
        if index == 0:
            delta = {"role": "assistant", **delta}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        events.append(f"{prefix}[{_dumps(choice)}]}}\n\n".encode())
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": _finish(response)}
    usage = usage_dict(response, completion.prompt_bytes) if include_usage else None
    if usage is not None and response.usage_in_last_choice:
        events.append(f'{prefix}[{_dumps(finish)}],"usage":{_dumps(usage)}}}\n\n'.encode())
    else:
        events.append(f"{prefix}[{_dumps(finish)}]}}\n\n".encode())
        if usage is not None:
            events.append(f'{prefix}[],"usage":{_dumps(usage)}}}\n\n'.encode())
    events.append(DONE_EVENT)
    return events


def completion_body(response: ScriptedResponse, completion: Completion) -> bytes:
    """The whole answer as one ``chat.completion`` JSON object (non-streaming requests)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": response.text if response.text or not response.tool_calls else None,
        "refusal": None,
    }
    if response.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or completion.call_id(index),
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call.arguments)},
            }
            for index, call in enumerate(response.tool_calls)
        ]
    body: dict[str, Any] = {
        "id": completion.id,
        "object": "chat.completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(response)}
        ],
    }
    usage = usage_dict(response, completion.prompt_bytes)
    if usage is not None:
        body["usage"] = usage
    return _dumps(body).encode()


def usage_dict(response: ScriptedResponse, prompt_bytes: int) -> dict[str, Any] | None:
    """The ``usage`` object, estimated at about 4 bytes a token when ``usage="auto"``."""
    usage = response.usage
    if usage is None:
        return None
    if usage == "auto":
        answer_chars = len(response.text) + sum(
            len(call.name) + len(_arguments(call.arguments)) for call in response.tool_calls
        )
        usage = ScriptedUsage(
            prompt_tokens=max(1, prompt_bytes // 4), completion_tokens=max(1, answer_chars // 4)
        )
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _deltas(response: ScriptedResponse, completion: Completion) -> list[dict[str, Any]]:
    """Text pieces, then each tool call: id and name first, then its argument fragments."""
    size = response.text_chunk_size
    deltas: list[dict[str, Any]] = [
        {"content": response.text[start : start + size]}
        for start in range(0, len(response.text), size)
    ]
    for index, call in enumerate(response.tool_calls):
        head = {
            "index": index,
            "id": call.id or completion.call_id(index),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        deltas.append({"tool_calls": [head]})
        arguments = _arguments(call.arguments)
        step = response.arguments_chunk_size
        deltas.extend(
            {"tool_calls": [{"index": index, "function": {"arguments": arguments[at : at + step]}}]}
            for at in range(0, len(arguments), step)
        )
    return deltas or [{"content": ""}]


def _finish(response: ScriptedResponse) -> str:
    if response.finish_reason is not None:
        return response.finish_reason
    return "tool_calls" if response.tool_calls else "stop"


def _arguments(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else _dumps(arguments)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"
