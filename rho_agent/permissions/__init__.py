"""Permission profiles: what a session's tools may do.

- ``profile``: ``PermissionProfile`` and the built-in and YAML profiles;
- ``shell/``: the bash checker, the friendly first refusal of a command a profile forbids.
"""

from __future__ import annotations

from rho_agent.permissions.profile import (
    BUILTIN_TOOL_NAMES,
    DEFAULT_PROFILE,
    PermissionProfile,
    load_profile,
    load_profile_file,
    profile_from_dict,
    profile_to_dict,
)

__all__ = [
    "BUILTIN_TOOL_NAMES",
    "DEFAULT_PROFILE",
    "PermissionProfile",
    "load_profile",
    "load_profile_file",
    "profile_from_dict",
    "profile_to_dict",
]
