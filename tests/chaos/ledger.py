"""The chaos workers' tools: ``ledger`` (a side effect to count) and ``flood`` (a poison output).

Workers load them with ``RHO_AGENT_AGENT_FACTORY=tests.chaos.ledger:agent_with_chaos_tools``.
``ledger`` appends one line per execution to the file ``path``: the step's ``key`` (which job,
which turn) and the tool call id, so a test can count calls that ran more than once
(``count_ledger``). ``flood`` answers ``megabytes`` MB of text, as a runaway command would.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rho_agent import Agent, AgentConfig, ToolHandler, ToolInvocation, ToolOutput
from rho_agent.testing import ScriptedResponse, text, tool_call


class LedgerTool(ToolHandler):
    name = "ledger"
    description = "Append a line to a file."

    def __init__(self) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"path": {"type": "string"}, "key": {"type": "string"}},
            "required": ["path", "key"],
        }

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        key = invocation.arguments["key"]
        with open(invocation.arguments["path"], "a", encoding="utf-8") as ledger:  # noqa: ASYNC230
            ledger.write(f"{key} {invocation.call_id}\n")
        return ToolOutput(f"noted {key}")


class FloodTool(ToolHandler):
    name = "flood"
    description = "Print a lot of text."

    def __init__(self) -> None:
        self.parameters = {
            "type": "object",
            "properties": {"megabytes": {"type": "integer"}},
            "required": ["megabytes"],
        }

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        return ToolOutput("x" * (int(invocation.arguments["megabytes"]) * 1024 * 1024))


def agent_with_chaos_tools(config: AgentConfig) -> Agent:
    agent = Agent(config)
    agent.registry.register(LedgerTool())
    agent.registry.register(FloodTool())
    return agent


FACTORY = "tests.chaos.ledger:agent_with_chaos_tools"


def ledger_turns(ledger: Path, turns: int, delay: float) -> Any:
    """A model that calls ``ledger`` ``turns`` times per job (each answer after ``delay`` s),
    then answers ``done <prompt>``; the key of a step is ``<prompt>#<turn>``."""

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        done, prompt = 0, ""
        for message in reversed(body["messages"]):
            if message["role"] == "user":
                prompt = message["content"]
                break
            done += message["role"] == "tool"
        if done < turns:
            key = f"{prompt}#{done + 1}"
            return tool_call("ledger", {"path": str(ledger), "key": key}, delay=delay)
        return text(f"done {prompt}", delay=delay)

    return respond


@dataclass(frozen=True)
class Ledger:
    """What the ledger file says: every execution, and the ones that ran again."""

    runs: int
    steps: set[str]
    rerun_calls: int
    """Tool calls (same call id) executed more than once: a resumed job re-ran them."""
    redone_steps: int
    """Steps (job, turn) executed more than once under any call id (a re-asked model turn)."""


def read_ledger(ledger: Path) -> Ledger:
    lines = [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []
    calls = Counter(call for _, call in lines)
    steps = Counter(key for key, _ in lines)
    return Ledger(
        runs=len(lines),
        steps=set(steps),
        rerun_calls=sum(n - 1 for n in calls.values()),
        redone_steps=sum(n - 1 for n in steps.values()),
    )
