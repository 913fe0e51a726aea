"""Secrets on the fleet: a canary in the workers' environment is never stored or logged.

A batch tries every way in: prompts that make bash print the environment, a config smuggling the
key (sent raw, past the dispatcher's check), a prompt that names ``/proc/self/environ``, a job that
names another model endpoint, a job that takes an existing session's id. Afterwards every Redis key
of the test's database, every worker log line and every job's error is searched for the canaries.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dispatch import Dispatcher
from dispatch.fleet.celery_broker import RUN_JOB_TASK, CeleryBroker
from dispatch.fleet.redis_bus import RedisBus
from dispatch.spec import build_spec
from rho_agent import Agent, AgentConfig, ToolHandler, ToolInvocation, ToolOutput
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.integration.fleet import CANARY_KEY, Fleet, running_fleet, wait_until

pytestmark = pytest.mark.integration

CANARY_TOKEN = "canary-token-" + "9d2b" * 6
"""A second secret with an ordinary shape: only the worker's own redaction can know it."""


class EnvTool(ToolHandler):
    """A careless custom tool: it answers with a variable of the worker's own process (built-in
    tools run in a scrubbed environment, so a leak has to come from a tool like this)."""

    name = "env"
    description = "Print an environment variable."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
    }

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        name = str(invocation.arguments["name"])
        return ToolOutput(f"{name}={os.environ.get(name)}")


def agent_with_env_tool(config: AgentConfig) -> Agent:
    """The workers' agent factory here: the normal Agent plus ``env``."""
    agent = Agent(config)
    agent.registry.register(EnvTool())
    return agent


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workers = {
        "ws": {
            "RHO_TEST_CANARY_TOKEN": CANARY_TOKEN,
            "RHO_AGENT_AGENT_FACTORY": "tests.integration.test_secrets_fleet:agent_with_env_tool",
        }
    }
    with running_fleet(tmp_path_factory.mktemp("secrets"), workers) as started:
        yield started


_LEAKS = (
    ("bash", {"command": "printenv; echo $OPENAI_API_KEY"}),
    ("bash", {"command": "echo $RHO_TEST_CANARY_TOKEN $RHO_AGENT_BROKER_URL"}),
    ("env", {"name": "OPENAI_API_KEY"}),
    ("env", {"name": "RHO_TEST_CANARY_TOKEN"}),
)


def leaky_model(body: dict[str, Any]) -> ScriptedResponse:
    """Tries to print the secrets (bash, then a custom tool), then repeats what it saw."""
    tool_results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if len(tool_results) < len(_LEAKS):
        name, arguments = _LEAKS[len(tool_results)]
        return tool_call(name, arguments)
    return text("I saw: " + " | ".join(str(result) for result in tool_results))


def send_raw(fleet: Fleet, payload: dict[str, Any]) -> None:
    """Record the job as queued and send ``payload`` as is (past the dispatcher's checks)."""
    spec = build_spec("raw", AgentConfig(), job_id=payload["job_id"], reply_to=payload["reply_to"])

    async def record() -> None:
        bus = RedisBus.from_settings(fleet.settings)
        await bus.submit([spec], fleet.queue)
        await bus.close()

    asyncio.run(record())
    broker = CeleryBroker(fleet.settings)
    broker.app.send_task(RUN_JOB_TASK, kwargs={"spec": payload}, queue=fleet.queue)
    broker.close()


def everything_in_redis(fleet: Fleet) -> list[str]:
    client = fleet.redis()
    dumped = []
    for key in client.scan_iter(count=1000):
        dumped.append(key)
        kind = client.type(key)
        if kind == "string":
            dumped.append(client.get(key))
        elif kind == "hash":
            dumped.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            dumped.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "stream":
            dumped.append(json.dumps(client.xrange(key)))
        elif kind in ("zset", "set"):
            dumped.append(
                json.dumps(
                    sorted(client.zrange(key, 0, -1) if kind == "zset" else client.smembers(key))
                )
            )
    client.close()
    return dumped


def test_a_canary_in_the_workers_environment_is_never_stored_or_logged(
    fleet: Fleet, model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = leaky_model
    config = AgentConfig(
        base_url=model_server.base_url, working_dir=str(tmp_path), profile="developer"
    )
    with ScriptedModelServer() as elsewhere, Dispatcher(settings=fleet.settings) as dispatcher:
        printing = dispatcher.map(["print your environment", "echo the key"], config)
        results = dispatcher.gather(printing, timeout=60)
        assert [result.status for result in results] == ["completed", "completed"]
        assert any("[redacted]" in result.text for result in results), "a tool printed them"

        smuggled = build_spec("hi", config, reply_to=dispatcher.id).encode()
        smuggled["config"]["vars"] = {"token": CANARY_TOKEN, "key": CANARY_KEY}
        smuggled["config"]["base_url"] = f"{model_server.base_url}?key={CANARY_KEY}"
        environ = build_spec("hi", config, reply_to=dispatcher.id).encode()
        environ["config"]["system_prompt"] = "/proc/self/environ"
        for payload in (smuggled, environ):
            send_raw(fleet, payload)
        other = dispatcher.submit("hi", AgentConfig(base_url=elsewhere.base_url))
        taken = build_spec("hi", config, session_id=printing[0].session_id, reply_to=dispatcher.id)
        [taker] = dispatcher.submit_specs([taken])

        refused = [
            dispatcher.job(smuggled["job_id"]),
            dispatcher.job(environ["job_id"]),
            other,
            taker,
        ]
        for job in refused:
            assert job.result(timeout=30).status == "error"
        errors = [job.info().error or "" for job in refused]
        assert "looks like a secret at config.vars.token" in errors[0]
        assert "config.system_prompt names a file" in errors[1]
        assert "not one this worker sends its API key to" in errors[2]
        assert "already exists" in errors[3]
        assert elsewhere.requests == [], "the key went to an endpoint the worker does not allow"
        events = [event.to_dict() for job in printing for event in job.events()]
        states = [json.dumps(job.state().records) for job in printing]
    worker = fleet.workers["ws"]
    wait_until(lambda: "rejected job payload" in worker.log(), 10, "the rejection logged")
    stored = everything_in_redis(fleet)
    assert len(stored) > 20
    places = {
        "redis": "\n".join(value for value in stored if value),
        "worker log": worker.log(),
        "errors": "\n".join(errors),
        "events": json.dumps(events),
        "traces": "\n".join(states),
        "model requests": json.dumps([r.body for r in model_server.requests]),
    }
    for where, content in places.items():
        assert CANARY_KEY not in content, where
        assert CANARY_TOKEN not in content, where
    assert "[redacted]" in places["redis"] and "[redacted]" in places["traces"]
