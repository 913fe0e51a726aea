"""ScriptedModelServer: an OpenAI-compatible HTTP server on 127.0.0.1 that answers from a script."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import deque
from typing import Any, Self

from aiohttp import web

from rho_agent import jsoncodec
from rho_agent.testing._responses import (
    RecordedRequest,
    Responder,
    ScriptedResponse,
    asks_json_schema,
    shaped_for,
)
from rho_agent.testing._spawn import SpawnedModelServer, spawn_model_server
from rho_agent.testing._threaded import ThreadedAiohttpServer
from rho_agent.testing._wire import Completion, completion_body, error_body, stream_events

_NO_RETRY = {"x-should-retry": "false"}


class ScriptedModelServer(ThreadedAiohttpServer):
    """An OpenAI-compatible chat-completions server for tests, run on a background thread.

    Each request to ``POST /v1/chat/completions`` takes the next response queued with
    ``script()``; when the queue is empty it asks ``responder`` (body dict -> ScriptedResponse,
    sync or async); when neither has an answer it fails loudly with HTTP 500. Point a real
    ``openai`` client at ``base_url``. Every request is kept in ``requests`` unless
    ``record=False`` (long benchmarks). Thread-safe: script and read it from any thread.

    Structured answers (``structured(...)``) come back as the request asks for them (see
    ``ScriptedResponse.output``). With ``json_schema_support=False`` the server behaves like
    one without structured output: a request with a ``json_schema`` response format gets a 400.
    """

    _thread_name = "scripted-model-server"

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "scripted-model",
        record: bool = True,
        backlog: int = 8192,
        json_schema_support: bool = True,
    ) -> None:
        super().__init__(host=host, port=port, backlog=backlog)
        self.responder = responder
        self.json_schema_support = json_schema_support
        self._model = model
        self._record = record
        self._lock = threading.Lock()
        self._queue: deque[ScriptedResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._seq = 0

    @staticmethod
    def spawn(
        behaviour: str, delay: float = 0.0, *, port: int = 0, timeout: float = 30.0
    ) -> SpawnedModelServer:
        """Run a server with a built-in behaviour in a subprocess, off this process's CPU/GIL."""
        return spawn_model_server(behaviour, delay, port=port, timeout=timeout)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, the ``base_url`` for an OpenAI client."""
        return f"http://{self._host}:{self.port}/v1"

    def script(self, *responses: ScriptedResponse) -> None:
        """Queue responses; each request consumes the oldest one."""
        for response in responses:
            if not isinstance(response, ScriptedResponse):
                raise TypeError(
                    f"script() takes ScriptedResponse values (e.g. text('hi')), got {response!r}"
                )
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """How many scripted responses are still queued."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every chat-completions request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget queued responses and recorded requests (the responder stays)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    def start(self) -> Self:
        """Lift the open-files limit, then listen on a background thread until the port is bound."""
        raise_open_files_limit()
        return super().start()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = jsoncodec.loads(raw)
        except ValueError as exc:
            return _error_response(400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error_response(400, "request body must be a JSON object")
        if not self.json_schema_support and asks_json_schema(body):
            message = "response_format of type json_schema is not supported by this server"
            return _error_response(400, message, _NO_RETRY)
        seq, scripted = self._take(body, request)
        response = scripted if scripted is not None else await self._ask_responder(body, seq)
        if not isinstance(response, ScriptedResponse):
            return response
        response = shaped_for(response, body)
        if response.delay:
            await asyncio.sleep(response.delay)
        if response.error_status is not None:
            body_bytes = error_body(
                response.error_status, response.error_message, response.error_code
            )
            return _error_response(response.error_status, body_bytes, response.headers)
        model = body.get("model")
        completion = Completion(
            seq, int(time.time()), model if isinstance(model, str) else self._model, len(raw)
        )
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            events = stream_events(response, completion, include_usage=include_usage)
            return await _send_stream(request, response, events)
        if response.disconnect_after_chunks is not None:
            _drop_connection(request)
        return web.Response(
            body=completion_body(response, completion),
            content_type="application/json",
            headers=response.headers,
        )

    def _take(
        self, body: dict[str, Any], request: web.Request
    ) -> tuple[int, ScriptedResponse | None]:
        """Number the request, record it and pop the next scripted response, atomically."""
        with self._lock:
            self._seq += 1
            if self._record:
                headers = {key.lower(): value for key, value in request.headers.items()}
                self._requests.append(RecordedRequest(body, headers, request.path))
            return self._seq, self._queue.popleft() if self._queue else None

    async def _ask_responder(
        self, body: dict[str, Any], seq: int
    ) -> ScriptedResponse | web.Response:
        responder = self.responder
        if responder is None:
            return _error_response(
                500,
                f"ScriptedModelServer: script exhausted at request #{seq}: no scripted response "
                "is left and no responder is set. Queue more with server.script(...) or set "
                "server.responder.",
                _NO_RETRY,
            )
        try:
            result = responder(body)
            response = await result if inspect.isawaitable(result) else result
        except Exception as exc:
            message = f"ScriptedModelServer: the responder raised {exc!r} at request #{seq}"
            return _error_response(500, message, _NO_RETRY)
        if not isinstance(response, ScriptedResponse):
            message = (
                f"ScriptedModelServer: the responder must return a ScriptedResponse, "
                f"got {response!r} at request #{seq}"
            )
            return _error_response(500, message, _NO_RETRY)
        return response

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self._model, "object": "model", "created": 0, "owned_by": "rho-agent"}
        return web.json_response({"object": "list", "data": [model]})


async def _send_stream(
    request: web.Request, response: ScriptedResponse, events: list[bytes]
) -> web.StreamResponse:
    """Send SSE events: in one write when nothing is paced or dropped, else one by one."""
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **response.headers}
    drop_after = response.disconnect_after_chunks
    if response.end_after_chunks is not None:
        events = events[: response.end_after_chunks]
    if not response.chunk_delay and drop_after is None:
        whole = web.Response(body=b"".join(events), headers=headers)
        if response.end_after_chunks is not None:
            whole.force_close()  # the connection ends with the body, as a server that hangs up
        return whole
    stream = web.StreamResponse(headers=headers)
    if response.end_after_chunks is not None:
        stream.force_close()
    try:
        await stream.prepare(request)
        for index, event in enumerate(events):
            if index == drop_after:
                _drop_connection(request)
                break
            if index and response.chunk_delay:
                await asyncio.sleep(response.chunk_delay)
            await stream.write(event)
    except ConnectionError:
        pass  # the client went away; nothing left to send
    return stream


def _drop_connection(request: web.Request) -> None:
    """Close the socket mid-response, as a network reset would."""
    if request.transport is not None:
        request.transport.close()


def _error_response(
    status: int, body: str | bytes, headers: dict[str, str] | None = None
) -> web.Response:
    payload = body if isinstance(body, bytes) else error_body(status, body)
    return web.Response(
        status=status, body=payload, content_type="application/json", headers=headers
    )


def raise_open_files_limit(wanted: int = 65536) -> None:
    """Lift the soft open-files limit toward the hard one: 5,000 connections need more than 1,024.

    Best effort: where the platform has no such limit or refuses, nothing changes.
    """
    try:
        import resource
    except ImportError:  # not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return
