"""Permission profiles: which tools exist and what they may do.

Enforced inside the tool handlers (paths, shell policy), not only in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ShellPolicy = Literal["none", "readonly", "allowed"]
WritePolicy = Literal["none", "working_dir", "anywhere"]
ReadPolicy = Literal["working_dir", "anywhere"]


@dataclass(frozen=True)
class PermissionProfile:
    """What an agent's tools may do.

    ``shell``: ``none`` (no bash tool), ``readonly`` (only commands that cannot change anything,
    checked on every part of pipelines, substitutions and redirections), ``allowed``.
    ``write``: where write/edit may touch files. ``read``: where read/glob/grep/list may look.
    ``approval``: tool names that need a human decision when ``auto_approve`` is off.
    """

    name: str
    shell: ShellPolicy = "readonly"
    write: WritePolicy = "none"
    read: ReadPolicy = "anywhere"
    approval: frozenset[str] = field(default_factory=frozenset)
    shell_timeout: float = 120.0
    tools: frozenset[str] | None = None
    """If set, only these built-in tools exist; ``None`` means every tool the policies allow."""
