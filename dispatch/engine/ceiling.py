"""The profile ceiling: the most permissive permission profile a worker agrees to run.

A job's profile is allowed when on every axis (shell, write, read, network, shell timeout, env
names, tool set) it asks for no more than the ceiling (``PermissionProfile.exceeds``), so custom
YAML profiles are judged by what they allow, not by their name.
"""

from __future__ import annotations

from dispatch.errors import JobRefused
from rho_agent.permissions.profile import PermissionProfile


def check_ceiling(profile: PermissionProfile, ceiling: PermissionProfile | None) -> None:
    """Raise JobRefused if ``profile`` exceeds ``ceiling`` (no ceiling: everything is allowed)."""
    if ceiling is None:
        return
    problems = profile.exceeds(ceiling)
    if problems:
        raise JobRefused(
            f"job asks for profile {profile.name!r}, more than this worker's ceiling "
            f"{ceiling.name!r} allows ({'; '.join(problems)}). Send it to workers started with a "
            "higher RHO_AGENT_MAX_PROFILE, or give the job a less permissive profile"
        )
