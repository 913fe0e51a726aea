"""The fake daemon's file endpoints, with the wire formats of the real daemon.

Relative paths resolve against the sandbox directory; absolute paths are used as they are
(the fake's sandboxes live on this machine: it isolates tests, it is not a security boundary).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from rho_agent.testing._daytona_process import ProcessRoutes
from rho_agent.testing._daytona_state import daemon_error

_NOT_FOUND = "FILE_NOT_FOUND"


class FileRoutes:
    """``/toolbox/{sandbox}/files...`` and the info endpoints."""

    def __init__(self, process: ProcessRoutes) -> None:
        self._process = process

    def add_to(self, app: web.Application) -> None:
        base = "/toolbox/{sandbox}"
        app.router.add_post(f"{base}/files/bulk-upload", self.upload)
        app.router.add_post(f"{base}/files/bulk-download", self.download)
        app.router.add_get(f"{base}/files", self.list)
        app.router.add_delete(f"{base}/files", self.delete)
        app.router.add_get(f"{base}/files/info", self.info)
        app.router.add_get(f"{base}/files/search", self.search)
        app.router.add_get(f"{base}/files/find", self.find)
        app.router.add_post(f"{base}/files/folder", self.folder)
        app.router.add_get(f"{base}/work-dir", self.work_dir)
        app.router.add_get(f"{base}/user-home-dir", self.home_dir)

    def _path(self, request: web.Request, operation: str, raw: str | None = None) -> Path:
        sandbox = self._process.sandbox(request, operation)
        value = raw if raw is not None else request.query.get("path", "")
        if not value:
            raise daemon_error(400, "path is required", "BAD_REQUEST")
        return sandbox.root / value

    async def upload(self, request: web.Request) -> web.Response:
        root = self._path(request, "upload", ".")
        destinations: dict[str, str] = {}
        errors: list[str] = []
        written: list[dict[str, Any]] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            index = part.name.removeprefix("files[").split("]")[0]
            if part.name.endswith(".path"):
                destinations[index] = (await part.text()).strip()
                continue
            destination = destinations.get(index)
            if destination is None:
                errors.append(f"file[{index}]: missing .path metadata")
                continue
            data = await part.read()
            try:
                await asyncio.to_thread(_write, root / destination, bytes(data))
            except OSError as exc:
                errors.append(f"{destination}: {exc}")
                continue
            written.append({"path": destination, "bytes": len(data)})
        if errors:
            return web.json_response({"errors": errors, "files": written}, status=400)
        return web.json_response({"files": written})

    async def download(self, request: web.Request) -> web.Response:
        root = self._path(request, "download", ".")
        body = await request.json()
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths:
            raise daemon_error(400, 'request body must be {"paths": [...]} and non-empty')
        boundary = uuid.uuid4().hex
        parts = [await asyncio.to_thread(_download_part, root, str(p), boundary) for p in paths]
        payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return web.Response(body=payload, headers=_boundary(boundary))

    async def list(self, request: web.Request) -> web.Response:
        path = self._path(request, "list")
        depth = int(request.query.get("depth") or 1)
        entries = await asyncio.to_thread(_list, path, depth)
        return web.json_response(entries)

    async def info(self, request: web.Request) -> web.Response:
        path = self._path(request, "info")
        return web.json_response(await asyncio.to_thread(_info_or_404, path))

    async def delete(self, request: web.Request) -> web.Response:
        path = self._path(request, "delete_file")
        recursive = request.query.get("recursive") == "true"
        await asyncio.to_thread(_delete, path, recursive)
        return web.Response(status=204)

    async def folder(self, request: web.Request) -> web.Response:
        path = self._path(request, "folder")
        mode = int(request.query.get("mode") or "755", 8)
        await asyncio.to_thread(path.mkdir, mode, True, True)
        return web.Response(status=201)

    async def search(self, request: web.Request) -> web.Response:
        path = self._path(request, "search")
        pattern = request.query.get("pattern", "")
        if not pattern:
            raise daemon_error(400, "path and pattern are required", "BAD_REQUEST")
        files = await asyncio.to_thread(_search, path, doublestar_regex(pattern))
        return web.json_response({"files": files})

    async def find(self, request: web.Request) -> web.Response:
        path = self._path(request, "find")
        pattern = request.query.get("pattern", "")
        if not pattern:
            raise daemon_error(400, "path and pattern are required", "BAD_REQUEST")
        return web.json_response(await asyncio.to_thread(_find, path, pattern))

    async def work_dir(self, request: web.Request) -> web.Response:
        sandbox = self._process.sandbox(request, "work_dir")
        return web.json_response({"dir": str(sandbox.root)})

    async def home_dir(self, request: web.Request) -> web.Response:
        sandbox = self._process.sandbox(request, "home_dir")
        return web.json_response({"dir": str(sandbox.root)})


def _write(path: Path, data: bytes) -> None:
    """Create parents and replace the file, as the daemon's bulk upload does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(f"is a directory: {path}")
    temporary = path.parent / f".daytona-upload-{uuid.uuid4().hex}"
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _download_part(root: Path, raw: str, boundary: str) -> bytes:
    """One multipart part: the file's bytes, or a JSON error the SDK turns into a typed error."""
    path = root / raw
    disposition = f"filename*=utf-8''{urllib.parse.quote(raw, safe='/')}"
    try:
        if path.is_dir():
            raise IsADirectoryError(raw)
        data = path.read_bytes()
        headers = (
            f'Content-Disposition: form-data; name="file"; {disposition}\r\n'
            "Content-Type: application/octet-stream\r\n"
        )
    except OSError as exc:
        status, code = (404, _NOT_FOUND) if isinstance(exc, FileNotFoundError) else (400, None)
        message = f"file not found or invalid: {raw}" if status == 404 else f"{raw}: {exc}"
        data = _error_json(status, message, code or "INVALID_FILE_PATH")
        headers = (
            f'Content-Disposition: form-data; name="error"; {disposition}\r\n'
            "Content-Type: application/json\r\n"
        )
    return f"--{boundary}\r\n{headers}\r\n".encode() + data + b"\r\n"


def _error_json(status: int, message: str, code: str) -> bytes:
    body = {"message": message, "statusCode": status, "code": code, "source": "DAYTONA_DAEMON"}
    return json.dumps(body).encode()


def _boundary(boundary: str) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _file_info(path: Path) -> dict[str, Any]:
    info = path.stat()
    modified = datetime.fromtimestamp(info.st_mtime, UTC)
    return {
        "name": path.name,
        "path": str(path),
        "isDir": stat.S_ISDIR(info.st_mode),
        "size": info.st_size,
        "mode": stat.filemode(info.st_mode),
        "permissions": oct(stat.S_IMODE(info.st_mode))[2:].rjust(4, "0"),
        "modTime": str(modified),
        "modifiedAt": modified.isoformat(),
        "owner": str(info.st_uid),
        "group": str(info.st_gid),
    }


def _info_or_404(path: Path) -> dict[str, Any]:
    try:
        return _file_info(path)
    except FileNotFoundError:
        raise daemon_error(404, f"file not found: {path}", _NOT_FOUND) from None


def _list(path: Path, depth: int) -> list[dict[str, Any]]:
    if not path.exists():
        raise daemon_error(404, f"directory not found: {path}", _NOT_FOUND)
    if not path.is_dir():
        raise daemon_error(400, f"not a directory: {path}", "INVALID_FILE_PATH")
    entries: list[dict[str, Any]] = []
    for child in sorted(path.iterdir()):
        try:
            entries.append(_file_info(child))
        except FileNotFoundError:
            continue
        if depth > 1 and child.is_dir() and not child.is_symlink():
            entries.extend(_list(child, depth - 1))
    return entries


def _delete(path: Path, recursive: bool) -> None:
    if not path.exists():
        raise daemon_error(404, f"file not found: {path}", _NOT_FOUND)
    if path.is_dir():
        if not recursive:
            raise daemon_error(400, "cannot delete a directory without recursive=true")
        shutil.rmtree(path)
    else:
        path.unlink()


def _search(root: Path, pattern: re.Pattern[str]) -> list[str]:
    """Files (never directories) under ``root`` whose path relative to it matches."""
    matches: list[str] = []
    for directory, _, files in os.walk(root):
        for name in files:
            full = os.path.join(directory, name)
            if pattern.fullmatch(os.path.relpath(full, root).replace(os.sep, "/")):
                matches.append(full)
    return matches


def _find(root: Path, needle: str) -> list[dict[str, Any]]:
    """Lines containing ``needle`` (a plain substring) in text files, like the daemon."""
    found: list[dict[str, Any]] = []
    targets = [root] if root.is_file() else [Path(d) / f for d, _, fs in os.walk(root) for f in fs]
    for target in targets:
        try:
            data = target.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:512]:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if needle in line:
                found.append({"file": str(target), "line": number, "content": line})
    return found


def doublestar_regex(pattern: str) -> re.Pattern[str]:
    """Translate a doublestar glob (``**``, ``*``, ``?``, ``[...]``, ``{a,b}``) to a regex.

    ``**`` as a whole path segment matches zero or more directories; ``*`` and ``?`` never
    cross ``/``; dotfiles match like any other name (the daemon's ``doublestar.Match``).
    """
    segments = pattern.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:.*/)?")
        else:
            out.append(_segment_regex(segment) + ("" if last else "/"))
    return re.compile("".join(out), re.DOTALL)


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        index += 1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and index < len(segment):
            out.append(re.escape(segment[index]))
            index += 1
        elif char == "[" and "]" in segment[index:]:
            end = segment.index("]", index)
            body = segment[index:end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            out.append(f"[{'^' if negate else ''}{body.replace(chr(92), chr(92) * 2)}]")
            index = end + 1
        elif char == "{" and "}" in segment[index:]:
            end = segment.index("}", index)
            options = segment[index:end].split(",")
            out.append("(?:" + "|".join(_segment_regex(option) for option in options) + ")")
            index = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out)
