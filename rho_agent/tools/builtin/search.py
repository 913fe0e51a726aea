"""The ``glob``, ``grep`` and ``list`` tools: finding files and text without a shell."""

from __future__ import annotations

import posixpath
import re

from pydantic import Field

from rho_agent.errors import ToolError
from rho_agent.tools._schema import parse_arguments
from rho_agent.tools._truncate import truncate_middle
from rho_agent.tools.base import ToolInvocation, ToolOutput
from rho_agent.tools.builtin._common import Arguments, BuiltinTool, fs_error
from rho_agent.tools.paths import display_path, path_for_read

GLOB_LIMIT = 200
GREP_LIMIT = 100
LIST_LIMIT = 1000
GREP_LINE_CHARS = 400
_MAGIC = re.compile(r"[*?\[{]")
_DIR_HELP = (
    "Directory to search (absolute, or relative to the working directory; default: the "
    "working directory)."
)


class GlobArguments(Arguments):
    pattern: str = Field(
        description="Glob pattern for file paths, e.g. `**/*.py`, `src/**/test_*.py` or "
        "`*.{yaml,yml}`."
    )
    path: str | None = Field(default=None, description=_DIR_HELP)


class GrepArguments(Arguments):
    pattern: str = Field(
        description="Regular expression (Python `re` syntax) to search for in each line; "
        "start it with `(?i)` to ignore case."
    )
    path: str | None = Field(
        default=None,
        description="File or directory to search (directories are searched recursively; "
        "default: the working directory).",
    )
    include: str | None = Field(
        default=None,
        description="Only search files whose name matches this glob, e.g. `*.py` or `*.{ts,tsx}`.",
    )


class ListArguments(Arguments):
    path: str | None = Field(
        default=None,
        description="Directory to list (absolute, or relative to the working directory; "
        "default: the working directory).",
    )


class GlobTool(BuiltinTool):
    name = "glob"
    description = (
        "Find files by path pattern. `*` and `?` match within one path segment, `**` matches "
        "any number of directories, `{a,b}` either alternative; `*.py` only matches files "
        "directly in the directory, `**/*.py` matches them at any depth. Returns matching file "
        f"paths, sorted, at most {GLOB_LIMIT}; .git directories are skipped."
    )
    arguments = GlobArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(GlobArguments, invocation.arguments, self.name)
        prefix, pattern = split_literal_prefix(args.pattern)
        given = posixpath.join(args.path or ".", prefix)
        base = await path_for_read(invocation, given)
        try:
            found = await invocation.backend.glob(pattern, base, limit=GLOB_LIMIT + 1)
        except OSError as exc:
            raise fs_error(exc, given) from None
        working_dir = invocation.backend.working_dir
        if not found:
            return ToolOutput(f"No files match {args.pattern!r} in {_place(base, working_dir)}.")
        lines = [display_path(path, working_dir) for path in found[:GLOB_LIMIT]]
        if len(found) > GLOB_LIMIT:
            lines.append(f"[more than {GLOB_LIMIT} files match; narrow the pattern or path]")
        return ToolOutput("\n".join(lines), metadata={"count": min(len(found), GLOB_LIMIT)})


def split_literal_prefix(pattern: str) -> tuple[str, str]:
    """``../src/**/*.py`` -> (``../src``, ``**/*.py``): leading plain directories become the base,
    so patterns may start with ``/``, ``./`` or ``../``."""
    segments = pattern.split("/")
    prefix: list[str] = []
    while len(segments) > 1 and not _MAGIC.search(segments[0]):
        prefix.append(segments.pop(0))
    joined = "/".join(prefix)
    if pattern.startswith("/") and not joined:
        joined = "/"
    return joined, "/".join(segment for segment in segments if segment)


class GrepTool(BuiltinTool):
    name = "grep"
    description = (
        "Search file contents for a regular expression (Python `re` syntax, matched against "
        "each line). Searches a file, or a directory recursively (default: the working "
        "directory); `include` limits the search to file names matching a glob. Returns "
        f"`path:line_number: line` for each match, at most {GREP_LIMIT}; binary files and .git "
        "directories are skipped."
    )
    arguments = GrepArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(GrepArguments, invocation.arguments, self.name)
        try:
            re.compile(args.pattern)
        except re.error as exc:
            raise ToolError(f"invalid regular expression {args.pattern!r}: {exc}") from None
        given = args.path or "."
        base = await path_for_read(invocation, given)
        backend = invocation.backend
        try:
            matches = await backend.grep(
                args.pattern, base, include=args.include, limit=GREP_LIMIT + 1
            )
        except OSError as exc:
            raise fs_error(exc, given) from None
        if not matches:
            place = _place(base, backend.working_dir)
            return ToolOutput(f"No lines match {args.pattern!r} in {place}.")
        lines = [
            f"{display_path(match.path, backend.working_dir)}:{match.line_number}: "
            f"{_shorten(match.line)}"
            for match in matches[:GREP_LIMIT]
        ]
        if len(matches) > GREP_LIMIT:
            lines.append(f"[more than {GREP_LIMIT} matches; narrow the pattern, path or include]")
        count = min(len(matches), GREP_LIMIT)
        return ToolOutput(truncate_middle("\n".join(lines)), metadata={"count": count})


def _place(path: str, working_dir: str) -> str:
    return "the working directory" if path == working_dir else display_path(path, working_dir)


def _shorten(line: str) -> str:
    line = line.strip()
    if len(line) <= GREP_LINE_CHARS:
        return line
    return line[:GREP_LINE_CHARS] + " [...]"


class ListTool(BuiltinTool):
    name = "list"
    description = (
        "List a directory: one entry per line, sorted by name; directories end with `/`, files "
        f"show their size. At most {LIST_LIMIT} entries."
    )
    arguments = ListArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(ListArguments, invocation.arguments, self.name)
        given = args.path or "."
        path = await path_for_read(invocation, given)
        try:
            entries = await invocation.backend.list_dir(path)
        except OSError as exc:
            raise fs_error(exc, given) from None
        if not entries:
            return ToolOutput(f"{given} is empty.", metadata={"count": 0})
        lines = [
            f"{entry.name}/" if entry.is_dir else f"{entry.name}  ({entry.size:,} bytes)"
            for entry in entries[:LIST_LIMIT]
        ]
        if len(entries) > LIST_LIMIT:
            lines.append(f"[{len(entries) - LIST_LIMIT} more entries not shown]")
        return ToolOutput("\n".join(lines), metadata={"count": len(entries)})
