"""Named built-in responders, the same in thread and subprocess mode.

Each is a pure function of the request body, so many concurrent sessions each get a consistent
conversation from one server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from rho_agent.testing._responses import Responder, ScriptedResponse, text, tool_call
from rho_agent.testing._workspace import workspace

BEHAVIOURS = ("echo", "tool-then-answer", "workspace", "noop-tools:N")

_Respond = Callable[[dict[str, Any]], ScriptedResponse]


def behaviour(name: str, delay: float = 0.0) -> Responder:
    """The built-in responder called ``name``, waiting ``delay`` seconds before every answer.

    ``echo`` answers ``"Echo: <last user message>"``. ``tool-then-answer`` calls the ``list`` tool
    with ``{"path": "."}`` unless the last message is a tool result, which it then summarises as
    ``"Done: <first line of the result>"``. ``workspace`` reads the file the prompt names, or lists
    the working directory, and answers from what it found, specifically to the question (what
    offline mode uses). ``noop-tools:N`` calls the ``noop`` tool with ``{}``
    until the current run (messages after the last user message) holds N tool results, then
    answers ``"done"``.
    """
    if delay < 0:
        raise ValueError(f"behaviour delay must be >= 0 seconds, got {delay!r}")
    if name == "echo":
        return _delayed(_echo, delay)
    if name == "tool-then-answer":
        return _delayed(_tool_then_answer, delay)
    if name == "workspace":
        return _delayed(workspace, delay)
    if name.startswith("noop-tools:"):
        turns = name.removeprefix("noop-tools:")
        if turns.isdigit():
            return _delayed(_noop_tools(int(turns)), delay)
    raise ValueError(
        f"unknown behaviour {name!r}; use one of {', '.join(BEHAVIOURS)} (N a whole number)"
    )


def _delayed(respond_now: _Respond, delay: float) -> _Respond:
    if delay == 0:
        return respond_now

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        return dataclasses.replace(respond_now(body), delay=delay)

    return respond


def _echo(body: dict[str, Any]) -> ScriptedResponse:
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return text(f"Echo: {_content(message)}")
    return text("Echo: ")


def _tool_then_answer(body: dict[str, Any]) -> ScriptedResponse:
    messages = _messages(body)
    if messages and messages[-1].get("role") == "tool":
        lines = _content(messages[-1]).strip().splitlines()
        return text(f"Done: {lines[0] if lines else '(no output)'}")
    return tool_call("list", {"path": "."})


def _noop_tools(turns: int) -> _Respond:
    def respond(body: dict[str, Any]) -> ScriptedResponse:
        done = 0
        for message in reversed(_messages(body)):
            role = message.get("role")
            if role == "user":
                break
            done += role == "tool"
        return tool_call("noop", {}) if done < turns else text("done")

    return respond


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _content(message: dict[str, Any]) -> str:
    """A message's text, whether ``content`` is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""
