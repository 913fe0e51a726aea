"""Turning a path from the model into a path a backend may touch, under the permission profile.

Relative paths resolve against the backend's working dir. When the profile confines an action to
the working dir, the path is resolved through ``..`` and symlinks before the check, so neither can
lead outside. Symlinks are resolved by backends that implement ``PathResolver`` (``LocalBackend``
does); on others the check is lexical, and the sandbox itself is the outer boundary.

A check followed by an open is a race: a directory of the path can be swapped for a symlink in
between. Backends that implement ``BeneathFiles`` (``LocalBackend``) open the checked path below
the working dir without following any link, so ``read_checked``/``write_checked`` close that gap.

Paths are POSIX: both backends run on POSIX filesystems.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rho_agent.errors import PermissionDenied, ToolError

if TYPE_CHECKING:
    from rho_agent.backends.base import ExecutionBackend
    from rho_agent.tools.base import ToolInvocation


@runtime_checkable
class PathResolver(Protocol):
    """Optional backend capability: resolve symlinks and ``..`` the way its filesystem does."""

    async def realpath(self, path: str) -> str:
        """``path`` with every symlink resolved (missing trailing parts kept as they are)."""
        ...


@runtime_checkable
class BeneathFiles(Protocol):
    """Optional backend capability: read and write files below a root, following no symlink."""

    async def read_file_beneath(self, root: str, path: str) -> bytes: ...

    async def write_file_beneath(
        self, root: str, path: str, data: bytes, *, single_link: bool
    ) -> None: ...


def resolve_path(path: str, working_dir: str) -> str:
    """The absolute, normalised form of ``path`` (relative paths start at ``working_dir``)."""
    if not path.strip():
        raise ToolError("the path is empty; give a file path relative to the working directory")
    if "\x00" in path:
        raise ToolError("the path contains a NUL character")
    if path.startswith("~"):
        raise ToolError(
            f"{path!r}: '~' is not expanded; use an absolute path or a path relative to the "
            f"working directory {working_dir}"
        )
    return posixpath.normpath(posixpath.join(working_dir, path))


def is_within(path: str, root: str) -> bool:
    """Whether the normalised absolute ``path`` is ``root`` or lies below it."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


def display_path(path: str, working_dir: str) -> str:
    """What the model sees: ``path`` relative to ``working_dir`` if inside it, else absolute."""
    if is_within(path, working_dir):
        return posixpath.relpath(path, working_dir)
    return path


async def real_path(backend: ExecutionBackend, path: str) -> str:
    """``path`` with symlinks resolved when the backend can, else as given."""
    if isinstance(backend, PathResolver):
        try:
            return await backend.realpath(path)
        except OSError as exc:  # a link removed while it was being read
            raise ToolError(
                f"{path} changed while it was being resolved ({exc.strerror}); try again"
            ) from None
    return path


async def path_for_read(invocation: ToolInvocation, path: str) -> str:
    """The path read/list/glob/grep may look at, or ``PermissionDenied``."""
    backend = invocation.backend
    resolved = resolve_path(path, backend.working_dir)
    if invocation.profile.read == "working_dir":
        return await _confined(invocation, path, resolved, "read files")
    return resolved


async def path_for_write(invocation: ToolInvocation, path: str) -> str:
    """The path write/edit may change, or ``PermissionDenied``."""
    profile = invocation.profile
    if profile.write == "none":
        raise PermissionDenied(
            f"the permission profile {profile.name!r} does not allow changing files "
            f"(refused: {path})"
        )
    resolved = resolve_path(path, invocation.backend.working_dir)
    if profile.write == "working_dir":
        return await _confined(invocation, path, resolved, "change files")
    return resolved


async def _confined(invocation: ToolInvocation, given: str, resolved: str, action: str) -> str:
    backend = invocation.backend
    real = await real_path(backend, resolved)
    root = await _root(backend)
    if is_within(real, root):
        return real
    shown = given if real == given else f"{given} (resolves to {real})"
    raise PermissionDenied(
        f"{shown} is outside the working directory {backend.working_dir}; the permission "
        f"profile {invocation.profile.name!r} only allows tools to {action} inside it"
    )


async def read_checked(invocation: ToolInvocation, path: str) -> bytes:
    """Read ``path`` (from ``path_for_read``), below the working dir when the profile confines
    reads and the backend can open without following links."""
    backend = invocation.backend
    if invocation.profile.read == "working_dir" and isinstance(backend, BeneathFiles):
        return await backend.read_file_beneath(await _root(backend), path)
    return await backend.read_file(path)


async def write_checked(invocation: ToolInvocation, path: str, data: bytes) -> None:
    """Write ``path`` (from ``path_for_write``), below the working dir when the profile confines
    writes, refusing a file with several hard links there (its other names may be outside)."""
    backend = invocation.backend
    if invocation.profile.write == "working_dir" and isinstance(backend, BeneathFiles):
        await backend.write_file_beneath(await _root(backend), path, data, single_link=True)
        return
    await backend.write_file(path, data)


async def _root(backend: ExecutionBackend) -> str:
    return await real_path(backend, posixpath.normpath(backend.working_dir))
