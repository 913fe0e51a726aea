"""dispatch: send agent jobs to the rho-agent fleet, or run them in-process (embedded mode).

    from dispatch import Dispatcher
    from rho_agent import AgentConfig

    with Dispatcher() as dispatcher:               # RHO_AGENT_BROKER_URL set: the fleet
        jobs = dispatcher.map(["Summarise a.log", "Summarise b.log"], AgentConfig())
        for result in dispatcher.gather(jobs):
            print(result.status, result.text)

The public API is the names below (pinned by ``tests/dispatch/test_public_api.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatch.dispatcher import Dispatcher
    from dispatch.errors import (
        ApprovalRefused,
        FleetError,
        FleetUnavailable,
        JobNotFound,
        JobRefused,
        JobSpecError,
        JobTimeout,
        ReduceError,
        SettingsError,
    )
    from dispatch.info import JobInfo, PendingCall
    from dispatch.job import EventStream, Job
    from dispatch.reduce import Reduction
    from dispatch.settings import FleetSettings
    from dispatch.spec import JobSpec

_HOMES = {
    "ApprovalRefused": "dispatch.errors",
    "Dispatcher": "dispatch.dispatcher",
    "EventStream": "dispatch.job",
    "FleetError": "dispatch.errors",
    "FleetSettings": "dispatch.settings",
    "FleetUnavailable": "dispatch.errors",
    "Job": "dispatch.job",
    "JobInfo": "dispatch.info",
    "JobNotFound": "dispatch.errors",
    "JobRefused": "dispatch.errors",
    "JobSpec": "dispatch.spec",
    "JobSpecError": "dispatch.errors",
    "JobTimeout": "dispatch.errors",
    "PendingCall": "dispatch.info",
    "ReduceError": "dispatch.errors",
    "Reduction": "dispatch.reduce",
    "SettingsError": "dispatch.errors",
}
"""Where each public name lives: imported on first use, so a module of this package that needs
no SDK (``dispatch.settings_table``, read by the workers' health probe) loads without it."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dispatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "ApprovalRefused",
    "Dispatcher",
    "EventStream",
    "FleetError",
    "FleetSettings",
    "FleetUnavailable",
    "Job",
    "JobInfo",
    "JobNotFound",
    "JobRefused",
    "JobSpec",
    "JobSpecError",
    "JobTimeout",
    "PendingCall",
    "ReduceError",
    "Reduction",
    "SettingsError",
]
