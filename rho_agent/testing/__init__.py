"""Test doubles for rho-agent and for your own tests.

``ScriptedModelServer`` is an OpenAI-compatible HTTP server on 127.0.0.1 that answers from a
script, so tests drive the real ``openai`` client and never reach a real model. See
docs/testing.md.
"""

from __future__ import annotations

from rho_agent.testing._behaviours import behaviour
from rho_agent.testing._responses import (
    RecordedRequest,
    Responder,
    ScriptedResponse,
    ScriptedToolCall,
    ScriptedUsage,
    error,
    structured,
    text,
    tool_call,
)
from rho_agent.testing._server import ScriptedModelServer
from rho_agent.testing._spawn import SpawnedModelServer

__all__ = [
    "RecordedRequest",
    "Responder",
    "ScriptedModelServer",
    "ScriptedResponse",
    "ScriptedToolCall",
    "ScriptedUsage",
    "SpawnedModelServer",
    "behaviour",
    "error",
    "structured",
    "text",
    "tool_call",
]
