"""The ``read``, ``write`` and ``edit`` tools."""

from __future__ import annotations

from pydantic import Field

from rho_agent.errors import ToolError
from rho_agent.tools._schema import parse_arguments
from rho_agent.tools._truncate import MAX_OUTPUT_CHARS
from rho_agent.tools.base import ToolInvocation, ToolOutput
from rho_agent.tools.builtin._common import Arguments, BuiltinTool, fs_error
from rho_agent.tools.paths import (
    display_path,
    path_for_read,
    path_for_write,
    read_checked,
    write_checked,
)

MAX_LINE_CHARS = 2000
DEFAULT_READ_LINES = 2000
_BINARY_PROBE = 8192
_PATH_HELP = "absolute, or relative to the working directory"


class ReadArguments(Arguments):
    path: str = Field(description=f"The file to read ({_PATH_HELP}).")
    offset: int = Field(
        default=1, ge=1, description="Number of the first line to return (1-based)."
    )
    limit: int = Field(default=DEFAULT_READ_LINES, ge=1, description="The most lines to return.")


class WriteArguments(Arguments):
    path: str = Field(description=f"The file to create or overwrite ({_PATH_HELP}).")
    content: str = Field(description="The complete new content of the file.")


class EditArguments(Arguments):
    path: str = Field(description=f"The file to change ({_PATH_HELP}).")
    old_string: str = Field(
        description="The exact text to replace, including whitespace and indentation."
    )
    new_string: str = Field(description="The text to put in its place.")
    replace_all: bool = Field(
        default=False, description="Replace every occurrence instead of exactly one."
    )


class ReadTool(BuiltinTool):
    name = "read"
    description = (
        "Read a text file. Returns its lines numbered like `cat -n` (line number, tab, text), "
        f"up to {DEFAULT_READ_LINES} lines from `offset`; use `offset` and `limit` to page "
        f"through longer files. Lines longer than {MAX_LINE_CHARS} characters are cut. "
        "Binary files are refused; use the list tool for directories."
    )
    arguments = ReadArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(ReadArguments, invocation.arguments, self.name)
        path = await path_for_read(invocation, args.path)
        try:
            data = await read_checked(invocation, path)
        except OSError as exc:
            raise fs_error(exc, args.path) from None
        if b"\0" in data[:_BINARY_PROBE]:
            raise ToolError(f"{args.path} is a binary file ({len(data):,} bytes); it has no text")
        lines = split_lines(data.decode("utf-8", errors="replace"))
        if not lines:
            return ToolOutput(f"{args.path} is empty.", metadata={"total_lines": 0})
        if args.offset > len(lines):
            raise ToolError(
                f"offset {args.offset} is past the end of {args.path}, which has {len(lines)} lines"
            )
        return _numbered(lines, args.offset, args.limit)


def split_lines(text: str) -> list[str]:
    """The file's lines as grep and editors number them (``\\n`` ends a line; ``\\r`` dropped)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _cap(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return line[:MAX_LINE_CHARS] + f" [... line cut at {MAX_LINE_CHARS} characters]"


def _numbered(lines: list[str], offset: int, limit: int) -> ToolOutput:
    shown: list[str] = []
    size = 0
    last = offset - 1
    for number in range(offset, min(offset + limit, len(lines) + 1)):
        entry = f"{number:>6}\t{_cap(lines[number - 1])}"
        if shown and size + len(entry) > MAX_OUTPUT_CHARS:
            break
        shown.append(entry)
        size += len(entry) + 1
        last = number
    text = "\n".join(shown)
    if last < len(lines):
        text += (
            f"\n[showing lines {offset}-{last} of {len(lines)}; "
            f"call read with offset={last + 1} for more]"
        )
    return ToolOutput(text, metadata={"total_lines": len(lines), "last_line": last})


class WriteTool(BuiltinTool):
    name = "write"
    description = (
        "Create a file, or replace all of an existing file's content, with `content`. Missing "
        "parent directories are created. To change part of an existing file use the edit tool."
    )
    arguments = WriteArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(WriteArguments, invocation.arguments, self.name)
        path = await path_for_write(invocation, args.path)
        data = args.content.encode("utf-8")
        try:
            await write_checked(invocation, path, data)
        except OSError as exc:
            raise fs_error(exc, args.path) from None
        shown = display_path(path, invocation.backend.working_dir)
        lines = len(split_lines(args.content))
        return ToolOutput(
            f"Wrote {lines} lines ({len(data):,} bytes) to {shown}.",
            metadata={"path": path, "bytes": len(data)},
        )


class EditTool(BuiltinTool):
    name = "edit"
    description = (
        "Replace exact text in a file. `old_string` must match the file exactly (whitespace and "
        "indentation included) and occur exactly once, unless `replace_all` is true: include "
        "enough surrounding lines to make it unique. Read the file first so you copy the text "
        "exactly. To create a file or replace all of it use the write tool."
    )
    arguments = EditArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(EditArguments, invocation.arguments, self.name)
        if not args.old_string:
            raise ToolError("old_string is empty; to write a whole file use the write tool")
        if args.old_string == args.new_string:
            raise ToolError("old_string and new_string are the same; there is nothing to change")
        path = await path_for_write(invocation, args.path)
        backend = invocation.backend
        try:
            text = (await read_checked(invocation, path)).decode("utf-8")
        except FileNotFoundError:
            raise ToolError(f"{args.path} does not exist; create it with the write tool") from None
        except OSError as exc:
            raise fs_error(exc, args.path) from None
        except UnicodeDecodeError:
            raise ToolError(f"{args.path} is not UTF-8 text; edit cannot change it") from None
        old, new = _matching_line_endings(text, args.old_string, args.new_string)
        count = _check_occurrences(text, old, args.path, args.replace_all)
        first_line = text[: text.index(old)].count("\n") + 1
        updated = text.replace(old, new) if args.replace_all else text.replace(old, new, 1)
        try:
            await write_checked(invocation, path, updated.encode("utf-8"))
        except OSError as exc:
            raise fs_error(exc, args.path) from None
        shown = display_path(path, backend.working_dir)
        return ToolOutput(
            f"Replaced {count} occurrence{'s' if count > 1 else ''} in {shown}. "
            f"Lines around the first change:\n{_snippet(updated, first_line, new)}",
            metadata={"path": path, "replacements": count},
        )


def _matching_line_endings(text: str, old: str, new: str) -> tuple[str, str]:
    """Models write ``\\n``; a CRLF file needs ``\\r\\n`` for the match and the replacement."""
    if old not in text and "\r\n" in text and "\n" in old and "\r\n" not in old:
        return old.replace("\n", "\r\n"), new.replace("\n", "\r\n")
    return old, new


def _check_occurrences(text: str, old: str, shown: str, replace_all: bool) -> int:
    count = text.count(old)
    if count == 0:
        raise ToolError(
            f"old_string was not found in {shown}; it must match the file exactly, including "
            "whitespace and indentation (read the file and copy the text)"
        )
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {shown}; include more surrounding lines to "
            "make it unique, or set replace_all to true to change every occurrence"
        )
    return count


def _snippet(text: str, first_line: int, new: str, context: int = 3) -> str:
    lines = split_lines(text)
    start = max(first_line - context, 1)
    end = min(first_line + new.count("\n") + context, len(lines), start + 40)
    return "\n".join(f"{number:>6}\t{_cap(lines[number - 1])}" for number in range(start, end + 1))
