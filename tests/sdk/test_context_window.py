"""Every request is checked against the model's context window, tool definitions included,
before it is sent: compaction first if it makes the request fit, else a failed run that says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rho_agent import Agent, AgentConfig, ConfigError, Session, compaction
from rho_agent.pricing import FALLBACK_CONTEXT_WINDOW, context_window
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, text, tool_call
from tests.sdk.helpers import make_session
from tests.sdk.test_cli_run import cli_env, rho


def test_windows_come_from_the_catalogue_unless_configured() -> None:
    assert context_window("gpt-5-pro") == 400_000
    assert context_window("o3-mini") == 200_000
    assert context_window("gpt-4o-mini-2024-07-18") == 128_000
    assert context_window("my-local-llama") == FALLBACK_CONTEXT_WINDOW
    assert context_window("gpt-5-pro", 32_768) == 32_768


def test_a_yaml_config_sets_the_window_of_a_self_hosted_model(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("model: my-llama\nextras:\n  context_window: 32768\n", encoding="utf-8")
    assert Session(Agent(AgentConfig.from_file(path))).context_window == 32_768
    assert Session(Agent(AgentConfig(model="o3-pro"))).context_window == 200_000


@pytest.mark.parametrize("window", [0, -5, "32k", 1.5, True])
def test_a_bad_window_names_the_field(window: object) -> None:
    with pytest.raises(ConfigError, match=r"extras\.context_window") as caught:
        AgentConfig(extras={"context_window": window})
    assert repr(window) in str(caught.value)


async def test_a_request_that_cannot_fit_fails_before_it_is_sent(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    session = make_session(
        model_server, tmp_path, model="my-llama", extras={"context_window": 2000}
    )
    schemas = session.agent.registry.schemas()
    tools = compaction.count_tokens([], schemas) - compaction.count_tokens([], [])
    prompt = "x" * 4000  # ~1000 tokens: the history alone fits 2000, not with the tools
    assert compaction.count_tokens([{"role": "user", "content": prompt}], []) < 2000 < tools + 1000

    result = await session.run(prompt=prompt)

    assert result.status == "error"
    assert model_server.requests == []
    errors = [event.content or "" for event in result.events if event.type == "error"]
    assert len(errors) == 1
    needed = compaction.count_tokens(session.state.messages, schemas)
    history = compaction.count_tokens(session.state.messages, [])
    assert f"needs about {needed} tokens" in errors[0]
    assert f"(history {history}, tool definitions {needed - history})" in errors[0]
    assert "context window is 2000 tokens" in errors[0]
    assert "extras.context_window" in errors[0] and "--context-window" in errors[0]
    assert session.state.status == "error"


async def test_compaction_runs_first_when_it_makes_the_request_fit(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    def respond(body: dict[str, Any]) -> ScriptedResponse:
        if "compress" in body["messages"][0]["content"]:
            return text("SUMMARY")
        return text("long reply " + "y" * 2000)

    model_server.responder = respond
    session = make_session(model_server, tmp_path)
    for prompt in ["q1", "q2", "q3"]:
        await session.run(prompt=prompt)
    tools = session.agent.registry.schemas()
    next_request = [*session.state.messages, {"role": "user", "content": "q4"}]
    # Too big only with the tool definitions counted, and below the 80% mark without them.
    session.context_window = compaction.count_tokens(next_request, tools) - 50
    assert compaction.count_tokens(next_request, []) < 0.8 * session.context_window
    sent_before = len(model_server.requests)

    result = await session.run(prompt="q4")

    assert result.status == "completed"
    assert [e.type for e in result.events].count("compact_end") == 1
    sent = model_server.requests[sent_before:]
    assert "compress" in sent[0].body["messages"][0]["content"]
    request = sent[-1].body
    assert compaction.count_tokens(request["messages"], request["tools"]) <= (
        session.context_window
    )


async def test_with_auto_compaction_off_an_oversized_request_fails_and_says_so(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    session = make_session(model_server, tmp_path)
    session.auto_compact = False
    session.context_window = 500
    result = await session.run(prompt="hi")
    assert result.status == "error" and model_server.requests == []
    assert "auto compaction is off" in (result.events[-1].content or "")


def test_the_cli_takes_the_window_and_fails_a_run_that_cannot_fit(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("should not be asked"))
    done = rho(
        ["run", "hi", "--base-url", model_server.base_url, "--working-dir", str(tmp_path),
         "--model", "my-llama", "--context-window", "300"],
        cli_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "context window is 300 tokens" in done.stderr
    assert model_server.requests == []
    refused = rho(["run", "hi", "--context-window", "0"], cli_env(tmp_path))
    assert refused.returncode == 2 and "context-window" in refused.stderr


async def test_each_request_encodes_the_history_once(
    model_server: ScriptedModelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token estimate before every model request is a JSON encoding of the whole history: a
    # second one per request (auto compaction's check, then the window check) made every turn
    # O(history) twice. The history/tools split is worked out only for the error message.
    encoded: list[int] = []
    real = compaction.estimate_prompt_tokens

    def counting(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
        encoded.append(len(messages))
        return real(messages, tools)

    monkeypatch.setattr(compaction, "estimate_prompt_tokens", counting)
    model_server.script(
        tool_call("read_file", {"path": "nothing.txt"}),
        tool_call("read_file", {"path": "nothing.txt"}),
        text("done"),
    )
    session = make_session(model_server, tmp_path)
    await session.run("go")
    assert len(encoded) == len(model_server.requests) == 3
    with pytest.raises(compaction.ContextWindowExceeded, match=r"history \d+, tool definitions"):
        compaction.check_fits(
            10_000, [{"role": "user", "content": "hi"}], model="m", window=10, auto_compact=True
        )
