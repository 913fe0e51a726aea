"""Creating a session's sandbox (create, working dir, uploads, setup commands) and deleting it.

A sandbox that fails anywhere in ``provision`` is deleted before the error propagates, and so
is one whose creation was cancelled half-way (found again by its unique name): a failed start
never leaves a billed sandbox behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import posixpath
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rho_agent.backends.daytona.commands import run_in_sandbox
from rho_agent.backends.daytona.sdk import daytona_errors, sdk, settle
from rho_agent.backends.daytona.settings import DaytonaSettings, Upload
from rho_agent.errors import BackendError

if TYPE_CHECKING:
    from daytona import AsyncDaytona, AsyncSandbox, Image

DELETE_TIMEOUT = 60.0
_UPLOAD_BATCH_FILES = 200
_UPLOAD_BATCH_BYTES = 64 * 1024 * 1024
_OUTPUT_TAIL = 4000


@dataclass(frozen=True)
class Provisioned:
    """A started, prepared sandbox and the absolute working dir inside it."""

    sandbox: AsyncSandbox
    working_dir: str


async def provision(
    client: AsyncDaytona,
    settings: DaytonaSettings,
    image: Image | None,
    labels: dict[str, str],
) -> Provisioned:
    """Create the sandbox, then upload files and run setup commands in its working dir."""
    sandbox = await _create(client, settings, image, labels)
    try:
        working_dir = await _working_dir(sandbox, settings.working_dir)
        with daytona_errors(f"creating the working dir {working_dir}", sandbox.id):
            await sandbox.fs.create_folder(working_dir, "755")
        await _upload(sandbox, settings.uploads, working_dir)
        await _run_setup(sandbox, settings, working_dir)
    except BaseException:
        await settle(_discard(sandbox), DELETE_TIMEOUT)
        raise
    return Provisioned(sandbox, working_dir)


async def delete_sandbox(sandbox: AsyncSandbox) -> None:
    """Delete the sandbox; one that is already gone (e.g. auto-deleted) counts as deleted."""
    daytona = sdk()
    try:
        with (
            daytona_errors("deleting the sandbox", sandbox.id),
            contextlib.suppress(daytona.DaytonaNotFoundError),
        ):
            await sandbox.delete(DELETE_TIMEOUT)
    except BackendError as error:
        raise BackendError(
            f"{error}. Sandbox {sandbox.id} may still exist: delete it in the Daytona dashboard "
            "(label created-by=rho-agent); if not, it stops after auto_stop_interval idle "
            "minutes and is deleted auto_delete_interval minutes later"
        ) from error.__cause__


async def _discard(sandbox: AsyncSandbox) -> None:
    """Best effort, on a failed start: the start's own error is the one to report."""
    with contextlib.suppress(Exception):
        await delete_sandbox(sandbox)


async def _create(
    client: AsyncDaytona, settings: DaytonaSettings, image: Image | None, labels: dict[str, str]
) -> AsyncSandbox:
    name = f"rho-agent-{uuid.uuid4().hex}"
    params = _create_params(settings, image, name, labels)
    try:
        with daytona_errors("creating a sandbox"):
            sandbox: AsyncSandbox = await client.create(params, timeout=settings.create_timeout)
    except BaseException as exc:
        await settle(_delete_by_name(client, name), DELETE_TIMEOUT)
        if isinstance(exc, BackendError):
            raise _start_failure(exc, settings) from exc.__cause__
        raise
    return sandbox


def _start_failure(error: BackendError, settings: DaytonaSettings) -> BackendError:
    """Say plainly why a created sandbox did not start (the SDK's advice no longer applies)."""
    cause = error.__cause__
    if isinstance(cause, sdk().DaytonaTimeoutError) and "exceeded timeout" in str(cause):
        return BackendError(
            f"the Daytona sandbox did not start within create_timeout={settings.create_timeout:g}"
            "s and was deleted: raise create_timeout (building an image can take minutes) or "
            "check https://status.daytona.io"
        )
    if "error state" in str(cause):
        return BackendError(
            f"the Daytona sandbox failed to start and was deleted ({cause}): check that the "
            "image or snapshot exists and builds"
        )
    return error


async def _delete_by_name(client: AsyncDaytona, name: str) -> None:
    """Best effort: delete the sandbox a failed or cancelled ``create`` may have left."""
    with contextlib.suppress(Exception):
        sandbox = await client.get(name)
        await sandbox.delete(DELETE_TIMEOUT)


def _create_params(
    settings: DaytonaSettings, image: Image | None, name: str, labels: dict[str, str]
) -> Any:
    daytona = sdk()
    common: dict[str, Any] = {
        "name": name,
        "env_vars": _environment(settings),
        "labels": {**settings.labels, **labels},
        "auto_stop_interval": settings.auto_stop_interval,
        "auto_delete_interval": settings.auto_delete_interval,
    }
    source = image or _image(settings)
    if source is None:
        return daytona.CreateSandboxFromSnapshotParams(snapshot=settings.snapshot, **common)
    resources = None
    if settings.resources is not None:
        resources = daytona.Resources(**settings.resources.model_dump(exclude_none=True))
    return daytona.CreateSandboxFromImageParams(image=source, resources=resources, **common)


def _image(settings: DaytonaSettings) -> Image | str | None:
    """The image to build: a name, or an ``Image`` rebuilt from Dockerfile text."""
    if settings.dockerfile is None:
        return settings.image
    with tempfile.TemporaryDirectory(prefix="rho-agent-image-") as directory:
        path = Path(directory) / "Dockerfile"
        path.write_text(settings.dockerfile)
        image: Image = sdk().Image.from_dockerfile(path)
    return image


def _environment(settings: DaytonaSettings) -> dict[str, str]:
    """``env_vars`` plus ``forward_env`` read from this process's environment now."""
    missing = [name for name in settings.forward_env if name not in os.environ]
    if missing:
        raise BackendError(
            f"forward_env names {', '.join(missing)}, which this process's environment does "
            "not set: export them, or drop them from forward_env"
        )
    return {**settings.env_vars, **{name: os.environ[name] for name in settings.forward_env}}


async def _working_dir(sandbox: AsyncSandbox, configured: str | None) -> str:
    """Absolute as configured; relative to the user's home; or the sandbox's own work dir."""
    if configured is not None and posixpath.isabs(configured):
        return posixpath.normpath(configured)
    with daytona_errors("reading the sandbox's directories", sandbox.id):
        if configured is None:
            work_dir: str = await sandbox.get_work_dir()
            return work_dir
        home: str = await sandbox.get_user_home_dir()
    return posixpath.normpath(posixpath.join(home, configured))


async def _upload(sandbox: AsyncSandbox, uploads: tuple[Upload, ...], working_dir: str) -> None:
    daytona = sdk()
    files, folders = await asyncio.to_thread(_plan_uploads, uploads, working_dir)
    with daytona_errors("uploading files", sandbox.id):
        for folder in folders:
            await sandbox.fs.create_folder(folder, "755")
        for batch in _batches(files):
            await sandbox.fs.upload_files(
                [
                    daytona.FileUpload(
                        source=source if isinstance(source, bytes) else str(source),
                        destination=dest,
                    )
                    for source, dest in batch
                ]
            )


def _plan_uploads(
    uploads: tuple[Upload, ...], working_dir: str
) -> tuple[list[tuple[Path | bytes, str]], list[str]]:
    """Every file (a local path, or inline bytes) with its sandbox path, and the empty folders."""
    files: list[tuple[Path | bytes, str]] = []
    folders: list[str] = []
    for upload in uploads:
        remote = posixpath.normpath(posixpath.join(working_dir, upload.remote))
        if upload.content is not None:
            files.append((base64.b64decode(upload.content), remote))
            continue
        local = Path(str(upload.local)).expanduser()
        if local.is_dir():
            folders.extend(_collect(local, remote, files))
        elif local.is_file():
            files.append((local, remote))
        else:
            raise BackendError(
                f"upload source {upload.local} does not exist on this machine (uploads are read "
                "where the session starts, e.g. on the fleet worker)"
            )
    return files, folders


def _collect(local: Path, remote: str, files: list[tuple[Path | bytes, str]]) -> list[str]:
    """Add every file under ``local`` to ``files``; return the empty folders to create."""
    empty: list[str] = [] if any(local.iterdir()) else [remote]
    for directory, subdirectories, names in os.walk(local):
        base = Path(directory)
        target = posixpath.join(remote, base.relative_to(local).as_posix())
        for name in names:
            if (base / name).is_file():
                files.append((base / name, posixpath.normpath(posixpath.join(target, name))))
        empty.extend(
            posixpath.normpath(posixpath.join(target, sub))
            for sub in subdirectories
            if not any((base / sub).iterdir())
        )
    return empty


def _batches(files: list[tuple[Path | bytes, str]]) -> list[list[tuple[Path | bytes, str]]]:
    batches: list[list[tuple[Path | bytes, str]]] = []
    size = 0
    for item in files:
        source = item[0]
        item_size = len(source) if isinstance(source, bytes) else source.stat().st_size
        full = batches and len(batches[-1]) >= _UPLOAD_BATCH_FILES
        if not batches or full or size + item_size > _UPLOAD_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += item_size
    return batches


async def _run_setup(sandbox: AsyncSandbox, settings: DaytonaSettings, working_dir: str) -> None:
    total = len(settings.setup_commands)
    for number, command in enumerate(settings.setup_commands, 1):
        result = await run_in_sandbox(
            sandbox,
            command,
            cwd=working_dir,
            time_limit=settings.setup_timeout,
            auto_stop_interval=settings.auto_stop_interval,
        )
        if result.timed_out or result.exit_code != 0:
            how = (
                f"timed out after {settings.setup_timeout:g}s"
                if result.timed_out
                else f"exited with {result.exit_code}"
            )
            raise BackendError(
                f"setup command {number}/{total} {how}: {command}\n"
                f"--- output (last {_OUTPUT_TAIL} characters) ---\n"
                f"{result.output[-_OUTPUT_TAIL:]}"
            )
