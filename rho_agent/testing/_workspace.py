"""The ``workspace`` behaviour: a scripted model that looks at the working directory like an agent.

Offline mode uses it, so the README's first command shows what an agent does: it calls the
``read`` tool on a file the prompt names, or ``list`` on the working directory (and then ``read``
on its README when asked for a summary or the most important file), and answers from what the
tools returned, differently for each kind of question. Like every behaviour it is a pure function
of the request body, so the same prompt over the same directory always gets the same answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rho_agent.testing._responses import ScriptedResponse, text, tool_call

_FILE_NAMED = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]+\.[A-Za-z][A-Za-z0-9]{0,7})\b")
_NUMBERED = re.compile(r"^\s*(\d+)\t(.*)$")
_SHOWING = re.compile(r"\[showing lines \d+-\d+ of (\d+);")
_SIZE = re.compile(r"^(.*?)\s+\(([\d,]+) bytes\)$")
_CONFIG_SUFFIXES = (".toml", ".yaml", ".yml", ".json", ".ini", ".cfg", ".conf", ".env")
_CONFIG_NAMES = ("Makefile", "Dockerfile", ".gitignore", ".editorconfig", "setup.py")


@dataclass
class _Step:
    """One tool call of the current run and what it returned."""

    name: str
    arguments: dict[str, Any]
    result: str


@dataclass
class _Listing:
    """A ``list`` result: directories (with their ``/``) and files with their sizes."""

    dirs: list[str]
    files: dict[str, int]

    @classmethod
    def parse(cls, result: str) -> _Listing:
        dirs, files = [], {}
        for line in result.splitlines():
            sized = _SIZE.match(line)
            if sized:
                files[sized.group(1)] = int(sized.group(2).replace(",", ""))
            elif line.endswith("/"):
                dirs.append(line)
        return cls(dirs, files)

    @property
    def readme(self) -> str | None:
        return next(
            (name for name in sorted(self.files) if name.lower().startswith("readme")), None
        )

    @property
    def largest(self) -> str | None:
        return max(sorted(self.files), key=lambda name: self.files[name], default=None)


def workspace(body: dict[str, Any]) -> ScriptedResponse:
    """The next turn: a tool call while something is left to look at, then the answer."""
    prompt, steps = _current_run(body)
    if not steps:
        named = _FILE_NAMED.search(prompt)
        return (
            tool_call("read", {"path": named.group(1)})
            if named
            else tool_call("list", {"path": "."})
        )
    last = steps[-1]
    if last.name == "list":
        listing = _Listing.parse(last.result)
        if listing.readme and _wants_readme(prompt):
            return tool_call("read", {"path": listing.readme})
        return text(_about_listing(prompt, listing))
    if last.name == "read":
        listed = next((_Listing.parse(s.result) for s in steps if s.name == "list"), None)
        return text(_about_file(prompt, str(last.arguments.get("path")), last.result, listed))
    return text(f"Done: {_first_line(last.result)}")


def _wants_readme(prompt: str) -> bool:
    words = prompt.lower()
    return any(word in words for word in ("summar", "important", "what is in"))


def _about_listing(prompt: str, listing: _Listing) -> str:
    words = prompt.lower()
    dirs, files = listing.dirs, sorted(listing.files)
    counts = f"{len(dirs) + len(files)} entries ({len(dirs)} directories, {len(files)} files)"
    if "config" in words:
        found = [n for n in files if n.endswith(_CONFIG_SUFFIXES) or n in _CONFIG_NAMES]
        return (
            f"Configuration files here: {', '.join(found)}."
            if found
            else f"I found no configuration files among the {counts}."
        )
    if "how many" in words or "count" in words:
        return f"The working directory has {counts}."
    if "unusual" in words:
        hidden = [name for name in [*dirs, *files] if name.startswith(".")]
        empty = [name for name in files if listing.files[name] == 0]
        return (
            f"Nothing alarming in {counts}. Hidden: {', '.join(hidden) or 'none'}; "
            f"empty files: {', '.join(empty) or 'none'}; largest file: {listing.largest or '-'}."
        )
    if "overview" in words or "layout" in words:
        shown = [name for name in dirs if not name.startswith(".")]
        return f"{counts}; the project lives in {', '.join(shown[:8]) or 'no subdirectories'}."
    return f"The working directory holds {counts}: {', '.join([*dirs, *files][:8])}."


def _about_file(prompt: str, path: str, result: str, listing: _Listing | None) -> str:
    lines = [match for line in result.splitlines() if (match := _NUMBERED.match(line))]
    if not lines:
        return f"I could not read {path}: {_first_line(result)}"
    showing = _SHOWING.search(result)
    total = int(showing.group(1)) if showing else int(lines[-1].group(1))
    heading = next((m.group(2) for m in lines if m.group(2).startswith("#")), None)
    first = heading or next((m.group(2) for m in lines if m.group(2).strip()), "")
    summary = f'{path} has {total} lines and starts with "{first.strip()}"'
    if listing is not None and "important" in prompt.lower():
        return f"{path} looks most important: {summary}."
    if listing is not None:
        size = len(listing.dirs) + len(listing.files)
        return f"The working directory holds {size} entries; {summary}."
    return f"Summary: {summary}."


def _current_run(body: dict[str, Any]) -> tuple[str, list[_Step]]:
    """The last user prompt, and the tool calls made since with their results."""
    messages = body.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    start = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    prompt = _text(messages[start]) if start >= 0 else ""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    steps = []
    for message in messages[start + 1 :]:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            calls[str(call.get("id"))] = (str(function.get("name")), _arguments(function))
        if message.get("role") == "tool":
            name, arguments = calls.get(str(message.get("tool_call_id")), ("", {}))
            steps.append(_Step(name, arguments, _text(message)))
    return prompt, steps


def _arguments(function: dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = json.loads(function.get("arguments") or "{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _first_line(result: str) -> str:
    lines = result.strip().splitlines()
    return lines[0] if lines else "(no output)"
