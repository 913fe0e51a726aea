"""The seam to the ``daytona`` SDK: lazy import, shared clients, and errors that say what to fix.

Nothing here imports ``daytona`` at module import time: the SDK is optional
(``rho-agent[daytona]``) and takes about a second to import, so it is loaded in a worker thread
the first time a backend starts.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import weakref
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from rho_agent.errors import BackendError

if TYPE_CHECKING:
    from daytona import AsyncDaytona, DaytonaConfig

T = TypeVar("T")

INSTALL_HINT = "pip install 'rho-agent[daytona]'"
_KEYS_URL = "https://app.daytona.io/dashboard/keys"


def sdk() -> ModuleType:
    """The ``daytona`` module, or a BackendError saying how to install it."""
    try:
        return importlib.import_module("daytona")
    except ImportError as exc:
        raise BackendError(
            f"the Daytona backend needs the daytona package ({exc}): {INSTALL_HINT}"
        ) from exc


async def load_sdk() -> ModuleType:
    """``sdk()`` without blocking the event loop on the first, slow import."""
    module = sys.modules.get("daytona")
    return module if module is not None else await asyncio.to_thread(sdk)


def config_from_environment() -> DaytonaConfig:
    """Credentials from this process's environment only (never from files or job payloads)."""
    api_key = os.environ.get("DAYTONA_API_KEY")
    jwt_token = os.environ.get("DAYTONA_JWT_TOKEN")
    if not api_key and not jwt_token:
        raise BackendError(
            "no Daytona credentials: set DAYTONA_API_KEY (create one at "
            f"{_KEYS_URL}), and DAYTONA_API_URL for a self-hosted Daytona, or pass "
            "DaytonaBackend(daytona_config=DaytonaConfig(...))"
        )
    # No pool limit: every running command holds one connection for its whole duration.
    config: DaytonaConfig = sdk().DaytonaConfig(
        api_key=api_key or None,
        jwt_token=jwt_token or None,
        organization_id=os.environ.get("DAYTONA_ORGANIZATION_ID") or None,
        api_url=os.environ.get("DAYTONA_API_URL") or None,
        target=os.environ.get("DAYTONA_TARGET") or None,
        connection_pool_maxsize=None,
    )
    return config


@dataclass
class _Shared:
    client: AsyncDaytona
    users: int


class ClientPool:
    """One ``AsyncDaytona`` per event loop, shared by every session of one backend template.

    Sessions come and go; the client (its HTTP pool and event stream) lives while at least one
    session of this loop holds it, and is closed by the last ``release``.
    """

    def __init__(self, config: DaytonaConfig | None) -> None:
        self._config = config
        self._shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared] = (
            weakref.WeakKeyDictionary()
        )

    async def acquire(self) -> AsyncDaytona:
        daytona = await load_sdk()
        loop = asyncio.get_running_loop()
        shared = self._shared.get(loop)
        if shared is None:
            config = self._config or config_from_environment()
            with daytona_errors("connecting to Daytona"):
                shared = _Shared(daytona.AsyncDaytona(config), 0)
            self._shared[loop] = shared
        shared.users += 1
        return shared.client

    async def release(self, client: AsyncDaytona) -> None:
        loop = asyncio.get_running_loop()
        shared = self._shared.get(loop)
        if shared is None or shared.client is not client:
            await client.close()  # type: ignore[no-untyped-call]
            return
        shared.users -= 1
        if shared.users <= 0:
            del self._shared[loop]
            await client.close()  # type: ignore[no-untyped-call]


@contextmanager
def daytona_errors(doing: str, sandbox_id: str | None = None) -> Iterator[None]:
    """Turn a Daytona SDK error raised inside the block into a BackendError that says what to do."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        daytona = sys.modules.get("daytona")
        if daytona is None or not isinstance(exc, daytona.DaytonaError):
            raise
        raise BackendError(describe(exc, doing, sandbox_id)) from exc


def describe(exc: Exception, doing: str, sandbox_id: str | None = None) -> str:
    """A one-line explanation of a Daytona SDK error, with the fix."""
    daytona = sdk()
    status = getattr(exc, "status_code", None)
    detail = str(exc) or type(exc).__name__
    where = f"Daytona error while {doing}"
    if "quota" in detail.lower() or (
        isinstance(exc, daytona.DaytonaForbiddenError) and "limit" in detail.lower()
    ):
        return (
            f"{where}: quota exceeded ({status}): {detail}. Delete sandboxes you no longer "
            "need (stopped ones count until deleted), lower resources, or ask Daytona to "
            "raise your organization's limits"
        )
    if isinstance(exc, daytona.DaytonaAuthenticationError):
        if status is None:
            return f"{where}: {detail}"
        return (
            f"{where}: DAYTONA_API_KEY rejected ({status}): set a valid key "
            f"(create one at {_KEYS_URL}) and check DAYTONA_API_URL points at its Daytona"
        )
    if isinstance(exc, daytona.DaytonaForbiddenError):
        return (
            f"{where}: access denied ({status}): {detail}. Check that the API key has the "
            "sandbox permissions and belongs to the right organization"
        )
    if isinstance(exc, daytona.DaytonaRateLimitError):
        return (
            f"{where}: rate limited ({status}): {detail}. Retry later, or run fewer sessions "
            "at once"
        )
    if isinstance(exc, daytona.DaytonaNotFoundError):
        if sandbox_id is None:
            return f"{where}: not found ({detail}). Check the snapshot or image name"
        return (
            f"{where}: sandbox {sandbox_id} no longer exists ({detail}). It was deleted, or "
            "auto-deleted after it stopped; start a new session"
        )
    if isinstance(exc, daytona.DaytonaTimeoutError):
        return (
            f"{where}: timed out ({detail}). Raise create_timeout / the command timeout, or "
            "check https://status.daytona.io"
        )
    if isinstance(exc, daytona.DaytonaConnectionError):
        return f"{where}: cannot reach Daytona ({detail}). Check DAYTONA_API_URL and the network"
    return f"{where}: {detail}"


async def settle(awaitable: Awaitable[T], time_limit: float) -> T:
    """Await ``awaitable`` to the end even if the caller is cancelled meanwhile, then re-raise.

    Cleanup (deleting a sandbox, killing a command) must finish before a ``CancelledError``
    propagates, or the thing it cleans up outlives the task that owned it.
    """
    task: asyncio.Future[T] = asyncio.ensure_future(asyncio.wait_for(awaitable, time_limit))
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller must see
        raise asyncio.CancelledError
    return task.result()
