"""The OpenAI-backed model client: one pooled HTTP client per loop, closed with its loop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import openai

from rho_agent import jsoncodec
from rho_agent.model import openai_client
from rho_agent.testing import ScriptedModelServer, text
from tests.sdk.helpers import make_session


def pooled_clients() -> list[openai.AsyncOpenAI]:
    pool = openai_client._pools.get(asyncio.get_running_loop())
    return list(pool.clients.values()) if pool is not None else []


def test_sessions_share_one_client_which_closes_with_its_loop(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("hi")
    seen: list[openai.AsyncOpenAI] = []

    async def main() -> None:
        sessions = [make_session(model_server, tmp_path) for _ in range(5)]
        await asyncio.gather(*(session.run(prompt="hello") for session in sessions))
        seen.extend(pooled_clients())

    asyncio.run(main())
    assert len(seen) == 1, "every session of one endpoint must share one HTTP client"
    assert seen[0].is_closed()


async def test_close_shared_clients_closes_them_now(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.script(text("hi"))
    await make_session(model_server, tmp_path).run(prompt="hello")
    clients = pooled_clients()
    assert clients and not clients[0].is_closed()
    await openai_client.close_shared_clients()
    assert clients[0].is_closed() and pooled_clients() == []


def test_a_model_call_leaves_no_stream_for_the_finalizer_to_close(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """Each stream is closed in the call; one left open costs a finalizer task per model call."""
    model_server.responder = lambda body: text("hi")
    finalized: list[str] = []

    async def main() -> None:
        loop_hooks = sys.get_asyncgen_hooks()

        def finalizer(agen: Any) -> None:
            finalized.append(agen.ag_code.co_qualname)
            assert loop_hooks.finalizer is not None
            loop_hooks.finalizer(agen)

        sys.set_asyncgen_hooks(firstiter=loop_hooks.firstiter, finalizer=finalizer)
        session = make_session(model_server, tmp_path)
        for _ in range(3):
            await session.run(prompt="hello")
        await openai_client.close_shared_clients()

    asyncio.run(main())
    assert finalized == []


async def test_the_request_body_is_the_json_the_client_itself_would_send(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    """The body is encoded before the openai client sees it (orjson, not the client's encoder):
    for a chat request's strings and nesting, the bytes the client's encoder makes, sent as
    application/json, with text outside ASCII sent as itself."""
    from openai._utils._json import openapi_dumps

    model_server.script(text("hi"))
    prompt = 'Grüße, 東京 🚀 "quoted" \\ back\nslash'
    await make_session(model_server, tmp_path).run(prompt=prompt)
    [request] = model_server.requests
    assert request.headers["content-type"] == "application/json"
    assert request.body["messages"][-1] == {"role": "user", "content": prompt}
    sent = jsoncodec.dumpb(request.body)
    assert sent == openapi_dumps(request.body)
