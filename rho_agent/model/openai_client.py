"""ModelClient over the official ``openai`` package (any OpenAI-compatible ``base_url``).

Requests, errors and retries go through ``AsyncOpenAI``; the streamed body is read as raw SSE lines
and assembled from plain dicts (see ``_assemble``). One HTTP client is shared per event loop and
endpoint, so thousands of sessions reuse one connection pool instead of opening one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai

from rho_agent import jsoncodec
from rho_agent.errors import ModelError
from rho_agent.model._assemble import TurnAssembler
from rho_agent.model._retry import ShownText, retry_delay
from rho_agent.model.base import ModelRequest, ModelTurn, TextCallback

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")
_REQUEST_OPTIONS: openai.RequestOptions = {"security": {"bearer_auth": True}}


class _LoopClients:
    """The AsyncOpenAI clients of one event loop, closed when that loop shuts down.

    The closing runs in the ``finally`` of a parked async generator: ``asyncio.run`` (and every
    runner that calls ``loop.shutdown_asyncgens()``) closes it, so no connection pool outlives
    its loop even when nobody calls ``close_shared_clients``.
    """

    def __init__(self) -> None:
        self.clients: dict[tuple[str | None, str], openai.AsyncOpenAI] = {}
        self._closer: AsyncGenerator[None, None] | None = None

    async def get(self, base_url: str | None, api_key: str, max_retries: int) -> openai.AsyncOpenAI:
        if self._closer is None:
            self._closer = self._close_at_shutdown()
            await anext(self._closer)
        key = (base_url, api_key)
        client = self.clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=max_retries,
                http_client=_http_client(),
            )
            self.clients[key] = client
        return client

    async def aclose(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            await client.close()

    async def _close_at_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self.aclose()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients]
_pools = weakref.WeakKeyDictionary()


async def _shared_client(
    base_url: str | None, api_key: str, max_retries: int
) -> openai.AsyncOpenAI:
    """The loop's AsyncOpenAI for this endpoint and key, created on first use."""
    pool = _pools.setdefault(asyncio.get_running_loop(), _LoopClients())
    return await pool.get(base_url, api_key, max_retries)


async def close_shared_clients() -> None:
    """Close the running loop's pooled clients now (they are also closed when the loop ends)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.aclose()


def _http_client() -> httpx2.AsyncClient:
    limits = httpx2.Limits(max_connections=20_000, max_keepalive_connections=2_000)
    timeout = httpx2.Timeout(timeout=600, connect=10.0)
    try:
        return openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
    except RuntimeError:  # the aiohttp extra is not installed: httpx2's own transport works too
        return openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


class OpenAIModelClient:
    """Streams chat completions from OpenAI or any compatible server (vLLM, Ollama, ...).

    The API key is read from ``OPENAI_API_KEY`` when a call is made; it is never stored in a
    config, trace or event. ``base_url`` falls back to ``OPENAI_BASE_URL``.
    """

    def __init__(
        self, *, base_url: str | None = None, max_retries: int = 3, stream_retries: int = 2
    ) -> None:
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self.max_retries = max_retries
        self.stream_retries = stream_retries

    def _api_key(self) -> str:
        if self.base_url and "@" in self.base_url.partition("://")[2].partition("/")[0]:
            # The HTTP client would send these as the Authorization header, which the API key
            # needs: the request fails (aiohttp) or goes out without the key (httpx).
            raise ModelError(
                "the model API URL (base_url / --base-url / OPENAI_BASE_URL) holds a user name or "
                f"password: drop the 'user:password@' part and put the key in {API_KEY_ENV}"
            )
        key = os.environ.get(API_KEY_ENV)
        if key:
            return key
        if self.base_url and any(host in self.base_url for host in _LOCAL_HOSTS):
            return "not-needed-for-local-servers"
        raise ModelError(
            f"no API key: set {API_KEY_ENV} in the environment "
            "(or point base_url / --base-url at a local OpenAI-compatible server)"
        )

    async def stream(self, request: ModelRequest, on_text: TextCallback | None = None) -> ModelTurn:
        """One chat completion, retried while its stream breaks off before its end.

        A stream is whole only with its terminal event (``data: [DONE]``, or a choice with a
        ``finish_reason``): a body that just stops is broken, never an answer, so tool calls
        never see half their arguments. Broken streams are retried with the backoff of a
        refused request; text already shown through ``on_text`` is not shown again.
        """
        client = await _shared_client(self.base_url, self._api_key(), self.max_retries)
        shown = ShownText(on_text) if on_text is not None else None
        for attempt in range(self.stream_retries + 1):
            assembler = TurnAssembler(shown.attempt() if shown is not None else None)
            try:
                await self._stream_once(client, request, assembler)
            except ModelError:
                raise
            except openai.APIStatusError as exc:
                raise ModelError(
                    _status_message(exc),
                    status_code=exc.status_code,
                    retry_after=_retry_after(exc.response.headers),
                ) from None
            except openai.APIConnectionError as exc:
                raise ModelError(
                    f"cannot reach the model API at {client.base_url}: {exc}"
                ) from None
            except (httpx2.TransportError, OSError, _StreamCutShort, _aiohttp_errors()) as exc:
                if attempt == self.stream_retries:
                    raise ModelError(
                        f"the model stream broke off before its end in all {attempt + 1} "
                        f"attempts; the last one: {exc!r}"
                    ) from None
                await asyncio.sleep(retry_delay(attempt))
                continue
            return assembler.turn(request)
        raise AssertionError("unreachable")

    async def _stream_once(
        self, client: openai.AsyncOpenAI, request: ModelRequest, assembler: TurnAssembler
    ) -> None:
        response = await client.post(
            "/chat/completions",
            cast_to=httpx2.Response,
            # Encoded here: the client's own encoder (the stdlib's, with a class for pydantic
            # models) cost a worker several times orjson's on every turn of a long history.
            content=jsoncodec.dumpb(_request_kwargs(request)),
            options=_request_options(request),
            stream=True,
        )
        try:
            buffer = b""
            # Closed here, not left at [DONE] for the loop's async-generator finalizer to close
            # in a task of its own, one per model call.
            async with contextlib.aclosing(response.aiter_bytes()) as chunks:
                async for data in chunks:
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if _feed_line(line, assembler):
                            return
        except (httpx2.TransportError, OSError, _aiohttp_errors()):
            if assembler.finish_reason is None:
                raise
            return  # the answer is whole; only its usage or [DONE] was lost
        finally:
            await response.aclose()
        # A last line without its line end is torn; SSE discards an unterminated event.
        if assembler.finish_reason is None:
            raise _StreamCutShort("the body ended without data: [DONE] or a finish_reason")


class _StreamCutShort(Exception):
    """The server ended the body before the stream's terminal event (e.g. closed the socket)."""


def _feed_line(line: bytes, assembler: TurnAssembler) -> bool:
    """Feed one SSE line; True at ``[DONE]``."""
    if not line.startswith(b"data:"):
        return False
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return True
    if payload:
        try:
            chunk = jsoncodec.loads(payload)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise ModelError(
                f"the model API streamed a line that is not a JSON object: {line[:100]!r}"
            )
        assembler.feed(chunk)
    return False


def _request_kwargs(request: ModelRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        kwargs["tools"] = request.tools
    if request.reasoning_effort is not None:
        kwargs["reasoning_effort"] = request.reasoning_effort
    if request.service_tier is not None:
        kwargs["service_tier"] = request.service_tier
    if request.response_format is not None:
        kwargs["response_format"] = request.response_format
    if request.max_output_tokens is not None:
        kwargs["max_completion_tokens"] = request.max_output_tokens
    return kwargs


def _request_options(request: ModelRequest) -> openai.RequestOptions:
    options: openai.RequestOptions = {**_REQUEST_OPTIONS}
    if request.max_retries is not None:
        options["max_retries"] = request.max_retries
    if request.timeout_s is not None:
        options["timeout"] = httpx2.Timeout(request.timeout_s, connect=min(10.0, request.timeout_s))
    return options


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (a number of seconds), if present."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(float(raw) * scale, 0.0)
        except ValueError:
            continue
    return None


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
    return f"model API error {exc.status_code}: {message or exc.message}"


def _aiohttp_errors() -> type[Exception]:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with openai[aiohttp]
        return OSError
    return aiohttp.ClientError
