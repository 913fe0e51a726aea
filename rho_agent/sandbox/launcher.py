"""Sandbox: whether a command under a SandboxPolicy runs confined, and whether it can be.

Why confined commands start from a launcher process (``session_launcher``) rather than with
rules applied in a ``preexec_fn``: the worker runs Celery threads and an asyncio loop, and code
run between ``fork`` and ``exec`` of a threaded process may deadlock on a lock another thread
held (ctypes, the allocator, logging). The launcher is a fresh single-threaded process.

Support is probed once, when a ``Sandbox`` is made. Where the kernel cannot confine (no Landlock,
Landlock ABI below 3, an unknown CPU for seccomp, not Linux), a confined policy fails closed with
``ConfinementUnavailable``, unless ``RHO_AGENT_ALLOW_UNCONFINED=1`` was set by the operator; then
each such command runs unconfined and is logged at WARNING level.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from rho_agent.errors import ConfinementUnavailable
from rho_agent.sandbox import _confine
from rho_agent.sandbox.policy import SandboxPolicy

logger = logging.getLogger(__name__)

ALLOW_UNCONFINED_ENV = "RHO_AGENT_ALLOW_UNCONFINED"
"""Set to ``1`` to run confined profiles without OS confinement where it is unavailable."""


@dataclass(frozen=True)
class Support:
    """What this machine offers: ``problem`` says why it cannot confine (None when it can)."""

    landlock_abi: int
    problem: str | None


def probe() -> Support:
    """Look at the kernel and CPU now (a harmless Landlock version query)."""
    if sys.platform != "linux":
        return Support(0, f"OS confinement needs Linux Landlock; this is {sys.platform}")
    abi = _confine.landlock_abi()
    if abi == 0:
        return Support(0, "this kernel has no Landlock (or it is disabled: check lsm= at boot)")
    if abi < _confine.MIN_ABI:
        return Support(abi, f"Landlock ABI {abi} is too old (need {_confine.MIN_ABI}, Linux 6.2)")
    if not _confine.machine_supported():
        return Support(abi, "no seccomp system-call table for this CPU architecture")
    return Support(abi, None)


class Sandbox:
    """Starts commands confined by a ``SandboxPolicy`` (see the module docstring).

    ``support`` replaces the probe (tests use it to show the fail-closed path);
    ``allow_unconfined`` is the operator's opt-out, read from the environment by ``from_env``.
    The backend starts the confined processes (``SessionLauncher``).
    """

    def __init__(self, support: Support, *, allow_unconfined: bool = False) -> None:
        self.support = support
        self.allow_unconfined = allow_unconfined
        if allow_unconfined and support.problem is not None:
            logger.warning(
                "%s=1: confined profiles will run bash WITHOUT OS confinement (%s)",
                ALLOW_UNCONFINED_ENV,
                support.problem,
            )

    @classmethod
    def from_env(cls) -> Sandbox:
        """Probe the machine and read ``RHO_AGENT_ALLOW_UNCONFINED`` from this process."""
        return cls(probe(), allow_unconfined=os.environ.get(ALLOW_UNCONFINED_ENV) == "1")

    def confines(self, policy: SandboxPolicy) -> bool:
        """Whether to run a command under ``policy`` confined; raise when it must be and cannot.

        False for a policy that confines nothing, and, with the operator's opt-out, where the
        machine cannot confine (logged at WARNING on every such command).
        """
        if not policy.confined:
            return False
        if self.support.problem is None:
            return True
        if not self.allow_unconfined:
            raise ConfinementUnavailable(
                f"cannot run this command confined as the permission profile requires: "
                f"{self.support.problem}. Run on a Linux kernel with Landlock (ABI 3 or "
                f"later), or, accepting that bash is then limited only by the command "
                f"checker, set {ALLOW_UNCONFINED_ENV}=1 in the worker's environment"
            )
        logger.warning(
            "running a command WITHOUT OS confinement (%s=1): %s",
            ALLOW_UNCONFINED_ENV,
            self.support.problem,
        )
        return False
