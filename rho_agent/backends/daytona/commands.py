"""Running one shell command in a sandbox, with a timeout and cancellation that kill it.

Each command gets its own process session: the daemon runs it in that session's shell, and
deleting the session kills its whole process group. So a timeout or a cancelled task deletes
the session, and the command cannot outlive the call. While a long command runs, the sandbox's
activity is refreshed so auto-stop (which counts API events, not running processes) does not
stop the sandbox under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rho_agent.backends.base import CommandResult
from rho_agent.backends.daytona.sdk import daytona_errors, sdk, settle
from rho_agent.errors import BackendError
from rho_agent.sandbox import bash_scrub, env_command_prefix

if TYPE_CHECKING:
    from daytona import AsyncSandbox

TIMEOUT_EXIT_CODE = -signal.SIGKILL
"""``exit_code`` of a command killed at its timeout, as the local backend reports it."""
MAX_OUTPUT_BYTES = 4_000_000
"""Output kept per command (its head and tail), as the local backend keeps it."""

_NO_CWD = "#rho-agent:no-such-directory"

_CLEANUP_TIMEOUT = 30.0
_MIN_KEEPALIVE = 10.0
_MAX_KEEPALIVE = 300.0


def shell_command(command: str, cwd: str, env_names: Iterable[str] = ()) -> str:
    """``command`` for the session shell: in ``cwd``, stdin closed, in its own bash (or sh),
    with only the allowlisted environment variables (plus ``env_names``) of the sandbox.

    A child shell keeps ``exit``, ``cd`` and ``exec`` in the command from touching the session
    shell, which must survive to report the exit code.
    """
    quoted = shlex.quote(command)
    names = list(env_names)
    scrubbed_bash = shlex.quote(f'{bash_scrub(names)}; exec bash -c "$1"')
    return (
        f"if cd {shlex.quote(cwd)} 2>/dev/null; then if command -v bash >/dev/null 2>&1; "
        f"then bash -c {scrubbed_bash} rho-agent {quoted} </dev/null; "
        f"else {env_command_prefix(names)} sh -c {quoted} </dev/null; fi; "
        f"else echo {shlex.quote(_NO_CWD)}; fi"
    )


def keepalive_seconds(auto_stop_interval: int) -> float | None:
    """How often to refresh activity during a command: a third of the auto-stop interval."""
    if auto_stop_interval <= 0:
        return None
    return min(max(auto_stop_interval * 60 / 3, _MIN_KEEPALIVE), _MAX_KEEPALIVE)


async def run_in_sandbox(
    sandbox: AsyncSandbox,
    command: str,
    *,
    cwd: str,
    time_limit: float,
    auto_stop_interval: int,
    env_names: Iterable[str] = (),
) -> CommandResult:
    """Run ``command`` with a shell in ``cwd``; kill it after ``time_limit`` s or on cancel."""
    daytona = sdk()
    session_id = f"rho-{uuid.uuid4().hex}"
    with daytona_errors("starting a command", sandbox.id):
        await sandbox.process.create_session(session_id)
    request = daytona.SessionExecuteRequest(
        command=shell_command(command, cwd, env_names), run_async=False
    )
    execution = asyncio.ensure_future(sandbox.process.execute_session_command(session_id, request))
    try:
        finished = await _wait(
            sandbox, execution, time_limit, keepalive_seconds(auto_stop_interval)
        )
        if finished:
            with daytona_errors("running a command", sandbox.id):
                response = execution.result()
            output = response.output or ""
            if output == f"{_NO_CWD}\n":
                raise BackendError(f"cannot run the command: directory {cwd} does not exist")
            exit_code = response.exit_code
            return CommandResult(
                exit_code=TIMEOUT_EXIT_CODE if exit_code is None else exit_code,
                output=bounded(output),
            )
        output = await _output_so_far(sandbox, session_id)
        return CommandResult(exit_code=TIMEOUT_EXIT_CODE, output=bounded(output), timed_out=True)
    finally:
        if not execution.done():
            execution.cancel()
        await settle(_delete_session(sandbox, session_id), _CLEANUP_TIMEOUT)


def bounded(output: str) -> str:
    """At most ``MAX_OUTPUT_BYTES`` of output: its head and tail around an omission marker."""
    data = output.encode("utf-8", "surrogateescape")
    if len(data) <= MAX_OUTPUT_BYTES:
        return output
    half = MAX_OUTPUT_BYTES // 2
    dropped = len(data) - 2 * half
    marker = f"\n[... {dropped:,} bytes of output omitted ...]\n".encode()
    return (data[:half] + marker + data[-half:]).decode("utf-8", errors="replace")


async def _wait(
    sandbox: AsyncSandbox,
    execution: asyncio.Future[Any],
    time_limit: float,
    keepalive: float | None,
) -> bool:
    """Wait for the command up to ``time_limit`` s; True if it finished (well or not)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        step = remaining if keepalive is None else min(remaining, keepalive)
        done, _ = await asyncio.wait({execution}, timeout=step)
        if done:
            return True
        if loop.time() < deadline:
            with contextlib.suppress(Exception):
                await sandbox.refresh_activity()


async def _output_so_far(sandbox: AsyncSandbox, session_id: str) -> str:
    """The output a timed-out command wrote before it was stopped (empty if unavailable)."""
    with contextlib.suppress(Exception):
        session = await sandbox.process.get_session(session_id)
        if session.commands:
            logs = await sandbox.process.get_session_command_logs(
                session_id, session.commands[-1].id
            )
            return logs.output or ""
    return ""


async def _delete_session(sandbox: AsyncSandbox, session_id: str) -> None:
    """Delete the session, which kills whatever it still runs; it may already be gone."""
    with contextlib.suppress(Exception):
        await sandbox.process.delete_session(session_id)
