"""The ExecutionBackend protocol: where tools run commands and touch files.

Tool handlers are written once against this protocol; ``LocalBackend`` runs them on this machine,
``DaytonaBackend`` in a Daytona sandbox. Paths given to a backend are already resolved by the
handler (absolute, inside the backend's filesystem); confinement to the working dir is decided by
the permission profile before the call (see ``rho_agent.tools.paths``).

Cancellation is asyncio-native: cancelling the task awaiting ``run_command`` must kill the whole
command (process tree or sandbox process) before the ``CancelledError`` propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from rho_agent.permissions import PermissionProfile


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one shell command."""

    exit_code: int
    output: str
    """stdout and stderr interleaved as written (decoded as UTF-8, bad bytes replaced)."""
    timed_out: bool = False


@dataclass(frozen=True)
class FileEntry:
    """One entry of a directory listing."""

    name: str
    is_dir: bool
    size: int


@dataclass(frozen=True)
class GrepMatch:
    """One line matching a grep pattern."""

    path: str
    line_number: int
    line: str


@runtime_checkable
class ExecutionBackend(Protocol):
    """Runs commands and file operations for tool handlers, under one working directory."""

    @property
    def working_dir(self) -> str:
        """Absolute path of the directory relative paths resolve against."""
        ...

    async def start(self) -> None:
        """Prepare the backend (create a sandbox, upload files, run setup). Idempotent."""
        ...

    async def close(self) -> None:
        """Release everything the backend holds (delete the sandbox). Idempotent."""
        ...

    # The timeout is a parameter on purpose: it must kill the command, not just stop the wait.
    async def run_command(
        self,
        command: str,
        *,
        timeout: float,  # noqa: ASYNC109
        cwd: str | None = None,
        profile: PermissionProfile | None = None,
    ) -> CommandResult:
        """Run ``command`` with a shell, stdin closed; kill the whole tree after ``timeout`` s.

        ``profile`` is the permission profile the command runs for (the bash tool always passes
        it): the backend confines the process accordingly, or refuses with
        ``ConfinementUnavailable``. ``None`` means the caller's own command, not a tool's.
        """
        ...

    async def read_file(self, path: str) -> bytes:
        """Return the bytes of ``path``; raise ``FileNotFoundError`` if it does not exist."""
        ...

    async def write_file(self, path: str, data: bytes) -> None:
        """Create or replace ``path`` (creating parent directories)."""
        ...

    async def list_dir(self, path: str) -> list[FileEntry]:
        """List ``path`` sorted by name; raise ``FileNotFoundError``/``NotADirectoryError``."""
        ...

    async def glob(self, pattern: str, path: str, *, limit: int) -> list[str]:
        """Paths under ``path`` matching ``pattern`` (``**`` recurses), sorted, at most
        ``limit``."""
        ...

    async def grep(
        self, pattern: str, path: str, *, include: str | None, limit: int
    ) -> list[GrepMatch]:
        """Lines matching the regex ``pattern`` in files under ``path`` (optionally only files
        whose name matches the glob ``include``), at most ``limit``. The pattern is data, never
        command-line flags."""
        ...
