"""The fleet's exceptions, under rho-agent's one tree.

::

    RhoAgentError                     (rho_agent.errors)
    └── FleetError                    something about dispatching or running a fleet job
        ├── SettingsError             a fleet setting or environment variable is invalid
        ├── JobSpecError              a job payload is malformed (names the field and the fix)
        ├── JobRefused                a worker will not run this job (profile above its ceiling)
        ├── JobNotFound               no job with that id (never submitted, or expired)
        │   └── JobLost               its record vanished from Redis and it cannot be re-run
        ├── BatchNotFound             no batch with that id (never dispatched, or expired)
        ├── JobTimeout                ``Job.result(timeout=...)`` ran out of time (a TimeoutError)
        ├── FleetUnavailable          the fleet extra is not installed or the broker is unreachable
        ├── ApprovalRefused           an approve/deny that cannot apply (not awaiting, unknown or
        │                             already decided call id); nothing was changed
        └── ReduceError               a reduce cannot be planned (a result too big for any reducer)

Run-time failures of the agent itself are not exceptions here: they are a job status plus an
``error`` event, exactly as for a local ``Session.run``.
"""

from __future__ import annotations

from rho_agent.errors import ConfigError, RhoAgentError


class FleetError(RhoAgentError):
    """Base class for fleet errors."""


class SettingsError(FleetError, ConfigError):
    """A fleet setting (argument or environment variable) is invalid."""


class JobSpecError(FleetError, ValueError):
    """A job payload does not match the JobSpec schema."""


class JobRefused(FleetError):
    """A worker refused a job it must not run (for example a profile above its ceiling)."""


class JobNotFound(FleetError, KeyError):
    """No job with that id exists (never submitted here, or expired after the retention)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobLost(JobNotFound):
    """A job's record vanished from Redis while it was awaited (Redis restarted without
    persistence), and this dispatcher holds no copy of its spec to run it again."""


class BatchNotFound(FleetError, KeyError):
    """No batch with that id is recorded (never dispatched to this fleet, or expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "batch not found"


class JobTimeout(FleetError, TimeoutError):
    """A job did not finish within the time the caller was willing to wait."""


class FleetUnavailable(FleetError):
    """The fleet cannot be reached or its optional dependencies are missing."""


class ApprovalRefused(FleetError):
    """An approval decision could not be applied, atomically: nothing was changed.

    ``reason`` is ``not_awaiting`` (the job is not awaiting approval, say why in the message),
    ``unknown_call`` (a call id that is not pending on the job) or ``already_decided`` (that call
    was approved or denied before).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReduceError(FleetError):
    """A reduce cannot be planned: one result alone is larger than a reducer's context."""
