"""File operations in a sandbox, with the OSError semantics of the local filesystem.

Reads, writes, listings and globs use the SDK's file API; when one fails, the path is inspected
to raise what the local backend would (``FileNotFoundError``, ``IsADirectoryError``,
``NotADirectoryError``), and a sandbox that is gone becomes a BackendError. Glob and grep match
exactly like the local backend: glob results of the daemon's search are filtered with the local
glob regex, and grep runs a small Python program in the sandbox (``re`` semantics, the local
include-glob regex, version-control directories and symlinks skipped), or GNU ``grep -rE``
where the image has no python3. Patterns and paths only ever travel as quoted arguments, never
as flags.
"""

from __future__ import annotations

import errno
import json
import posixpath
import re
import shlex
from typing import TYPE_CHECKING, Any, NoReturn

from rho_agent.backends._local_search import SKIPPED_DIRS, glob_regex
from rho_agent.backends.base import FileEntry, GrepMatch
from rho_agent.backends.daytona.commands import run_in_sandbox
from rho_agent.backends.daytona.sdk import describe, sdk
from rho_agent.errors import BackendError

if TYPE_CHECKING:
    from daytona import AsyncSandbox

_GREP_TIMEOUT = 120.0
_MARKS = {"python": "#rho-grep:python", "grep": "#rho-grep:grep", "missing": "#rho-grep:missing"}

_GREP_PROGRAM = r"""
import json, os, re, sys
pattern, root, limit = re.compile(sys.argv[1]), sys.argv[2], int(sys.argv[4])
include = re.compile(sys.argv[3]) if sys.argv[3] else None
skipped = set(sys.argv[5].split("/"))
def files():
    if os.path.isfile(root):
        yield os.path.basename(root), root
        return
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in skipped)
        for name in sorted(names):
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                yield name, path
print("#rho-grep:python")
found = 0
for name, path in files():
    if found >= limit:
        break
    if include is not None and not include.fullmatch(name):
        continue
    try:
        handle = open(path, "rb")
    except OSError:
        continue
    with handle:
        if b"\0" in handle.read(8192):
            continue
        handle.seek(0)
        for number, raw in enumerate(handle, 1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if pattern.search(line):
                print(json.dumps([path, number, line]))
                found += 1
                if found >= limit:
                    break
"""


async def read_file(sandbox: AsyncSandbox, path: str) -> bytes:
    try:
        data: bytes = await sandbox.fs.download_file(path)
    except sdk().DaytonaError as exc:
        await _explain(sandbox, path, exc, f"reading {path}", want_dir=False)
    return data


async def write_file(sandbox: AsyncSandbox, path: str, data: bytes) -> None:
    try:
        await sandbox.fs.upload_file(data, path)
    except sdk().DaytonaError as exc:
        if "permission denied" in str(exc).lower():
            raise PermissionError(errno.EACCES, "permission denied", path) from None
        await _explain(sandbox, path, exc, f"writing {path}", want_dir=False, exists_ok=True)


async def list_dir(sandbox: AsyncSandbox, path: str) -> list[FileEntry]:
    try:
        infos = await sandbox.fs.list_files(path)
    except sdk().DaytonaError as exc:
        await _explain(sandbox, path, exc, f"listing {path}", want_dir=True)
    entries = [FileEntry(name=i.name, is_dir=bool(i.is_dir), size=int(i.size)) for i in infos]
    return sorted(entries, key=lambda entry: entry.name)


async def glob(sandbox: AsyncSandbox, pattern: str, path: str, *, limit: int) -> list[str]:
    """Files under ``path`` whose relative path matches ``pattern``, as the local backend finds
    them: in sorted walk order, .git/.hg/.svn skipped, the first ``limit``, then sorted."""
    try:
        found: list[str] = (await sandbox.fs.search_files(path, pattern)).files
    except sdk().DaytonaError as exc:
        await _explain(sandbox, path, exc, f"searching {path}", want_dir=True)
    if not found:
        await _require_dir(sandbox, path)
    regex = glob_regex(pattern)
    relative = {file: posixpath.relpath(file, path) for file in found}
    kept = [
        file
        for file, rel in relative.items()
        if regex.fullmatch(rel) and not SKIPPED_DIRS.intersection(rel.split("/")[:-1])
    ]
    kept.sort(key=lambda file: _walk_order(relative[file]))
    return sorted(kept[:limit])


def _walk_order(relative: str) -> list[tuple[int, str]]:
    """Sort key of ``os.walk`` with sorted names: a directory's files before its subdirectories."""
    *directories, name = relative.split("/")
    return [(1, directory) for directory in directories] + [(0, name)]


async def grep(
    sandbox: AsyncSandbox,
    pattern: str,
    path: str,
    *,
    include: str | None,
    limit: int,
    auto_stop_interval: int,
) -> list[GrepMatch]:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    result = await run_in_sandbox(
        sandbox,
        grep_command(pattern, path, include, max(limit, 0)),
        cwd="/",
        time_limit=_GREP_TIMEOUT,
        auto_stop_interval=auto_stop_interval,
    )
    if result.timed_out:
        raise BackendError(f"grep for {pattern!r} in {path} timed out after {_GREP_TIMEOUT:g}s")
    return parse_grep_output(result.output, result.exit_code, path, limit)


def grep_command(pattern: str, path: str, include: str | None, limit: int) -> str:
    """Python's ``re`` in the sandbox if it has python3, else GNU ``grep -E``."""
    quoted_path = shlex.quote(path)
    include_regex = glob_regex(include).pattern if include else ""
    arguments = (pattern, path, include_regex, str(limit), "/".join(sorted(SKIPPED_DIRS)))
    include_flag = f" --include={shlex.quote(include)}" if include else ""
    excludes = "".join(f" --exclude-dir={name}" for name in sorted(SKIPPED_DIRS))
    return (
        f"if [ ! -e {quoted_path} ]; then echo {shlex.quote(_MARKS['missing'])}; "
        "elif command -v python3 >/dev/null 2>&1; then python3 -c "
        f"{shlex.quote(_GREP_PROGRAM)} {' '.join(shlex.quote(arg) for arg in arguments)}; "
        f"else echo {shlex.quote(_MARKS['grep'])}; grep -rnIZE{include_flag}{excludes} "
        f"-e {shlex.quote(pattern)} -- {quoted_path} | head -n {limit}; fi"
    )


def parse_grep_output(output: str, exit_code: int, path: str, limit: int) -> list[GrepMatch]:
    """Read either program's output; anything else is an error worth showing."""
    lines = output.splitlines()
    mark = lines[0] if lines else ""
    if mark == _MARKS["missing"]:
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    if mark not in (_MARKS["python"], _MARKS["grep"]) or exit_code not in (0, 1):
        raise BackendError(f"grep failed in the sandbox (exit {exit_code}): {output[-2000:]}")
    matches: list[GrepMatch] = []
    for line in lines[1:]:
        if mark == _MARKS["python"]:
            file, number, text = json.loads(line)
        else:
            file, _, rest = line.partition("\0")
            number_text, _, text = rest.partition(":")
            if not number_text.isdigit():
                continue
            number = int(number_text)
        matches.append(GrepMatch(path=file, line_number=number, line=text))
    return matches[:limit]


async def _explain(
    sandbox: AsyncSandbox,
    path: str,
    exc: Exception,
    doing: str,
    *,
    want_dir: bool,
    exists_ok: bool = False,
) -> NoReturn:
    """Raise what the local filesystem would have raised for the failed operation on ``path``."""
    info = await _info(sandbox, path)
    if info is None and not exists_ok:
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path) from None
    if info is not None and bool(info.is_dir) != want_dir:
        if want_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None
        raise IsADirectoryError(errno.EISDIR, "is a directory", path) from None
    raise BackendError(describe(exc, doing, sandbox.id)) from exc


async def _require_dir(sandbox: AsyncSandbox, path: str) -> None:
    info = await _info(sandbox, path)
    if info is None:
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    if not info.is_dir:
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)


async def _info(sandbox: AsyncSandbox, path: str) -> Any:
    """The daemon's FileInfo for ``path``, None if nothing is there; BackendError if the
    sandbox itself is gone (the toolbox answers 404 for both)."""
    daytona = sdk()
    try:
        return await sandbox.fs.get_file_info(path)
    except daytona.DaytonaFileNotFoundError:
        return None
    except daytona.DaytonaNotFoundError:
        try:
            await sandbox.refresh_data()
        except daytona.DaytonaError as exc:
            raise BackendError(describe(exc, f"inspecting {path}", sandbox.id)) from exc
        return None
    except daytona.DaytonaError as exc:
        raise BackendError(describe(exc, f"inspecting {path}", sandbox.id)) from exc
