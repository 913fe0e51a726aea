"""The fake daemon's process endpoints: process sessions and one-shot ``execute``.

Each command is its own ``bash -c`` process (``sh`` if bash is missing) in the sandbox
directory, in its own process group, with the sandbox's env vars and ``HOME``. Like the real
daemon, stdin is a pipe that stays open (a command reading stdin waits forever), stdout and
stderr go to one log, and deleting a session kills its process groups. Unlike the real daemon,
commands of one session do not share a shell (no ``cd`` or variables carried over), and
``stdout``/``stderr`` are not split: both hold the combined log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from rho_agent.testing._daytona_state import (
    FakeCommand,
    FakeSandbox,
    World,
    daemon_error,
    failure_error,
    kill_commands,
)

_DRAIN_AFTER_EXIT = 0.2
"""Seconds to keep reading output after the shell exits (a background child may hold it open)."""


class ProcessRoutes:
    """``/toolbox/{sandbox}/process/...`` handlers."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._tasks: set[asyncio.Task[None]] = set()

    def add_to(self, app: web.Application) -> None:
        base = "/toolbox/{sandbox}/process"
        app.router.add_post(f"{base}/session", self.create_session)
        app.router.add_get(f"{base}/session/{{session}}", self.get_session)
        app.router.add_delete(f"{base}/session/{{session}}", self.delete_session)
        app.router.add_post(f"{base}/session/{{session}}/exec", self.session_exec)
        app.router.add_get(f"{base}/session/{{session}}/command/{{command}}", self.get_command)
        app.router.add_get(
            f"{base}/session/{{session}}/command/{{command}}/logs", self.command_logs
        )
        app.router.add_post(f"{base}/execute", self.execute)

    def sandbox(self, request: web.Request, operation: str) -> FakeSandbox:
        """Authenticate, apply a scripted failure, and find the started sandbox."""
        self.world.check_auth(request)
        failure = self.world.take_failure(operation)
        if failure is not None:
            raise failure_error(failure, daemon=True)
        sandbox = self.world.find(request.match_info["sandbox"])
        if sandbox.state != "started":
            raise daemon_error(409, f"sandbox {sandbox.id} is {sandbox.state}, not started")
        return sandbox

    def _session(self, request: web.Request, operation: str) -> dict[str, FakeCommand]:
        sandbox = self.sandbox(request, operation)
        session = sandbox.sessions.get(request.match_info["session"])
        if session is None:
            raise daemon_error(404, "session not found", "NOT_FOUND")
        return session

    async def create_session(self, request: web.Request) -> web.Response:
        sandbox = self.sandbox(request, "session_create")
        body = await request.json()
        session_id = body.get("sessionId") if isinstance(body, dict) else None
        if not isinstance(session_id, str) or not session_id:
            raise daemon_error(400, "sessionId is required", "INVALID_REQUEST_BODY")
        if session_id in sandbox.sessions:
            raise daemon_error(409, "session already exists", "CONFLICT")
        sandbox.sessions[session_id] = {}
        return web.Response(status=201)

    async def get_session(self, request: web.Request) -> web.Response:
        session = self._session(request, "session_get")
        commands = [_command_dto(command) for command in session.values()]
        return web.json_response({"sessionId": request.match_info["session"], "commands": commands})

    async def delete_session(self, request: web.Request) -> web.Response:
        sandbox = self.sandbox(request, "session_delete")
        session = sandbox.sessions.pop(request.match_info["session"], None)
        if session is None:
            raise daemon_error(404, "session not found", "NOT_FOUND")
        await kill_commands(session.values())
        return web.Response(status=204)

    async def session_exec(self, request: web.Request) -> web.Response:
        session = self._session(request, "session_exec")
        sandbox = self.world.find(request.match_info["sandbox"])
        body = await request.json()
        text = body.get("command") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise daemon_error(400, "command cannot be empty", "INVALID_REQUEST_BODY")
        command = FakeCommand(id=str(uuid.uuid4()), command=text)
        session[command.id] = command
        await self._spawn(sandbox, command, sandbox.root)
        if body.get("runAsync") or body.get("async"):
            return web.json_response({"cmdId": command.id}, status=202)
        await command.finished.wait()
        output = command.output.decode("utf-8", "replace")
        return web.json_response(
            {
                "cmdId": command.id,
                "output": output,
                "stdout": output,
                "stderr": "",
                "exitCode": command.exit_code,
            }
        )

    async def get_command(self, request: web.Request) -> web.Response:
        return web.json_response(_command_dto(self._command(request, "session_get")))

    async def command_logs(self, request: web.Request) -> web.Response:
        command = self._command(request, "session_logs")
        if request.query.get("follow") == "true":
            raise daemon_error(400, "the fake daemon does not stream logs (follow=true)")
        output = command.output.decode("utf-8", "replace")
        return web.json_response({"output": output, "stdout": output, "stderr": ""})

    def _command(self, request: web.Request, operation: str) -> FakeCommand:
        command = self._session(request, operation).get(request.match_info["command"])
        if command is None:
            raise daemon_error(404, "command not found", "NOT_FOUND")
        return command

    async def execute(self, request: web.Request) -> web.Response:
        sandbox = self.sandbox(request, "execute")
        body = await request.json()
        text = body.get("command") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise daemon_error(400, "command is required", "INVALID_REQUEST_BODY")
        cwd = sandbox.root / str(body.get("cwd") or ".")
        command = FakeCommand(id=str(uuid.uuid4()), command=text)
        await self._spawn(sandbox, command, cwd, extra_env=body.get("envs") or {})
        try:
            await asyncio.wait_for(command.finished.wait(), body.get("timeout") or 360)
        except TimeoutError:
            await kill_commands([command])
            raise daemon_error(408, "command execution timeout", "REQUEST_TIMEOUT") from None
        output = command.output.decode("utf-8", "replace")
        return web.json_response({"exitCode": command.exit_code, "result": output})

    async def _spawn(
        self,
        sandbox: FakeSandbox,
        command: FakeCommand,
        cwd: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        env = {**os.environ, **sandbox.env, **(extra_env or {}), "HOME": str(sandbox.root)}
        # Raw pipes, not asyncio's: a background child holding them must not delay the exit
        # code (the daemon reports it when the shell exits), and stdin stays open like the
        # daemon's input FIFO.
        out_read, out_write = os.pipe()
        in_read, in_write = os.pipe()
        try:
            command.process = await asyncio.create_subprocess_exec(
                shutil.which("bash") or "/bin/sh",
                "-c",
                command.command,
                cwd=cwd,
                env=env,
                stdin=in_read,
                stdout=out_write,
                stderr=out_write,
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (out_read, in_write):
                os.close(fd)
            command.output += f"{exc}\n".encode()
            command.exit_code = 127
            command.finished.set()
            return
        finally:
            os.close(out_write)
            os.close(in_read)
        task = asyncio.create_task(_run(command, out_read, in_write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _run(command: FakeCommand, out_read: int, in_write: int) -> None:
    """Collect output until the shell exits, then record the exit code like ``echo $?``."""
    process = command.process
    assert process is not None
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(out_read, "rb", 0)
    )
    reader = asyncio.create_task(_read_all(stream, command.output))
    try:
        returncode = await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), _DRAIN_AFTER_EXIT)
        command.exit_code = returncode if returncode >= 0 else 128 - returncode
    finally:
        command.finished.set()
        os.close(in_write)
        reader.cancel()
        transport.close()


async def _read_all(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(65536):
        into += chunk


def _command_dto(command: FakeCommand) -> dict[str, Any]:
    return {"id": command.id, "command": command.command, "exitCode": command.exit_code}
