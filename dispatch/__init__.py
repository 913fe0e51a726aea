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
