"""Redaction: a secret a tool prints, or one in an error, never reaches a trace, event or log."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from rho_agent import ToolHandler, ToolInvocation, ToolOutput
from rho_agent.redact import (
    REDACTED,
    RedactingFilter,
    Redactor,
    StreamRedactor,
    default_redactor,
    install_log_redaction,
    known_secrets,
)
from rho_agent.store.directory import SessionStore
from rho_agent.testing import ScriptedModelServer, text, tool_call
from rho_agent.tools._truncate import truncate_middle
from tests.sdk.helpers import make_session

CANARY = "canary-7f3a9c2e5b1d"
"""A value only the environment holds (under a secret name), so only redaction can hide it."""


@pytest.fixture
def canary_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RHO_TEST_SERVICE_TOKEN", CANARY)
    default_redactor.cache_clear()
    yield
    default_redactor.cache_clear()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("key sk-abcdefghijklmnop1234 end", f"key {REDACTED} end"),
        ("Authorization: Bearer abc.def-ghi_123", f"Authorization: Bearer {REDACTED}"),
        ("https://m.example/v1?key=sk-zz9&x=1", f"https://m.example/v1?key={REDACTED}&x=1"),
        ("api_key=hunter2hunter2", f"api_key={REDACTED}"),
        ('"password": "abcdefgh"', f'"password": "{REDACTED}"'),
        ("redis://:pw123456@host:6379/0", f"redis://:{REDACTED}@host:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672//", f"amqp://guest:{REDACTED}@127.0.0.1:5672//"),
        ("dtn_abcdefghijklmnopqrst", REDACTED),
        (f"echo {CANARY}!", f"echo {REDACTED}!"),
        ("https://api.openai.com/v1 and sk-short", "https://api.openai.com/v1 and sk-short"),
    ],
)
def test_secret_shapes_and_known_values_are_replaced(given: str, expected: str) -> None:
    assert Redactor([CANARY]).text(given) == expected


def test_redacting_json_text_keeps_it_json() -> None:
    arguments = json.dumps(
        {"u": "http://a:b", "v": "c@d", "h": "Bearer abcdefghij", "q": "x?key=sk-1&y", "k": CANARY}
    )
    redacted = Redactor([CANARY]).text(arguments)
    assert json.loads(redacted) == {
        "u": "http://a:b",
        "v": "c@d",
        "h": f"Bearer {REDACTED}",
        "q": f"x?key={REDACTED}&y",
        "k": REDACTED,
    }


def test_known_secrets_come_from_secret_names_and_url_passwords() -> None:
    env = {
        "OPENAI_API_KEY": "sk-live-0123456789",
        "DAYTONA_API_KEY": "dtn_key_value_1",
        "RHO_AGENT_BROKER_URL": "redis://:brokerpass@h:6379/0",
        "AWS_SECRET_ACCESS_KEY": "aws/secret+value",
        "HOME": "/home/someone",
        "SHORT_TOKEN": "1",
    }
    found = set(Redactor(known_secrets(env)).known)
    assert found == {"sk-live-0123456789", "dtn_key_value_1", "brokerpass", "aws/secret+value"}


def test_a_percent_encoded_url_password_is_known_decoded_too() -> None:
    redactor = Redactor(known_secrets({"RHO_AGENT_REDIS_URL": "redis://:p%40ss%2Fw0rd99@h:6379"}))
    assert redactor.text("AUTH p@ss/w0rd99 failed") == f"AUTH {REDACTED} failed"
    assert redactor.text("url p%40ss%2Fw0rd99") == f"url {REDACTED}"


class EnvTool(ToolHandler):
    """A careless custom tool: it answers with a variable of the agent's own process.

    (Built-in tools run in a scrubbed environment, so the leak here has to be in-process.)
    """

    name = "env"
    description = "Print an environment variable."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
    }

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        name = str(invocation.arguments["name"])
        return ToolOutput(f"{name}={os.environ.get(name)}", metadata={"value": os.environ[name]})


async def test_a_printed_secret_reaches_no_trace_event_model_request_or_result(
    model_server: ScriptedModelServer, tmp_path: Path, canary_env: None
) -> None:
    model_server.script(
        tool_call("env", {"name": "RHO_TEST_SERVICE_TOKEN"}),
        text(f"it was {CANARY}"),  # a model that repeats it anyway
    )
    store = SessionStore(tmp_path / "store")
    session = make_session(model_server, tmp_path)
    session.agent.registry.register(EnvTool())
    stored = store.create_session(session.agent)
    events = []
    result = await stored.run("print the token", on_event=events.append)
    await stored.close()
    assert result.status == "completed"
    tool_end = next(event for event in events if event.type == "tool_end")
    assert REDACTED in (tool_end.tool_result or ""), "the tool really printed the secret"
    trace = (tmp_path / "store" / stored.state.session_id / "trace.jsonl").read_text()
    seen = {
        "trace": trace,
        "events": json.dumps([event.to_dict() for event in events]),
        "result": result.text,
        "model requests": json.dumps([request.body for request in model_server.requests]),
        "state": json.dumps(stored.state.messages),
    }
    for where, content in seen.items():
        assert CANARY not in content, where
    assert REDACTED in trace


@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
async def test_a_secret_split_across_streamed_deltas_is_redacted_in_text_events(
    model_server: ScriptedModelServer, tmp_path: Path, canary_env: None, chunk: int
) -> None:
    answer = (
        "key sk-abcdefghijklmnopqrstuvwxyz0123 then Authorization: Bearer abcdefgh12345678 "
        f"and password = hunter2hunter2 and {CANARY} and redis://:pw123456@host/0 done"
    )
    model_server.script(text(answer, text_chunk_size=chunk))
    session = make_session(model_server, tmp_path)
    events = []
    result = await session.run("hi", on_event=events.append)
    shown = "".join(event.content or "" for event in events if event.type == "text")
    assert shown == result.text, "the events carry the whole answer, redacted as one text"
    for secret in ("abcdefghijklmnop", "abcdefgh1234", "hunter2hunter2", CANARY, "pw123456"):
        assert secret not in shown
    assert shown.count(REDACTED) == 5


def test_a_known_secret_holding_spaces_is_redacted_when_streamed_a_character_at_a_time() -> None:
    secret = "correct horse battery staple"
    stream = StreamRedactor(Redactor([secret]))
    given = f"the phrase is {secret} ok, and correct horse again "
    shown = "".join(stream.feed(char) for char in given) + stream.flush()
    assert shown == f"the phrase is {REDACTED} ok, and correct horse again "


def test_a_streamed_bearer_token_is_redacted_however_far_whitespace_pushes_it() -> None:
    stream = StreamRedactor(Redactor())
    given = "Authorization: Bearer" + " " * 100 + "abcdefgh12345678 done"
    shown = "".join(stream.feed(char) for char in given) + stream.flush()
    assert shown == "Authorization: Bearer" + " " * 100 + f"{REDACTED} done"


def test_log_lines_and_tracebacks_are_redacted(
    canary_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("rho_agent.test_redaction")
    logger.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO, logger="rho_agent.test_redaction"):
            logger.info("connecting with %s", CANARY)
            try:
                raise RuntimeError(f"refused key {CANARY}")
            except RuntimeError:
                logger.exception("failed")
    finally:
        logger.filters.clear()
    assert CANARY not in caplog.text
    assert caplog.text.count(REDACTED) >= 2


def test_a_logged_stack_is_redacted(canary_env: None, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("rho_agent.test_redaction")
    logger.addFilter(RedactingFilter())

    def deep(secret: str) -> None:
        logger.warning("here", stack_info=True)  # the stack shows this call's source line

    try:
        with caplog.at_level(logging.INFO, logger="rho_agent.test_redaction"):
            deep("canary-7f3a9c2e5b1d")
    finally:
        logger.filters.clear()
    assert caplog.records[0].stack_info
    assert CANARY not in caplog.text


def test_a_cut_in_long_tool_output_leaves_no_piece_of_a_secret(canary_env: None) -> None:
    text = "a" * 995 + CANARY + "b" * 990  # the cut at 1,000 would fall inside the secret
    cut = truncate_middle(text, 2000)
    assert CANARY[:5] not in cut and CANARY[-5:] not in cut
    assert REDACTED in cut


def test_install_covers_existing_package_loggers_and_root_handlers() -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    child = logging.getLogger("dispatch.engine.run")
    try:
        install_log_redaction()
        install_log_redaction()
        assert sum(isinstance(item, RedactingFilter) for item in handler.filters) == 1
        assert any(isinstance(item, RedactingFilter) for item in child.filters)
    finally:
        root.removeHandler(handler)
        for target in (child, logging.getLogger("dispatch")):
            target.filters = [f for f in target.filters if not isinstance(f, RedactingFilter)]
