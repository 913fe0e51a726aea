"""glob and grep in pure Python, so they work on a machine without ripgrep or GNU grep.

Patterns are data: they are compiled here and never reach a command line. Both walks skip
version-control directories, do not enter symlinked directories, visit entries in sorted order
(results are deterministic), stop at ``limit`` results and check ``stop`` so a cancelled search
ends soon. grep also skips symlinked files, FIFOs and devices when it searches a directory.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator

from rho_agent.backends.base import GrepMatch

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
_BINARY_PROBE = 8192


def expand_braces(pattern: str) -> list[str]:
    """``a.{py,md}`` -> ``["a.py", "a.md"]`` (nested and repeated groups too)."""
    depth = 0
    start = -1
    for index, char in enumerate(pattern):
        if char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                options = _split_top_level(pattern[start + 1 : index])
                if len(options) < 2:
                    continue
                head, tail = pattern[:start], pattern[index + 1 :]
                return [
                    expanded
                    for option in options
                    for expanded in expand_braces(head + option + tail)
                ]
    return [pattern]


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        current += char
    parts.append(current)
    return parts


def _segment_regex(segment: str) -> str:
    out, index = [], 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (close := segment.find("]", index + 2)) != -1:
            body = segment[index + 1 : close].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            index = close
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching relative POSIX paths the glob ``pattern`` matches."""
    alternatives = []
    for expanded in expand_braces(pattern):
        parts = expanded.split("/")
        regex = ""
        for position, part in enumerate(parts):
            last = position == len(parts) - 1
            if part == "**":
                regex += ".*" if last else "(?:[^/]+/)*"
            else:
                regex += _segment_regex(part) + ("" if last else "/")
        alternatives.append(f"(?:{regex})")
    return re.compile("|".join(alternatives), re.DOTALL)


def _max_depth(pattern: str) -> int | None:
    expanded = expand_braces(pattern)
    if any("**" in item for item in expanded):
        return None
    return max(item.count("/") for item in expanded)


def iter_files(
    root: str, max_depth: int | None, stop: threading.Event
) -> Iterator[tuple[str, str]]:
    """(relative POSIX path, absolute path) of the files under ``root``, in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        if stop.is_set():
            return
        relative_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        depth = 0 if relative_dir == "." else relative_dir.count("/") + 1
        descend = max_depth is None or depth < max_depth
        kept = sorted(name for name in dirnames if name not in SKIPPED_DIRS)
        dirnames[:] = kept if descend else []
        for name in sorted(filenames):
            relative = name if relative_dir == "." else f"{relative_dir}/{name}"
            yield relative, os.path.join(dirpath, name)


def _require_dir(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)


def glob_files(pattern: str, root: str, limit: int, stop: threading.Event) -> list[str]:
    """Absolute paths of files under ``root`` whose relative path matches ``pattern``."""
    _require_dir(root)
    regex = glob_regex(pattern)
    found: list[str] = []
    for relative, absolute in iter_files(root, _max_depth(pattern), stop):
        if len(found) >= limit:
            break
        if regex.fullmatch(relative):
            found.append(absolute)
    return sorted(found)


def grep_files(
    pattern: str, path: str, include: str | None, limit: int, stop: threading.Event
) -> list[GrepMatch]:
    """Lines matching the regex ``pattern`` in the text files at or under ``path``."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    if os.path.isfile(path):
        files: Iterable[tuple[str, str]] = [(os.path.basename(path), path)]
    else:
        _require_dir(path)
        # Like ripgrep, a directory search does not follow symlinks (they may lead outside it)
        # and opens only regular files: a FIFO would block the open, a device may act on it.
        files = (item for item in iter_files(path, None, stop) if _regular(item[1]))
    wanted = glob_regex(include) if include else None
    matches: list[GrepMatch] = []
    for relative, absolute in files:
        if len(matches) >= limit or stop.is_set():
            break
        if wanted is not None and not wanted.fullmatch(relative.rsplit("/", 1)[-1]):
            continue
        matches.extend(_grep_file(absolute, regex, limit - len(matches), stop))
    return matches


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _grep_file(
    path: str, regex: re.Pattern[str], limit: int, stop: threading.Event
) -> list[GrepMatch]:
    matches: list[GrepMatch] = []
    try:
        # Non-blocking, and checked again once open: the file may have become a FIFO since.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return matches
        with open(fd, "rb") as handle:
            if b"\0" in handle.read(_BINARY_PROBE):
                return matches
            handle.seek(0)
            for number, raw in enumerate(handle, start=1):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if regex.search(line):
                    matches.append(GrepMatch(path, number, line))
                    if len(matches) >= limit:
                        break
                if stop.is_set():
                    break
    except OSError:
        return matches
    return matches
