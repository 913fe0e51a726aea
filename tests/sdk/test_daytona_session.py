"""Sessions with a DaytonaBackend, end to end: the scripted model calls tools, which run in the
fake Daytona's sandbox through the real SDK; each session owns (and deletes) one sandbox."""

from __future__ import annotations

import asyncio

from rho_agent import Agent, AgentConfig, Session
from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.testing import ScriptedModelServer, text, tool_call
from rho_agent.testing.fake_daytona import FakeDaytonaServer


def _agent(model_server: ScriptedModelServer, backend: DaytonaBackend | str) -> Agent:
    return Agent(AgentConfig(base_url=model_server.base_url, profile="developer", backend=backend))


async def test_tools_run_in_the_sessions_sandbox_which_close_deletes(
    fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer
) -> None:
    model_server.script(
        tool_call("write", {"path": "hello.txt", "content": "from the agent\n"}),
        tool_call("bash", {"command": "cat hello.txt; echo $MODE"}),
        text("done"),
    )
    template = DaytonaBackend(env_vars={"MODE": "sandboxed"})
    async with Session(_agent(model_server, template)) as session:
        assert fake_daytona.created == [], "no sandbox before the first tool call"
        result = await session.run(prompt="write and show a file")
        assert result.status == "completed", result.events
        outputs = [event.tool_result for event in result.events if event.type == "tool_end"]
        assert outputs[1] is not None and "from the agent\nsandboxed" in outputs[1]
        sandbox = await session.get_sandbox()
        assert fake_daytona.running == [sandbox.id]
        assert (fake_daytona.sandboxes[0].root / "hello.txt").read_text() == "from the agent\n"
    assert fake_daytona.running == []


async def test_sessions_of_one_agent_get_separate_sandboxes(
    fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer
) -> None:
    agent = _agent(model_server, DaytonaBackend())
    first, second = Session(agent), Session(agent)
    try:
        one, two = await asyncio.gather(first.get_sandbox(), second.get_sandbox())
        assert one.id != two.id
        await first.close()
        assert fake_daytona.running == [two.id], "closing one session left the other's sandbox"
    finally:
        await first.close()
        await second.close()


async def test_backend_daytona_by_name_uses_the_default_snapshot(
    fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer
) -> None:
    async with Session(_agent(model_server, "daytona")) as session:
        sandbox = await session.get_sandbox()
        assert sandbox.id in fake_daytona.running
    request = fake_daytona.sandboxes[0].request
    assert "snapshot" not in request or request["snapshot"] is None
    assert request["autoStopInterval"] == 15 and request["autoDeleteInterval"] == 0


async def test_a_config_with_a_daytona_backend_round_trips_as_data(
    fake_daytona: FakeDaytonaServer, model_server: ScriptedModelServer
) -> None:
    config = AgentConfig(
        base_url=model_server.base_url,
        profile="developer",
        backend=DaytonaBackend(setup_commands=["echo ready > ready.txt"], auto_stop_interval=7),
    )
    again = AgentConfig.from_dict(config.to_dict())
    assert isinstance(again.backend, DaytonaBackend)
    model_server.script(tool_call("read", {"path": "ready.txt"}), text("ok"))
    async with Session(Agent(again)) as session:
        result = await session.run(prompt="is it ready?")
    tool_results = [event.tool_result for event in result.events if event.type == "tool_end"]
    assert tool_results and "ready" in (tool_results[0] or "")
    assert fake_daytona.sandboxes[0].request["autoStopInterval"] == 7
