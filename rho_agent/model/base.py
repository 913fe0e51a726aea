"""The ModelClient seam: one streamed chat completion in, one assembled ModelTurn out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ModelRequest:
    """One chat-completions request (OpenAI format)."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)
    reasoning_effort: str | None = None
    service_tier: str | None = None
    response_format: dict[str, Any] | None = None
    max_output_tokens: int | None = None
    """The output cap sent to the server (``max_completion_tokens``); None sends none."""
    max_retries: int | None = None
    """Overrides the client's own retries of failed requests for this call (a rate-limited call
    sets 0, so the first 429 reaches the shared rate limiter instead of each client alone)."""
    timeout_s: float | None = None
    """How long the server may stay silent on this call (its answer, or the next chunk of its
    stream) before the attempt fails and is retried; None keeps the client's 600 s."""


@dataclass
class TokenUsage:
    """Tokens of one model call. ``estimated`` is true when the server sent no usage."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass
class ModelTurn:
    """What the model said in one call: text and/or tool calls (OpenAI ``tool_calls`` format)."""

    text: str
    tool_calls: list[dict[str, Any]]
    usage: TokenUsage
    finish_reason: str | None = None

    def assistant_message(self) -> dict[str, Any]:
        """The assistant message to append to the history (text kept alongside tool calls).

        ``content`` is null only beside tool calls, as the chat protocol allows: a message with
        neither is sent as ``""``, since some servers' templates render a null as the word "None".
        """
        if not self.tool_calls:
            return {"role": "assistant", "content": self.text}
        return {"role": "assistant", "content": self.text or None, "tool_calls": self.tool_calls}


TextCallback = Callable[[str], None]


@runtime_checkable
class ModelClient(Protocol):
    """Streams one chat completion; ``on_text`` gets each text delta as it arrives.

    Raises ``rho_agent.errors.ModelError`` for failures retries did not fix. Cancelling the
    awaiting task aborts the HTTP stream.
    """

    async def stream(
        self, request: ModelRequest, on_text: TextCallback | None = None
    ) -> ModelTurn: ...
