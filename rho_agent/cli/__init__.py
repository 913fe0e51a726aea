"""The ``rho-agent`` command line: one Typer app, each command group in its own module.

Exit codes (documented in README and ``rho_agent.cli._exit``): 0 all completed, 1 some jobs
failed, 2 usage or configuration error, 3 broker or model endpoint unreachable, 130 Ctrl+C.
"""

from __future__ import annotations

import sys

import typer

from rho_agent.cli import _exit
from rho_agent.cli.app import app


def main() -> None:
    """Entry point of the ``rho-agent`` console script: every failure is one line and a code."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        code = _exit.INTERRUPTED
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        code = _exit.INTERRUPTED
    except typer.TyperException as exc:  # a usage error (Typer's click): its message, code 2
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            _exit.report(str(exc))
        code = exc.exit_code
    except Exception as exc:
        if _exit.debug_enabled():
            raise
        code, message = _exit.classify(exc)
        _exit.report(message)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
