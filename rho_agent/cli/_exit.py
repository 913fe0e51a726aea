"""Exit codes, and the one line every command prints for an error it did not expect.

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      every job (or the run) completed
1      some jobs (or the run) failed, were cancelled or hit max_turns; each result says why
2      usage or configuration error: a bad flag, file, URL or setting (nothing was run)
3      infrastructure: the broker (Redis) or the model endpoint could not be reached
130    interrupted (Ctrl+C)
=====  ==========================================================================================

A script can tell "retry later" (3) from "fix the input" (2) from "look at the results" (1).
Tracebacks are for bugs, so they are shown only with ``rho-agent --debug`` (which also shows the
traceback above the one line of an error reported through ``one_line_errors``).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.text import Text

from rho_agent.errors import RhoAgentError, first_line

OK: Final = 0
JOBS_FAILED: Final = 1
USAGE: Final = 2
INFRASTRUCTURE: Final = 3
INTERRUPTED: Final = 130

MODEL_UNREACHABLE = "cannot reach the model API"
"""How ``ModelError`` begins when the endpoint did not answer (rho_agent.model.openai_client)."""

_INFRA_MODULES = ("redis.", "kombu.", "amqp.", "celery.")


BrokerOption = Annotated[
    str | None,
    typer.Option("--broker", help="Redis URL of the fleet (default: $RHO_AGENT_BROKER_URL)."),
]
"""The ``--broker`` flag of the fleet commands."""


_debug = False


class _OneLineLogs(logging.Handler):
    """Where a log record goes when nothing configured logging (``logging.lastResort``): one line
    on stderr, the exception's first line instead of its traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        reason = f": {type(exc).__name__}: {first_line(exc)}" if exc is not None else ""
        try:
            sys.stderr.write(f"{record.getMessage()}{reason}\n")
        except Exception:
            self.handleError(record)


_FULL_LOGS = logging.lastResort
_ONE_LINE_LOGS = _OneLineLogs(logging.WARNING)


def set_debug(enabled: bool) -> None:
    """``rho-agent --debug``: errors, and errors logged by the run, show their traceback too."""
    global _debug
    _debug = enabled
    logging.lastResort = _FULL_LOGS if enabled else _ONE_LINE_LOGS


def debug_enabled() -> bool:
    return _debug


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Show rho-agent's own errors as one red line and their exit code, without a traceback."""
    try:
        yield
    except RhoAgentError as exc:
        if debug_enabled():  # the error, and what caused it (a refused connection, say)
            traceback.print_exc()
        code, message = classify(exc)
        report(message)
        raise typer.Exit(code) from None


def report(message: str) -> None:
    """Print ``error: message`` on stderr, as text (a message may hold brackets)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        Text(f"error: {message}", style="red")
    )


def write_output(path: Path, text: str) -> None:
    """Write a command's ``-o`` file; a path that cannot be written is a usage error, one line."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        report(f"cannot write {path}: {exc.strerror}; choose another -o path")
        raise typer.Exit(USAGE) from None


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an exception no command handled itself."""
    from dispatch.errors import FleetUnavailable

    if isinstance(exc, FleetUnavailable):
        return INFRASTRUCTURE, str(exc)
    if isinstance(exc, RhoAgentError):
        return USAGE, str(exc)
    if _is_connection_failure(exc):
        return INFRASTRUCTURE, (
            f"cannot reach the broker ({first_line(exc)}); check that Redis runs there and "
            "that --broker / RHO_AGENT_BROKER_URL points at it"
        )
    return 1, f"{type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)"


def _is_connection_failure(exc: BaseException) -> bool:
    """Redis/kombu connection and timeout errors, or a refused/reset socket, anywhere in the
    exception's chain (libraries wrap one in another)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        module = type(current).__module__ + "."
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if module.startswith(_INFRA_MODULES) and (
            "Connection" in name or "Timeout" in name or "OperationalError" in name
        ):
            return True
        current = current.__cause__ or current.__context__
    return False
