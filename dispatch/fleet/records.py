"""VanishedRecords: re-create the records of running jobs when Redis lost them.

A Redis that restarts without persistence forgets every job, including the ones this worker is
still running. Their sessions are intact in memory, so nothing needs to run again: the worker
re-creates each job's record (submitted fields, ``running`` under its attempt, its lease, its
place in the jobs index, its session owner; all with their TTL) from its own copy of the spec.
Without that, the job's fenced writes would be refused (no record says it runs under this
attempt), the run would stop as if another worker had taken it over, and its result would have
no record to land in. The lease keeper checks at every renewal; a refused write checks at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dispatch.fleet import lua
from dispatch.info import job_fields
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec

logger = logging.getLogger("dispatch.records")


@dataclass(frozen=True)
class _Running:
    spec: JobSpec
    attempt: int
    worker: str
    lease_ms: int


class VanishedRecords:
    """The jobs this bus claimed and still runs, and how to give them their record back."""

    def __init__(self, client: Any, settings: FleetSettings) -> None:
        self._client = client
        self._settings = settings
        self._script = client.register_script(lua.RESTORE_RUNNING)
        self._running: dict[str, _Running] = {}

    def claimed(self, spec: JobSpec, attempt: int, worker: str, lease_ms: int) -> None:
        self._running[spec.job_id] = _Running(spec, attempt, worker, lease_ms)

    def released(self, job_id: str) -> None:
        self._running.pop(job_id, None)

    async def restore(self, job_id: str, attempt: int | None = None) -> bool:
        """Re-create the job's record if Redis has none; True if the record now says this
        worker's attempt (``attempt``, by default the latest it claimed) runs the job (re-created
        now or a moment ago), False if it says another attempt does."""
        running = self._running.get(job_id)
        if running is None or attempt not in (None, running.attempt):
            return False
        keys = self._settings.keys
        spec = running.spec
        fields = job_fields(spec, queue=self._settings.queue)
        del fields["status"], fields["attempt"]
        args: list[Any] = [
            job_id,
            running.attempt,
            running.worker,
            running.lease_ms,
            self._settings.retention_s,
            spec.submitted_at,
        ]
        for name, value in fields.items():
            args += [name, value]
        restored = await self._script(
            keys=[
                keys.job(job_id),
                keys.leases(),
                keys.jobs(),
                keys.session_owner(spec.session_id),
            ],
            args=args,
        )
        if restored == 2:
            logger.warning("job %s: Redis lost its record; re-created it from here", job_id)
        return bool(restored)

    async def restore_missing(self, held: set[str]) -> list[str]:
        """Restore every running job whose record is gone; forget jobs no longer ``held`` (the
        host's jobs at this moment: a job claimed during an await must not be forgotten)."""
        for job_id in [job_id for job_id in self._running if job_id not in held]:
            del self._running[job_id]
        job_ids = list(self._running)
        if not job_ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hexists(self._settings.keys.job(job_id), "spec")
        present = await pipe.execute()
        return [
            job_id
            for job_id, exists in zip(job_ids, present, strict=True)
            if not exists and await self.restore(job_id)
        ]
