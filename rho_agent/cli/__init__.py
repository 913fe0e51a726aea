"""The ``rho-agent`` command line: one Typer app, each command group in its own module."""

from __future__ import annotations

from rho_agent.cli.app import app


def main() -> None:
    """Entry point of the ``rho-agent`` console script."""
    app()


__all__ = ["app", "main"]
