"""Every Redis key the fleet uses, named in one place.

All keys share one configurable prefix (``rho:`` by default) so several fleets, or several test
runs, can share a Redis database. Everything a job writes expires after the retention period.

=====================================  ===========  ==============================================
key                                    type         what
=====================================  ===========  ==============================================
``{p}job:{id}``                        hash         status, session id, timing, usage, cost, worker
``{p}job:{id}:events``                 stream       the job's AgentEvents and lifecycle entries
``{p}job:{id}:cancel``                 string       set when someone asked to cancel the job
``{p}job:{id}:children``               set          sub-jobs started by the job's ``fan_out``
``{p}session:{id}:trace``              stream       trace records: the session's State, exactly
``{p}session:{id}:owner``              string       id of the job currently running the session
``{p}session:{id}``                    hash         session summary for ``RedisSessionStore.list``
``{p}sessions``                        sorted set   session ids by creation time
``{p}jobs``                            sorted set   job ids by submission time (``rho-agent jobs``)
``{p}leases``                          sorted set   queued and running job ids by lease expiry (ms)
``{p}cancels``                         stream       cancel requests, read by every worker
``{p}approvals``                       sorted set   jobs awaiting approval by their deadline (ms)
``{p}dispatcher:{id}:done``            stream       finished job ids, for a dispatcher's fan-in (a
                                                    fan-out parent's job id stands for ``{id}``)
``{p}sweeper``                         string       lock so one sweeper runs per interval
``{p}janitor``                         string       lock so one janitor tidies the indexes at a time
``{p}batch:{id}``                      hash         a dispatch's job ids by entry index, ``total``
``{p}budget:{scope}``                  hash         a budget: max_cost_usd, max_tokens, window_s
``{p}budget:{scope}@{window}``         hash         its spend in one window: spent, reserved
``{p}budgets``                         sorted set   budget scopes by last use
``{p}rate:{bucket}``                   sorted set   calls admitted in the window, ``id:tokens``
``{p}rate:{bucket}:state``             hash         tokens held in the window, paused-until (ms)
=====================================  ===========  ==============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatch.errors import SettingsError

DEFAULT_PREFIX = "rho:"
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Keys:
    """Builds key names for one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise SettingsError(
                f"Redis key prefix {self.prefix!r} is invalid: use 1-64 letters, digits or "
                "'_.:-' (for example 'rho:')"
            )

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:cancel"

    def children(self, job_id: str) -> str:
        """The ids of the sub-jobs a job's ``fan_out`` calls submitted (set)."""
        return f"{self.prefix}job:{job_id}:children"

    def trace(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:trace"

    def session_owner(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}:owner"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def sessions(self) -> str:
        return f"{self.prefix}sessions"

    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    def leases(self) -> str:
        return f"{self.prefix}leases"

    def cancels(self) -> str:
        return f"{self.prefix}cancels"

    def approvals(self) -> str:
        """Jobs awaiting approval, scored by the Redis-time ms their approval expires."""
        return f"{self.prefix}approvals"

    def done(self, dispatcher_id: str) -> str:
        return f"{self.prefix}dispatcher:{dispatcher_id}:done"

    def batch(self, batch_id: str) -> str:
        """The job ids of one ``rho-agent dispatch`` by entry index (``rho-agent results``)."""
        return f"{self.prefix}batch:{batch_id}"

    def sweeper_lock(self) -> str:
        return f"{self.prefix}sweeper"

    def janitor_lock(self) -> str:
        return f"{self.prefix}janitor"

    def worker(self, name: str) -> str:
        """The last heartbeat of one worker (hash)."""
        return f"{self.prefix}worker:{name}"

    def workers(self) -> str:
        """Worker names scored by their last beat in Redis server ms (sorted set)."""
        return f"{self.prefix}workers"

    def budget(self, scope: str) -> str:
        """A budget's definition (hash); its windows' spend is ``budget(scope) + '@' + window``."""
        return f"{self.prefix}budget:{scope}"

    def budgets(self) -> str:
        """Budget scopes scored by their last reservation (Redis server ms)."""
        return f"{self.prefix}budgets"

    def rate_log(self, bucket: str) -> str:
        return f"{self.prefix}rate:{bucket}"

    def rate_state(self, bucket: str) -> str:
        return f"{self.prefix}rate:{bucket}:state"

    # Prefixes for the Lua scripts, which build a few names themselves (agree with the above).

    def job_prefix(self) -> str:
        return f"{self.prefix}job:"

    def session_prefix(self) -> str:
        return f"{self.prefix}session:"

    def dispatcher_prefix(self) -> str:
        return f"{self.prefix}dispatcher:"

    def budget_prefix(self) -> str:
        return f"{self.prefix}budget:"

    def pattern(self) -> str:
        """A ``SCAN MATCH`` pattern for every key of this prefix (for cleanup)."""
        return f"{self.prefix}*"
