"""JobHost: runs many jobs at once on one event loop and routes cancel requests to them.

The same class serves embedded mode (inside a Dispatcher) and the worker's session host (inside a
Celery worker process): jobs are JSON payloads decoded into JobSpecs and run by ``JobRun``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from dispatch.engine.bus import Claim, RunnerBus
from dispatch.engine.loop import still_running, stop_tasks
from dispatch.engine.run import AgentCache, JobOutcome, JobRun, RunnerOptions
from dispatch.errors import JobSpecError
from dispatch.spec import ID_PATTERN as _ID
from dispatch.spec import JobSpec
from rho_agent.model.openai_client import close_shared_clients

logger = logging.getLogger("dispatch.engine.host")


class JobHost:
    """Runs jobs concurrently (at most ``concurrency`` at once when given)."""

    def __init__(
        self, bus: RunnerBus, options: RunnerOptions, *, concurrency: int | None = None
    ) -> None:
        self.bus = bus
        self.options = options
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._runs: defaultdict[str, list[JobRun]] = defaultdict(list)
        self._watcher: asyncio.Task[None] | None = None
        self._agents = AgentCache(options.agent_factory)
        bus.on_refused(self._fence_lost)

    async def start(self) -> None:
        """Start following cancel requests (idempotent)."""
        if self._watcher is None or self._watcher.done():
            position = await self._cancel_position()
            self._watcher = asyncio.create_task(self._watch_cancels(position), name="rho-cancels")

    async def stop(self) -> None:
        """Stop following cancels and close the loop's pooled model clients."""
        if self._watcher is not None:
            await stop_tasks([self._watcher])
            self._watcher = None
        await close_shared_clients()

    async def run(self, payload: Any) -> JobOutcome:
        """Decode and run one job. A malformed payload raises JobSpecError (and the job, if it
        can be identified, fails with that error instead of waiting forever)."""
        try:
            spec = JobSpec.decode(payload)
        except JobSpecError as exc:
            job_id = payload.get("job_id") if isinstance(payload, dict) else None
            if isinstance(job_id, str) and _ID.match(job_id):
                await self.bus.reject(job_id, str(exc))
            raise
        slot = _Slot(self._slots)
        run = JobRun(spec, self.bus, self.options, self._agents, slot.lent)
        self._runs[spec.job_id].append(run)
        try:
            async with slot:
                return await run.run()
        finally:
            self._forget(run)

    def active(self) -> list[tuple[str, int]]:
        """``(job id, attempt)`` of every job this host is running right now."""
        return [
            (job_id, run.attempt)
            for job_id, runs in self._runs.items()
            for run in runs
            if run.attempt > 0
        ]

    def unclaimed(self) -> list[JobSpec]:
        """The specs of jobs delivered here and not claimed yet (waiting for a slot, or for the
        answer to their claim). A graceful shutdown sends them again: their messages are gone
        once their tasks end, so nothing else would run them before their queued lease lapses."""
        return [run.spec for runs in self._runs.values() for run in runs if run.attempt == 0]

    def job_ids(self) -> set[str]:
        """Every job this host holds right now, claimed or still being claimed."""
        return set(self._runs)

    def progress(self) -> list[tuple[str, dict[str, Any]]]:
        """``(job id, turns/tokens/cost)`` of every job running here with a session."""
        found = []
        for job_id, runs in self._runs.items():
            for run in runs:
                numbers = run.progress()
                if numbers is not None:
                    found.append((job_id, numbers))
        return found

    def _fence_lost(self, claim: Claim) -> None:
        """The bus refused a write of ``claim``: stop that attempt here (not a newer one)."""
        self.stop_attempt(claim)

    def stop_attempt(self, claim: Claim) -> None:
        """Another attempt owns the job: stop attempt ``claim.attempt`` here, and only it (the
        sweeper may have sent the job back to this very worker, which then runs both)."""
        for run in self._runs.get(claim.job_id, []):
            if run.attempt == claim.attempt:
                run.fence_lost()

    def cancel_local(self, job_id: str) -> bool:
        """Cancel the job here if this host runs it; True if it did."""
        runs = self._runs.get(job_id, [])
        for run in runs:
            run.cancel()
        return bool(runs)

    @property
    def running_count(self) -> int:
        return sum(len(runs) for runs in self._runs.values())

    def _forget(self, run: JobRun) -> None:
        runs = self._runs.get(run.job_id)
        if runs is not None:
            runs.remove(run)
            if not runs:
                del self._runs[run.job_id]

    async def _cancel_position(self) -> str:
        position, _ = await self.bus.next_cancels("$", 0.0)
        return position

    async def _watch_cancels(self, position: str) -> None:
        while still_running():
            try:
                position, job_ids = await self.bus.next_cancels(position, 1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("reading cancel requests failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for job_id in job_ids:
                if self.cancel_local(job_id):
                    logger.info("cancelling job %s on request", job_id)


class _Slot:
    """One job's place under the host's concurrency limit (none without a limit).

    A ``fan_out`` parent lends its place while it waits: with every place held by waiting
    parents, their children would never start. It takes a place back to go on, but not when its
    wait is cancelled (a cancelled parent records its end at once instead of queueing behind its
    own children).
    """

    def __init__(self, slots: asyncio.Semaphore | None) -> None:
        self._slots = slots
        self._held = False

    async def __aenter__(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
            self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        if self._slots is not None and self._held:
            self._slots.release()
            self._held = False

    @contextlib.asynccontextmanager
    async def lent(self) -> AsyncIterator[None]:
        if self._slots is None or not self._held:
            yield
            return
        self._slots.release()
        self._held = False
        try:
            yield
        except asyncio.CancelledError:
            raise  # ends now, holding no place
        except BaseException:
            await self._take_back()
            raise
        await self._take_back()

    async def _take_back(self) -> None:
        assert self._slots is not None
        await self._slots.acquire()
        self._held = True
