"""Execution backends: where tools run."""

from rho_agent.backends.base import CommandResult, ExecutionBackend, FileEntry, GrepMatch

__all__ = ["CommandResult", "ExecutionBackend", "FileEntry", "GrepMatch"]
