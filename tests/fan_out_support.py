"""A scripted model for fan-out tests: a parent that calls ``fan_out``, children that answer.

A request whose first user message is ``child N`` is a child: it answers ``answer N`` (or
``{"n": N}`` when asked for JSON) after ``child_delay`` s. Any other request is the parent: it
calls ``fan_out`` with ``children`` prompts, and once it has the tool's result it answers with
that result (so a test can read what the parent saw).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rho_agent import AgentConfig, PermissionProfile
from rho_agent.testing import ScriptedResponse, text, tool_call
from rho_agent.testing._responses import RecordedRequest

FANNER = PermissionProfile("fanner", shell="readonly", write="none", grants={"fan_out"})
"""The readonly profile plus the ``fan_out`` grant."""


def fan_out_config(base_url: str, working_dir: str, **extras: Any) -> AgentConfig:
    return AgentConfig(base_url=base_url, working_dir=working_dir, profile=FANNER, extras=extras)


def first_user(body: dict[str, Any]) -> str:
    return next(str(m.get("content")) for m in body["messages"] if m["role"] == "user")


def fan_out_model(children: int, *, child_delay: float = 0.0, **fan_out_args: Any) -> Any:
    """The responder described in the module docstring; ``fan_out_args`` join the tool call."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        prompt = first_user(body)
        if prompt.startswith("child "):
            n = int(prompt.split()[1])
            wants_json = body.get("response_format") is not None
            answer = json.dumps({"n": n}) if wants_json else f"answer {n}"
            return text(answer, delay=child_delay)
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if not results:
            prompts = [f"child {n}" for n in range(children)]
            return tool_call("fan_out", {"prompts": prompts, **fan_out_args})
        return text(str(results[-1]["content"]))

    return respond


def tool_result(text_answer: str) -> dict[str, Any]:
    """The parent's answer parsed back into the ``fan_out`` tool's JSON result."""
    data = json.loads(text_answer)
    assert isinstance(data, dict)
    return data


def child_requests(requests: Sequence[RecordedRequest]) -> list[str]:
    """The prompts of the model requests children made (one per child model call)."""
    return [
        first_user(request.body)
        for request in requests
        if first_user(request.body).startswith("child ")
    ]
