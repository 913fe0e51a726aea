"""Live progress in Flower: a ``task-progress`` event per running job whose numbers moved.

Sent only while the worker sends task events (``-E``, or enabled by a running Flower). Flower has
no place for custom progress, but it shows a task's latest event: a custom event type
becomes the task's state (``PROGRESS``) and its ``result`` field is shown as the result. So while a
job runs, Flower's task list reads ``PROGRESS {'turns': 3, 'input_tokens': ..., 'cost_usd': ...}``
and the final ``task-succeeded`` event replaces it with the job's summary.

The events carry the Celery node name (``rho@host``, what the worker's own task events carry):
Flower lists every hostname an event names as a worker, so any other name would show a phantom
worker and put running jobs on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from dispatch.engine.host import JobHost
from dispatch.engine.loop import still_running

logger = logging.getLogger("workers.progress")


class TaskIds:
    """Which Celery task id runs which job (written by task threads, read by the loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}

    def set(self, job_id: str, task_id: str) -> None:
        with self._lock:
            self._ids[job_id] = task_id

    def pop(self, job_id: str, task_id: str) -> None:
        with self._lock:
            if self._ids.get(job_id) == task_id:
                del self._ids[job_id]

    def get(self, job_id: str) -> str | None:
        with self._lock:
            return self._ids.get(job_id)


class FlowerProgress:
    """Every ``interval_s``, publishes progress events for the jobs whose numbers changed."""

    def __init__(
        self,
        app: Any,
        host: JobHost,
        task_ids: TaskIds,
        hostname: Callable[[], str | None],
        enabled: Callable[[], bool],
        interval_s: float = 2.0,
    ) -> None:
        self._app = app
        self._enabled = enabled
        self._host = host
        self._task_ids = task_ids
        self._hostname = hostname
        self._interval_s = interval_s
        self._sent: dict[str, dict[str, Any]] = {}
        """``hostname()``: the Celery node name, or None until the worker is ready."""

    async def run(self) -> None:
        while still_running():
            await asyncio.sleep(self._interval_s)
            hostname = self._hostname()
            if hostname is None or not self._enabled():
                continue
            batch = self.changed()
            if not batch:
                continue
            try:
                await asyncio.to_thread(self._send, hostname, batch)
            except Exception as exc:
                logger.warning("sending progress events failed (%s)", exc)

    def changed(self) -> list[tuple[str, dict[str, Any]]]:
        """``(task id, numbers)`` for jobs whose numbers differ from the last event sent."""
        batch, current = [], {}
        for job_id, numbers in self._host.progress():
            current[job_id] = numbers
            task_id = self._task_ids.get(job_id)
            if task_id is not None and numbers["turns"] and self._sent.get(job_id) != numbers:
                batch.append((task_id, numbers))
        self._sent = current
        return batch

    def _send(self, hostname: str, batch: list[tuple[str, dict[str, Any]]]) -> None:
        with self._app.events.default_dispatcher(hostname=hostname) as dispatcher:
            for task_id, numbers in batch:
                dispatcher.send("task-progress", uuid=task_id, result=repr(numbers))
