"""Benchmark 11's peer: the Celery app a user writes by hand to run one model call per task.

Two forms, both streaming one chat completion with the stock ``openai`` client and returning its
text, on the bare Celery configuration (``bare_celery.client_app``: JSON, late acks, prefetch 1):

- ``bench.handrolled.fresh``: the usual one, ``asyncio.run`` and a new client in every task;
- ``bench.handrolled.reused``: the well-made one, one event loop per worker process on its own
  thread and one client on it, shared by every task (``run_coroutine_threadsafe``).

Workers load ``app`` (``celery -A tests.bench.handrolled_celery:app worker -P threads``) with the
broker from ``RHO_BENCH_BROKER_URL`` and results in ``RHO_BENCH_RESULT_URL`` (as ``bare_celery``).
"""

from __future__ import annotations

import asyncio
import os
import threading

import openai

from tests.bench.bare_celery import BROKER_ENV, RESULT_ENV, client_app

FRESH = "bench.handrolled.fresh"
REUSED = "bench.handrolled.reused"
MODEL = "gpt-5-mini"
SYSTEM = "You are a helpful agent."


async def _one_turn(client: openai.AsyncOpenAI, prompt: str) -> str:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        stream=True,
    )
    parts: list[str] = []
    async for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    return "".join(parts)


def fresh(base_url: str, prompt: str) -> str:
    async def run() -> str:
        async with openai.AsyncOpenAI(api_key="benchmark", base_url=base_url) as client:
            return await _one_turn(client, prompt)

    return asyncio.run(run())


class _SharedLoop:
    """One event loop on a daemon thread and one client per base URL, for the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def run(self, base_url: str, prompt: str) -> str:
        loop = self._started()
        client = self._client(base_url, loop)
        return asyncio.run_coroutine_threadsafe(_one_turn(client, prompt), loop).result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, daemon=True).start()
            return self._loop

    def _client(self, base_url: str, loop: asyncio.AbstractEventLoop) -> openai.AsyncOpenAI:
        async def build() -> openai.AsyncOpenAI:  # on the loop that will use it
            http = openai.DefaultAioHttpClient()
            return openai.AsyncOpenAI(api_key="benchmark", base_url=base_url, http_client=http)

        with self._lock:
            if base_url not in self._clients:
                self._clients[base_url] = asyncio.run_coroutine_threadsafe(build(), loop).result()
            return self._clients[base_url]


_shared = _SharedLoop()


def reused(base_url: str, prompt: str) -> str:
    return _shared.run(base_url, prompt)


app = client_app(os.environ.get(BROKER_ENV), os.environ.get(RESULT_ENV))
app.task(name=FRESH)(fresh)
app.task(name=REUSED)(reused)
