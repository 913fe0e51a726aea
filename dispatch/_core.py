"""The Dispatcher's engine, living on its private event loop: backends, fan-in, observers.

Everything here runs on ``_Core.loop`` (Redis connections and embedded jobs are bound to it);
``Dispatcher`` and ``Job`` reach it through ``loop.call`` / ``loop.acall``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Protocol

from dispatch.bus import START, DispatchBus, JobBus, StreamEntry, is_finished
from dispatch.errors import JobNotFound, JobTimeout
from dispatch.info import JobInfo
from dispatch.loop import LoopThread
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec
from rho_agent.events import RunResult
from rho_agent.state import State, StateObserver

if TYPE_CHECKING:
    from dispatch.job import Job

logger = logging.getLogger("dispatch")


class _Backend(Protocol):
    @property
    def bus(self) -> DispatchBus: ...

    async def send(self, specs: list[JobSpec]) -> None: ...

    async def revoke(self, job_id: str) -> None: ...

    async def close(self) -> None: ...


class _EmbeddedBackend:
    """Runs jobs on this loop through a JobHost over a MemoryBus."""

    def __init__(self, settings: FleetSettings) -> None:
        from dispatch.host import JobHost
        from dispatch.memory_bus import MemoryBus
        from dispatch.runner import RunnerOptions

        memory = MemoryBus(settings.keys, retention_s=settings.retention_s)
        self.bus: JobBus = memory
        self._host = JobHost(
            memory, RunnerOptions(worker="embedded"), concurrency=settings.embedded_concurrency
        )
        self._tasks: set[asyncio.Task[object]] = set()

    async def send(self, specs: list[JobSpec]) -> None:
        await self._host.start()
        for spec in specs:
            task: asyncio.Task[object] = asyncio.create_task(self._run(spec))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, spec: JobSpec) -> object:
        try:
            return await self._host.run(spec.encode())
        except Exception:
            logger.exception("embedded job %s failed outside its run", spec.job_id)
            return None

    async def revoke(self, job_id: str) -> None:
        return None

    async def close(self) -> None:
        await self._host.stop()


class _FleetBackend:
    """Publishes jobs to Celery; reads everything back from Redis."""

    def __init__(self, settings: FleetSettings) -> None:
        from dispatch.broker import CeleryBroker
        from dispatch.redis_bus import RedisBus

        self._broker = CeleryBroker(settings)
        self.bus: DispatchBus = RedisBus.from_settings(settings)

    async def send(self, specs: list[JobSpec]) -> None:
        await asyncio.to_thread(self._broker.send, specs)

    async def revoke(self, job_id: str) -> None:
        await asyncio.to_thread(self._broker.revoke, job_id)

    async def close(self) -> None:
        await self.bus.close()
        await asyncio.to_thread(self._broker.close)


class _Core:
    """Owns the loop thread, the backend, the fan-in reader and the dispatcher-side observers."""

    def __init__(self, settings: FleetSettings, dispatcher_id: str) -> None:
        self.settings = settings
        self.id = dispatcher_id
        self.loop = LoopThread(f"rho-dispatcher-{dispatcher_id}")
        self._backend: _Backend | None = None
        self._waiters: defaultdict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._reader: asyncio.Task[None] | None = None
        self._followers: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> _Backend:
        if self._backend is None:
            if self.settings.broker_url:
                self._backend = _FleetBackend(self.settings)
            else:
                self._backend = _EmbeddedBackend(self.settings)
        return self._backend

    @property
    def bus(self) -> DispatchBus:
        return self.backend.bus

    # -- submitting ---------------------------------------------------------------------------

    async def submit(self, specs: list[JobSpec], observers: list[StateObserver]) -> list[Job]:
        from dispatch.job import Job

        await self.bus.submit(specs, self.settings.queue)
        for spec in specs:
            for observer in observers:
                self.observe(spec.job_id, spec.session_id, observer)
        await self.backend.send(specs)
        return [Job(spec.job_id, spec.session_id, self) for spec in specs]

    # -- reading ------------------------------------------------------------------------------

    async def infos(self, job_ids: list[str]) -> list[JobInfo | None]:
        return await self.bus.get_info(job_ids)

    async def require_info(self, job_id: str) -> JobInfo:
        info = (await self.bus.get_info([job_id]))[0]
        if info is None:
            raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
        return info

    async def recent(self, limit: int) -> list[JobInfo]:
        job_ids = await self.bus.recent_jobs(limit)
        return [info for info in await self.bus.get_info(job_ids) if info is not None]

    async def read_events(
        self, job_id: str, after: str, block_s: float
    ) -> tuple[list[StreamEntry], bool]:
        """A page of the job's events, and whether the job is over with nothing left to read."""
        entries = await self.bus.read_events(job_id, after, block_s)
        if entries:
            return entries, False
        info = await self.require_info(job_id)
        return entries, info.finished

    async def state(self, session_id: str) -> State:
        entries = await self.bus.read_trace(session_id)
        return State.from_records([entry.data["record"] for entry in entries])

    async def cancel(self, job_id: str) -> str:
        outcome = await self.bus.request_cancel(job_id)
        if outcome == "unknown":
            raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
        if outcome == "cancelled":
            await self.backend.revoke(job_id)
        return outcome

    # -- waiting ------------------------------------------------------------------------------

    async def result(self, job_id: str, wait_s: float | None) -> RunResult:
        return (await self.gather([job_id], wait_s))[0]

    async def gather(self, job_ids: list[str], wait_s: float | None) -> list[RunResult]:
        """Wait for every job (its dispatcher hears of it on the done stream), then read results."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        loop = asyncio.get_running_loop()
        futures = {job_id: loop.create_future() for job_id in dict.fromkeys(job_ids)}
        for job_id, future in futures.items():
            self._waiters[job_id].append(future)
        try:
            await self._wait_all(futures, deadline)
        finally:
            for job_id, future in futures.items():
                self._waiters[job_id].remove(future)
                if not self._waiters[job_id]:
                    del self._waiters[job_id]
        results = await self.bus.get_results(job_ids)
        missing = [job_id for job_id, result in zip(job_ids, results, strict=True) if not result]
        if missing:
            raise JobNotFound(f"job {missing[0]} finished but its result expired")
        return [result for result in results if result is not None]

    async def _wait_all(
        self, futures: dict[str, asyncio.Future[None]], deadline: float | None
    ) -> None:
        job_ids = list(futures)
        waits: list[asyncio.Future[None]] = []
        for job_id, info in zip(job_ids, await self.bus.get_info(job_ids), strict=True):
            if info is None:
                raise JobNotFound(f"job {job_id} does not exist (never submitted, or expired)")
            if info.finished:
                continue
            if info.dispatcher == self.id:
                waits.append(asyncio.shield(futures[job_id]))
            else:
                waits.append(asyncio.ensure_future(self._wait_foreign(job_id, deadline)))
        if not waits:
            return
        self._ensure_reader()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.gather(*waits), remaining)
        except TimeoutError:
            raise JobTimeout(
                f"{len(waits)} of {len(job_ids)} job(s) did not finish in time; they keep "
                "running: wait again, or cancel them with job.cancel()"
            ) from None

    async def _wait_foreign(self, job_id: str, deadline: float | None) -> None:
        """Follow the job's events stream until its ``finished`` entry (another dispatcher's)."""
        after = START
        while True:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise JobTimeout(f"job {job_id} did not finish in time; it keeps running")
            entries, over = await self.read_events(job_id, after, min(1.0, remaining))
            if over or any(is_finished(entry) for entry in entries):
                return
            if entries:
                after = entries[-1].id

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_done(), name="rho-fan-in")

    async def _read_done(self) -> None:
        after = START
        while self._waiters:
            try:
                entries = await self.bus.read_done(self.id, after, 1.0)
            except Exception as exc:
                logger.warning("reading finished jobs failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            for entry in entries:
                after = entry.id
                for future in self._waiters.get(str(entry.data.get("job_id")), []):
                    if not future.done():
                        future.set_result(None)

    # -- observers ----------------------------------------------------------------------------

    def observe(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        """Deliver the job's trace records to ``observer`` (callable from any thread)."""
        coroutine = self._follow_trace(job_id, session_id, observer)
        if self.loop.in_loop_thread:
            task = asyncio.get_running_loop().create_task(coroutine)
            self._followers.add(task)
            task.add_done_callback(self._followers.discard)
        else:
            self.loop.submit(coroutine)

    async def _follow_trace(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        try:
            await self._deliver_trace(job_id, session_id, observer)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("following the trace of job %s for %r failed", job_id, observer)

    async def _deliver_trace(self, job_id: str, session_id: str, observer: StateObserver) -> None:
        after = START
        while True:
            entries = await self.bus.read_trace(session_id, after, block_s=1.0)
            for entry in entries:
                after = entry.id
                if entry.data.get("job_id") == job_id:
                    _notify(observer, entry.data["record"])
            if entries:
                continue
            info = (await self.bus.get_info([job_id]))[0]
            if info is None or info.finished:
                for entry in await self.bus.read_trace(session_id, after):
                    if entry.data.get("job_id") == job_id:
                        _notify(observer, entry.data["record"])
                return

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self.loop.call(self._backend.close(), timeout=10)
            self._backend = None
        self.loop.stop()


def _notify(observer: StateObserver, record: dict[str, object]) -> None:
    try:
        observer.on_event(dict(record))
    except Exception:
        logger.exception("state observer %r raised; it keeps receiving records", observer)
