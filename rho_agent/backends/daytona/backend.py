"""DaytonaBackend: run an agent's tools in a Daytona sandbox, one sandbox per session.

A ``DaytonaBackend`` built by the user is a *template*: safe to keep in a shared ``AgentConfig``
and to send to the fleet (``to_dict()`` / ``from_dict()``, never with credentials). Each session
calls ``for_session()`` and gets its own instance, which creates its sandbox lazily on
``start()`` (the first tool call, or ``Session.get_sandbox()``) and deletes it on ``close()``.
Sessions of one agent never share or delete each other's sandbox; they do share one Daytona
client per event loop.

If the process dies before ``close()``, the sandbox stops itself after ``auto_stop_interval``
minutes without activity and is then deleted after ``auto_delete_interval`` minutes (0: at
once), so a crash never leaves a billed sandbox running. See docs/daytona.md.

The ``daytona`` package is imported only when a sandbox is first needed.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from rho_agent.backends.base import CommandResult, FileEntry, GrepMatch
from rho_agent.backends.daytona import files
from rho_agent.backends.daytona.commands import run_in_sandbox
from rho_agent.backends.daytona.lifecycle import DELETE_TIMEOUT, delete_sandbox, provision
from rho_agent.backends.daytona.sdk import ClientPool, settle
from rho_agent.backends.daytona.settings import (
    DaytonaSettings,
    UploadsArg,
    parse_env,
    parse_uploads,
)
from rho_agent.errors import BackendError, ConfigError
from rho_agent.sandbox import looks_secret

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox, DaytonaConfig, Image, Resources

    from rho_agent.permissions import PermissionProfile

__all__ = ["DaytonaBackend"]


class DaytonaBackend:
    """Execution backend that runs commands and file operations in a Daytona sandbox.

    Args:
        image: Image name (``"python:3.12"``) or a ``daytona.Image`` to build. Default: none,
            which with no ``snapshot`` means Daytona's default snapshot.
        snapshot: Name of a Daytona snapshot to start from (fast; excludes ``image``).
        resources: ``{"cpu": 2, "memory": 4, "disk": 10, "gpu": 0}`` (GiB) or a
            ``daytona.Resources``; needs ``image`` (a snapshot fixes its own size).
        env_vars: Environment variables set in the sandbox (they travel in ``to_dict()``).
        forward_env: Names of variables copied from this process's environment when the
            sandbox is created: the way to pass secrets without putting them in a job.
        uploads: Local files or directories copied in before setup, as ``{local: sandbox}``,
            ``[(local, sandbox)]`` or ``["LOCAL:SANDBOX"]``; sandbox paths may be relative
            to the working dir.
        setup_commands: Shell commands run in the working dir, in order, before the agent
            starts; one that fails (or runs past ``setup_timeout`` s) stops the start with its
            output in the error.
        working_dir: Working dir in the sandbox: absolute, relative to the sandbox user's home,
            or None for the sandbox's own work dir (the image's WORKDIR). Created if missing.
        auto_stop_interval: Minutes without activity before Daytona stops the sandbox
            (0 disables: a crashed process then leaves it running and billed).
        auto_delete_interval: Minutes a stopped sandbox is kept before Daytona deletes it
            (0: at once; -1: never).
        labels: Extra Daytona labels on each sandbox.
        create_timeout: Seconds to wait for a sandbox to be created and started.
        setup_timeout: Seconds each setup command may run.
        daytona_config: A ``daytona.DaytonaConfig`` with credentials; by default they come
            from ``DAYTONA_API_KEY`` / ``DAYTONA_API_URL`` (and ``DAYTONA_TARGET``). Never
            serialised.
    """

    def __init__(
        self,
        *,
        image: str | Image | None = None,
        snapshot: str | None = None,
        resources: Mapping[str, int] | Resources | None = None,
        env_vars: Mapping[str, str] | None = None,
        forward_env: Iterable[str] = (),
        uploads: UploadsArg | None = None,
        setup_commands: Iterable[str] = (),
        working_dir: str | None = None,
        auto_stop_interval: int = 15,
        auto_delete_interval: int = 0,
        labels: Mapping[str, str] | None = None,
        create_timeout: float = 300.0,
        setup_timeout: float = 600.0,
        daytona_config: DaytonaConfig | None = None,
    ) -> None:
        image_object = None if image is None or isinstance(image, str) else image
        if image_object is not None and not hasattr(image_object, "dockerfile"):
            raise ConfigError(
                f"DaytonaBackend(image=...) takes an image name or a daytona.Image, got {image!r}"
            )
        data: dict[str, Any] = {
            "image": image if isinstance(image, str) else None,
            "dockerfile": image_object.dockerfile() if image_object is not None else None,
            "snapshot": snapshot,
            "resources": _resources_data(resources),
            "env_vars": dict(env_vars or {}),
            "forward_env": tuple(forward_env),
            "uploads": parse_uploads(uploads),
            "setup_commands": _commands(setup_commands),
            "working_dir": working_dir,
            "auto_stop_interval": auto_stop_interval,
            "auto_delete_interval": auto_delete_interval,
            "labels": dict(labels or {}),
            "create_timeout": create_timeout,
            "setup_timeout": setup_timeout,
        }
        settings = DaytonaSettings.parse(data, source="DaytonaBackend(...)")
        self._setup(settings, image_object, daytona_config, ClientPool(daytona_config), None)

    def _setup(
        self,
        settings: DaytonaSettings,
        image: Image | None,
        config: DaytonaConfig | None,
        clients: ClientPool,
        session_id: str | None,
    ) -> None:
        self._settings = settings
        self._image = image
        self._config = config
        self._clients = clients
        self._session_id = session_id
        self._lock = asyncio.Lock()
        self._client: AsyncDaytona | None = None
        self._sandbox: AsyncSandbox | None = None
        self._working_dir: str | None = None
        self._closed = False

    # -- construction helpers -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DaytonaBackend:
        """Rebuild a template from ``to_dict()`` data (e.g. from a fleet job). Credentials come
        from the environment of the process that uses it."""
        settings = DaytonaSettings.parse(data, source="DaytonaBackend.from_dict()")
        backend = cls.__new__(cls)
        cls._setup(backend, settings, None, None, ClientPool(None), None)
        return backend

    @classmethod
    def from_cli(
        cls,
        *,
        uploads: Iterable[str] = (),
        env: Iterable[str] = (),
        setup: Iterable[str] = (),
        **options: Any,
    ) -> DaytonaBackend:
        """Build from command-line strings: ``uploads=["./src:/home/daytona/src", "data"]``,
        ``env=["DEBUG=1", "GITHUB_TOKEN"]`` (a bare name is forwarded from this environment),
        ``setup=["pip install -e ."]``; other keyword arguments as in the constructor."""
        env_vars, forwarded = parse_env(env)
        return cls(
            uploads=list(uploads),
            env_vars={**dict(options.pop("env_vars", {})), **env_vars},
            forward_env=[*options.pop("forward_env", ()), *forwarded],
            setup_commands=list(setup),
            **options,
        )

    def to_dict(self) -> dict[str, Any]:
        """The template as JSON-safe data, without credentials (``from_dict`` reverses it)."""
        # The SDK keeps an Image's local files in ``_context_list`` (it has no public accessor).
        if self._image is not None and getattr(self._image, "_context_list", None):
            raise ConfigError(
                "this DaytonaBackend's image copies local files into the image, which cannot be "
                "sent as data: build it into a Daytona snapshot and use snapshot=... instead"
            )
        return self._settings.model_dump(mode="json")

    def for_session(self, *, session_id: str | None = None) -> DaytonaBackend:
        """A fresh backend with this configuration that will own one new sandbox.

        ``session_id`` is recorded as the sandbox's ``rho-agent-session`` label.
        """
        cls = type(self)
        backend = cls.__new__(cls)
        cls._setup(backend, self._settings, self._image, self._config, self._clients, session_id)
        return backend

    def __copy__(self) -> DaytonaBackend:
        """Copies are unstarted: a copied config must never share (or delete) a sandbox."""
        return self.for_session(session_id=self._session_id)

    def __deepcopy__(self, memo: dict[int, Any]) -> DaytonaBackend:
        return self.for_session(session_id=self._session_id)

    def __repr__(self) -> str:
        source = (
            self._settings.snapshot
            or self._settings.image
            or ("custom image" if self._settings.dockerfile else "default snapshot")
        )
        state = (
            "closed"
            if self._closed
            else (f"sandbox {self.sandbox_id}" if self._sandbox else "not started")
        )
        return f"DaytonaBackend({source!r}, {state})"

    # -- the sandbox --------------------------------------------------------------------------

    @property
    def sandbox(self) -> AsyncSandbox:
        """The ``daytona.AsyncSandbox`` of this backend; BackendError until ``start()``."""
        if self._sandbox is None:
            raise BackendError(
                "the Daytona sandbox does not exist yet: await backend.start() or "
                "session.get_sandbox() first"
            )
        return self._sandbox

    @property
    def sandbox_id(self) -> str | None:
        """The id of this backend's sandbox, None before ``start()`` and after ``close()``."""
        return None if self._sandbox is None else str(self._sandbox.id)

    async def get_sandbox(self) -> AsyncSandbox:
        """Start (create the sandbox) if needed and return it."""
        return await self._started()

    @property
    def working_dir(self) -> str:
        """Absolute working dir in the sandbox. Known before ``start()`` only when configured
        as an absolute path."""
        if self._working_dir is not None:
            return self._working_dir
        configured = self._settings.working_dir
        if configured is not None and posixpath.isabs(configured):
            return posixpath.normpath(configured)
        raise BackendError(
            "the sandbox's working dir is known once it has started: await backend.start() "
            "first, or configure an absolute working_dir"
        )

    async def start(self) -> None:
        """Create and prepare this backend's sandbox unless it exists. Idempotent, and safe to
        call from concurrent tasks (one sandbox is created)."""
        if self._sandbox is not None:
            return
        async with self._lock:
            if self._closed:
                raise BackendError(
                    "this Daytona backend was closed and its sandbox deleted; open a new Session "
                    "(or call for_session()) for a new sandbox"
                )
            if self._sandbox is not None:
                return
            client = await self._clients.acquire()
            try:
                ready = await provision(client, self._settings, self._image, self._labels())
            except BaseException:
                await settle(self._clients.release(client), DELETE_TIMEOUT)
                raise
            self._client, self._sandbox, self._working_dir = (
                client,
                ready.sandbox,
                ready.working_dir,
            )

    async def close(self) -> None:
        """Delete the sandbox (if one was created) and release the client. Idempotent; the
        backend cannot be started again afterwards."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            sandbox, client = self._sandbox, self._client
            self._sandbox = self._client = None
        try:
            if sandbox is not None:
                await settle(delete_sandbox(sandbox), DELETE_TIMEOUT)
        finally:
            if client is not None:
                await settle(self._clients.release(client), DELETE_TIMEOUT)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ExecutionBackend ---------------------------------------------------------------------

    async def run_command(
        self,
        command: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the ExecutionBackend protocol's signature
        cwd: str | None = None,
        profile: PermissionProfile | None = None,
    ) -> CommandResult:
        # The sandbox is the confinement; ``profile`` needs nothing more here. The command's
        # environment is the allowlist plus the configured names that do not look secret.
        sandbox = await self._started()
        settings = self._settings
        configured = {
            **settings.env_vars,
            **{n: os.environ.get(n, "") for n in settings.forward_env},
        }
        return await run_in_sandbox(
            sandbox,
            command,
            cwd=cwd or self.working_dir,
            time_limit=timeout,
            auto_stop_interval=settings.auto_stop_interval,
            env_names=[name for name, value in configured.items() if not looks_secret(name, value)],
        )

    async def read_file(self, path: str) -> bytes:
        return await files.read_file(await self._started(), path)

    async def write_file(self, path: str, data: bytes) -> None:
        await files.write_file(await self._started(), path, data)

    async def list_dir(self, path: str) -> list[FileEntry]:
        return await files.list_dir(await self._started(), path)

    async def glob(self, pattern: str, path: str, *, limit: int) -> list[str]:
        return await files.glob(await self._started(), pattern, path, limit=limit)

    async def grep(
        self, pattern: str, path: str, *, include: str | None, limit: int
    ) -> list[GrepMatch]:
        return await files.grep(
            await self._started(),
            pattern,
            path,
            include=include,
            limit=limit,
            auto_stop_interval=self._settings.auto_stop_interval,
        )

    async def _started(self) -> AsyncSandbox:
        await self.start()
        return self.sandbox

    def _labels(self) -> dict[str, str]:
        labels = {"created-by": "rho-agent"}
        if self._session_id:
            labels["rho-agent-session"] = self._session_id
        return labels


def _resources_data(resources: Mapping[str, int] | Resources | None) -> dict[str, Any] | None:
    """Accept a mapping or a ``daytona.Resources`` (a dataclass) without importing daytona."""
    if resources is None or isinstance(resources, Mapping):
        return None if resources is None else dict(resources)
    fields = ("cpu", "memory", "disk", "gpu")
    if getattr(resources, "gpu_type", None) is not None:
        raise ConfigError("Resources.gpu_type is not supported by DaytonaBackend; drop it")
    return {name: getattr(resources, name, None) for name in fields}


def _commands(commands: Iterable[str]) -> tuple[str, ...]:
    if isinstance(commands, str):
        return (commands,)
    return tuple(commands)
