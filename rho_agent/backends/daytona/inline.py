"""Uploads made portable: the files a config names, read here and carried as content.

A fleet job runs on another machine, which must never read a path the job names (it would read
the worker's own files). So the sender reads every upload (a file, or every file below a
directory) and the job carries the bytes, base64-encoded, within ``MAX_INLINE_BYTES``.
"""

from __future__ import annotations

import base64
import os
import posixpath
from pathlib import Path
from typing import Any

from rho_agent.errors import ConfigError

MAX_INLINE_BYTES = 8 * 1024 * 1024
"""The most upload bytes one job carries (jobs travel through Redis): larger inputs belong in the
sandbox image or are fetched by setup commands."""


def inline_uploads(uploads: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``uploads`` (``{"local", "remote"}`` data) as ``{"content", "remote"}`` entries, one a file.

    Raises ConfigError naming the upload that is missing or the size that is too large. Empty
    directories are not carried.
    """
    inlined: list[dict[str, str]] = []
    total = 0
    for upload in uploads:
        if upload.get("content") is not None:
            inlined.append({"content": str(upload["content"]), "remote": str(upload["remote"])})
            continue
        local = Path(str(upload["local"])).expanduser()
        for path, remote in _files(local, str(upload["remote"])):
            data = path.read_bytes()
            total += len(data)
            if total > MAX_INLINE_BYTES:
                raise ConfigError(
                    f"uploads come to more than {MAX_INLINE_BYTES:,} bytes, more than a job "
                    "carries; put large inputs in the sandbox image or fetch them in "
                    "setup_commands"
                )
            inlined.append({"content": base64.b64encode(data).decode("ascii"), "remote": remote})
    return inlined


def _files(local: Path, remote: str) -> list[tuple[Path, str]]:
    if local.is_file():
        return [(local, remote)]
    if not local.is_dir():
        raise ConfigError(f"upload source {local} does not exist on this machine")
    found = []
    for directory, _, names in os.walk(local):
        base = Path(directory)
        for name in sorted(names):
            if (base / name).is_file():
                relative = (base / name).relative_to(local).as_posix()
                found.append((base / name, posixpath.join(remote, relative)))
    return found
