"""OS confinement of tool processes: the boundary a permission profile's bash cannot talk past.

``SandboxPolicy.for_profile`` says what a profile allows; ``Sandbox`` says whether a command
under it is confined (Landlock, seccomp and dropped capabilities on Linux; fail closed
elsewhere); a ``SessionLauncher`` per policy and working directory, shared through a
``LauncherPool``, starts the confined commands;
``tool_environment`` gives them an allowlisted environment without the worker's secrets.
The local backend uses all three; docs/security.md says what each profile enforces, and where.
"""

from rho_agent.sandbox.environment import (
    bash_scrub,
    check_extra_names,
    env_command_prefix,
    looks_secret,
    tool_environment,
)
from rho_agent.sandbox.launcher import (
    ALLOW_UNCONFINED_ENV,
    Sandbox,
    Support,
    probe,
)
from rho_agent.sandbox.launcher_pool import LauncherPool
from rho_agent.sandbox.policy import UNCONFINED, SandboxPolicy
from rho_agent.sandbox.session_launcher import ConfinedProcess, SessionLauncher

__all__ = [
    "ALLOW_UNCONFINED_ENV",
    "UNCONFINED",
    "ConfinedProcess",
    "LauncherPool",
    "Sandbox",
    "SandboxPolicy",
    "SessionLauncher",
    "Support",
    "bash_scrub",
    "check_extra_names",
    "env_command_prefix",
    "looks_secret",
    "probe",
    "tool_environment",
]
