"""System prompt templates: ``{{ name }}`` placeholders filled from ``AgentConfig.vars``."""

from __future__ import annotations

import re
from pathlib import Path

from rho_agent.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = """\
You are rho-agent, a careful, capable assistant that completes tasks by using tools.
Work in the directory {{ working_dir }}. Inspect before you change anything, prefer small
verifiable steps, and report what you did and what you found in a short final answer."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEMPLATE_SUFFIXES = (".md", ".txt", ".j2", ".jinja", ".prompt", ".tmpl")


UNICODE_PROMPT_HELP = (
    "the prompt is not valid Unicode text: it holds a lone surrogate (such as \\udce9, what bytes "
    "that are not UTF-8 become when read as text); give it as UTF-8"
)


def is_unicode_text(text: str) -> bool:
    """Whether ``text`` can be sent and stored as UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def looks_like_path(text: str) -> bool:
    """A prompt that is one line ending in a template suffix names a file."""
    return "\n" not in text and text.strip().lower().endswith(_TEMPLATE_SUFFIXES)


def load_template(system_prompt: str, base_dir: Path | None = None) -> str:
    """The template text: ``system_prompt`` itself, or the file it names."""
    if not looks_like_path(system_prompt):
        candidate = Path(system_prompt).expanduser()
        if "\n" in system_prompt or len(system_prompt) > 255 or not _is_file(candidate):
            return system_prompt
    path = Path(system_prompt).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).is_file():
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(
            f"system_prompt names the template file {system_prompt!r}, which does not exist; "
            "fix the path or pass the prompt text itself"
        )
    return path.read_text(encoding="utf-8")


def render(template: str, variables: dict[str, str]) -> str:
    """Fill every ``{{ name }}``; a placeholder without a value is an error that names it."""
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in variables})
    if missing:
        raise ConfigError(
            f"system prompt uses variable(s) {', '.join(missing)} with no value; "
            f"add them to AgentConfig.vars (given: {sorted(variables) or 'none'})"
        )
    return _PLACEHOLDER.sub(lambda match: str(variables[match.group(1)]), template)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False
