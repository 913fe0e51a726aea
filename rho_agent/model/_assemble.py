"""Assemble streamed chat-completion chunks (plain dicts) into a ModelTurn.

Chunks are parsed with orjson (``jsoncodec.loads``) straight from the SSE bytes: building a
pydantic object per chunk is what makes the stock client CPU-bound, and the loop only needs a
few fields.
"""

from __future__ import annotations

import json
from typing import Any

from rho_agent import jsoncodec
from rho_agent.errors import ModelError
from rho_agent.model.base import ModelRequest, ModelTurn, TextCallback, TokenUsage


class TurnAssembler:
    """Accumulates text, tool-call deltas and usage from chunks of one streamed response."""

    def __init__(self, on_text: TextCallback | None) -> None:
        self._on_text = on_text
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ModelError(f"the model API reported an error mid-stream: {message}")
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self._text.append(content)
                if self._on_text is not None:
                    self._on_text(content)
            for call_delta in delta.get("tool_calls") or ():
                self._feed_call(call_delta)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def _feed_call(self, call_delta: dict[str, Any]) -> None:
        index = int(call_delta.get("index") or 0)
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": []})
        if call_delta.get("id"):
            call["id"] = call_delta["id"]
        function = call_delta.get("function") or {}
        if function.get("name"):
            call["name"] += function["name"]
        if function.get("arguments"):
            call["arguments"].append(function["arguments"])

    def turn(self, request: ModelRequest) -> ModelTurn:
        text = "".join(self._text)
        tool_calls = [
            {
                "id": call["id"] or f"call_{index}",
                "type": "function",
                "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
            }
            for index, call in sorted(self._calls.items())
        ]
        return ModelTurn(
            text=text,
            tool_calls=tool_calls,
            usage=self._usage(request, text, tool_calls),
            finish_reason=self.finish_reason,
        )

    def _usage(
        self, request: ModelRequest, text: str, tool_calls: list[dict[str, Any]]
    ) -> TokenUsage:
        if self.usage is None:
            return TokenUsage(
                input_tokens=estimate_prompt_tokens(request.messages, request.tools),
                output_tokens=estimate_tokens(text + json.dumps(tool_calls)),
                estimated=True,
            )
        prompt_details = self.usage.get("prompt_tokens_details") or {}
        completion_details = self.usage.get("completion_tokens_details") or {}
        return TokenUsage(
            input_tokens=int(self.usage.get("prompt_tokens") or 0),
            output_tokens=int(self.usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        )


def estimate_tokens(text: str) -> int:
    """About four characters a token: good enough for budgets when the server reports nothing."""
    return (len(text) + 3) // 4


def estimate_prompt_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """A request's size in tokens. The tool definitions count: with a short history they are
    most of a request (about 1,300 of the 1,400 tokens of a first one). Compact JSON, by orjson:
    it runs before every request over the whole history."""
    return estimate_tokens(jsoncodec.dumps([messages, tools]))
