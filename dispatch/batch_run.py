"""Running a batch: send its jobs (or resume it), follow them, write each result as it finishes.

Every batch has an id (``b-...``). Which job runs each entry is recorded before the jobs are sent
(in Redis for a fleet, ``Keys.batch``), so the results of a batch can be collected at any time
from another process (``rho-agent results BATCH``), and a resumed batch sends again only the
entries that did not complete: completed jobs are collected, queued and running ones followed,
failed, cancelled, never-sent and expired ones sent again.

``run_batch`` is what ``rho-agent dispatch FILE`` calls: the CLI only parses flags and draws.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from dispatch.errors import JobSpecError
from dispatch.info import JobInfo
from dispatch.job import Job
from dispatch.spec import JobSpec
from rho_agent.events import RunError, RunResult, output_data, run_status
from rho_agent.state import round_cost

if TYPE_CHECKING:
    from dispatch.dispatcher import Dispatcher


class TextSink(Protocol):
    """Where result lines go: a text file, ``sys.stdout``, a ``StringIO``..."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


INTERRUPTED_REASON = "interrupted (Ctrl+C) before it finished"


def new_batch_id() -> str:
    """A batch id that sorts by time and is short enough to type: ``b-20261207-0715-3fa9c1``."""
    return f"b-{datetime.now(UTC):%Y%m%d-%H%M}-{secrets.token_hex(3)}"


@dataclass
class BatchProgress:
    """Where a batch stands; passed to the progress callback at every poll."""

    total: int
    completed: int = 0
    failed: int = 0
    budget_exceeded: int = 0
    """Of the failed: jobs a budget stopped."""
    running: int = 0
    queued: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def add_usage(self, info: JobInfo) -> None:
        """Count a job's tokens and cost (finished jobs, or running ones for a live view)."""
        self.input_tokens += info.input_tokens
        self.output_tokens += info.output_tokens
        self.cost_usd = round_cost(self.cost_usd + info.cost_usd)


@dataclass
class BatchOutcome:
    """The finished batch: final progress and every result in entry order."""

    progress: BatchProgress
    jobs: list[Job] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.progress.failed == 0


class BatchRun:
    """One pass over a batch. ``start`` sends (or resumes), ``wait`` follows until every entry
    has finished or ``stop()`` is called; ``pending`` is what has not finished yet.

    ``done`` holds entries a results file already has as completed (a resumed batch neither
    sends nor writes them again).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        total: int,
        *,
        batch_id: str | None = None,
        output: TextSink | None = None,
        done: Mapping[int, RunResult] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.dispatcher = dispatcher
        self.batch_id = batch_id or new_batch_id()
        self.progress = BatchProgress(total=total)
        self.pending: dict[int, Job] = {}
        self.results: dict[int, RunResult] = dict(done or {})
        self.jobs: dict[int, Job] = {}
        self.unsent: list[int] = []
        self._output = output
        self._poll_s = poll_s
        self._stop = False
        for result in self.results.values():
            self._count(result)

    # -- starting -----------------------------------------------------------------------------

    def start(self, specs: list[JobSpec]) -> None:
        """Send every entry not already done, as a new batch."""
        self._check_total(len(specs))
        if self.results and max(self.results) >= len(specs):
            raise JobSpecError(
                f"batch {self.batch_id} has at least {max(self.results) + 1} entries but the file "
                f"has {len(specs)}; resume with the batch file it was dispatched from"
            )
        self._send({index: spec for index, spec in enumerate(specs) if index not in self.results})

    def resume(self, specs: list[JobSpec] | None) -> None:
        """Pick up a recorded batch: follow what it sent, send again what did not complete.

        With ``specs`` None (collecting only), nothing is sent: entries that would need sending
        are left in ``unsent``.
        """
        total, recorded = self.dispatcher.batch_jobs(self.batch_id)
        if specs is not None and len(specs) != total:
            raise JobSpecError(
                f"batch {self.batch_id} has {total} entries but the file has {len(specs)}; "
                "resume with the batch file it was dispatched from"
            )
        self._check_total(total)
        todo = [index for index in range(total) if index not in self.results]
        job_ids = [recorded[index] for index in todo if index in recorded]
        infos = dict(zip(job_ids, self.dispatcher.infos(job_ids), strict=True))
        handles = dict(zip(job_ids, self.dispatcher.attach(job_ids), strict=True))
        again: list[int] = []
        for index in todo:
            info = infos.get(recorded.get(index, ""))
            job = handles.get(recorded.get(index, ""))
            if info is None or job is None or (info.finished and info.status != "completed"):
                again.append(index)
            else:
                self.pending[index] = self.jobs[index] = job
        if specs is None:
            self.unsent = again
            return
        for index in again:
            if specs[index].job_id == recorded.get(index):
                raise JobSpecError(
                    f"entry {index} of batch {self.batch_id} names job_id "
                    f"{specs[index].job_id}, which already ran; remove job_id from that entry "
                    "so it can be sent again"
                )
        self._send({index: specs[index] for index in again})

    def _check_total(self, total: int) -> None:
        if total != self.progress.total:
            raise JobSpecError(
                f"batch {self.batch_id} has {total} entries, expected {self.progress.total}"
            )

    def _send(self, specs: dict[int, JobSpec]) -> None:
        if not specs:
            return
        ids = {index: spec.job_id for index, spec in specs.items()}
        self.dispatcher.record_batch(self.batch_id, ids, total=self.progress.total)
        jobs = self.dispatcher.submit_specs(list(specs.values()))
        for index, job in zip(specs, jobs, strict=True):
            self.pending[index] = self.jobs[index] = job

    # -- following ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop following at the next poll (Ctrl+C); the jobs themselves are not touched."""
        self._stop = True

    def wait(self, on_progress: Callable[[BatchProgress], None] | None = None) -> BatchOutcome:
        """Follow the pending jobs, writing each result as it finishes, until all have finished
        (or ``stop()``); report progress every poll."""
        while True:
            live = self.poll()
            if on_progress is not None:
                on_progress(self._snapshot(live))
            if not self.pending or self._stop:
                break
            time.sleep(self._poll_s)
        return self.outcome()

    def poll(self) -> BatchProgress:
        """Collect the jobs that finished since the last poll; the live counts of the others."""
        indexes = list(self.pending)
        infos = self.dispatcher.infos([self.pending[index].id for index in indexes])
        missing = [index for index, info in zip(indexes, infos, strict=True) if info is None]
        if missing:
            self._follow_vanished(missing)
        live = BatchProgress(total=self.progress.total)
        finished: dict[int, JobInfo] = {}
        for index, info in zip(indexes, infos, strict=True):
            if info is not None and info.finished:
                finished[index] = info
            elif info is not None:
                if info.status == "running":
                    live.running += 1
                else:
                    live.queued += 1
                live.add_usage(info)
        if finished:
            done_jobs = [self.pending[index] for index in finished]
            gathered = self.dispatcher.gather(done_jobs)
            for (index, info), result in zip(finished.items(), gathered, strict=True):
                self._write(result_line(index, self.pending[index], info, result, self.batch_id))
                self.results[index] = result
                self._count(result)
                self.progress.add_usage(info)
                del self.pending[index]
        return live

    def _follow_vanished(self, indexes: list[int]) -> None:
        """Jobs whose record Redis lost (restarted without persistence) are sent again; one
        lost for good is written as an ``error`` line (polling alone would wait forever)."""
        lost = self.dispatcher.resend_vanished([self.pending[index] for index in indexes])
        for index in indexes:
            job = self.pending[index]
            if job.id not in lost:
                continue
            reason = str(lost[job.id])
            self._write(_unfinished_line(index, job, "error", reason, self.batch_id))
            result = RunResult(text="", status="error", error=RunError("JobLost", reason))
            self.results[index] = result
            self._count(result)
            del self.pending[index]

    def record_cancelled(self, reason: str = INTERRUPTED_REASON) -> None:
        """Write a ``cancelled`` line for every entry that did not finish (embedded Ctrl+C: the
        jobs die with this process, so the results file is their only record)."""
        for index, job in sorted(self.pending.items()):
            self._write(_unfinished_line(index, job, "cancelled", reason, self.batch_id))
        self.pending.clear()

    def outcome(self) -> BatchOutcome:
        ordered = sorted(self.results)
        return BatchOutcome(
            self.progress,
            [self.jobs[index] for index in sorted(self.jobs)],
            [self.results[index] for index in ordered],
        )

    def _count(self, result: RunResult) -> None:
        if result.status == "completed":
            self.progress.completed += 1
        else:
            self.progress.failed += 1
            self.progress.budget_exceeded += result.status == "budget_exceeded"

    def _write(self, line: dict[str, Any]) -> None:
        if self._output is not None:
            self._output.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._output.flush()

    def _snapshot(self, live: BatchProgress) -> BatchProgress:
        done = self.progress
        return BatchProgress(
            total=done.total,
            completed=done.completed,
            failed=done.failed,
            budget_exceeded=done.budget_exceeded,
            running=live.running,
            queued=live.queued,
            input_tokens=done.input_tokens + live.input_tokens,
            output_tokens=done.output_tokens + live.output_tokens,
            cost_usd=round_cost(done.cost_usd + live.cost_usd),
        )


def run_batch(
    dispatcher: Dispatcher,
    specs: list[JobSpec],
    *,
    on_progress: Callable[[BatchProgress], None] | None = None,
    output: TextSink | None = None,
    poll_s: float = 0.5,
    batch_id: str | None = None,
) -> BatchOutcome:
    """Submit ``specs`` as a new batch, report progress every ``poll_s`` seconds, write each
    result as a JSONL line to ``output`` as it finishes, and return every result in order."""
    batch = BatchRun(dispatcher, len(specs), batch_id=batch_id, output=output, poll_s=poll_s)
    batch.start(specs)
    return batch.wait(on_progress)


def result_line(
    index: int, job: Job, info: JobInfo, result: RunResult, batch_id: str | None = None
) -> dict[str, Any]:
    """One line of the results file; ``error`` says why a job did not complete."""
    return {
        "index": index,
        "batch": batch_id,
        "job_id": job.id,
        "session_id": job.session_id,
        "status": result.status,
        "text": result.text,
        "usage": result.usage,
        "error": info.error or (str(result.error) if result.error is not None else None),
        "labels": info.labels,
        "prompt": info.prompt,
        "worker": info.worker,
        "attempt": info.attempt,
        "duration_s": info.duration_s,
        "output": output_data(result.output),
    }


def line_result(line: Mapping[str, Any]) -> RunResult:
    """The RunResult a results-file line stands for (a resumed batch's completed entries)."""
    return RunResult(
        text=str(line.get("text") or ""),
        status=run_status(line.get("status") or "error"),
        usage=dict(line.get("usage") or {}),
    )


def _unfinished_line(
    index: int, job: Job, status: str, reason: str, batch_id: str
) -> dict[str, Any]:
    return {
        "index": index,
        "batch": batch_id,
        "job_id": job.id,
        "session_id": job.session_id,
        "status": status,
        "text": "",
        "usage": {},
        "error": reason,
    }
