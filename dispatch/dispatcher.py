"""Dispatcher: what a program imports to send agent jobs to the fleet (or run them in-process).

``Dispatcher()`` with no broker URL (argument or ``RHO_AGENT_BROKER_URL``) is embedded: jobs run
in this process on a private event loop, at most ``RHO_AGENT_EMBEDDED_CONCURRENCY`` at once, with
the same JobSpec, runner and events as on a worker. With a broker URL, jobs go to Celery workers
and everything they write is read back from Redis.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dispatch._client.core import _Core
from dispatch._client.twins import blocking, threaded
from dispatch.batch_run import new_batch_id
from dispatch.errors import BatchNotFound, JobLost
from dispatch.info import JobInfo
from dispatch.job import Job
from dispatch.reduce import Reduction, plan_reduce
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent.budgets import Budget, BudgetStatus
from rho_agent.config import AgentConfig
from rho_agent.events import RunResult
from rho_agent.output import OutputSchema, SchemaLike
from rho_agent.state import StateObserver


class Dispatcher:
    """Submits jobs and hands back Job handles. Sync methods, and ``a``-prefixed async twins
    (each pair is one definition, see ``dispatch._client.twins``).

    ``broker_url`` (else ``RHO_AGENT_BROKER_URL``) selects the fleet; without one, embedded mode.
    ``settings`` gives every fleet setting at once (see ``FleetSettings.from_env``).
    """

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        settings: FleetSettings | None = None,
        concurrency: int | None = None,
    ) -> None:
        if settings is None:
            settings = FleetSettings.from_env(
                broker_url=broker_url, embedded_concurrency=concurrency
            )
        self.settings = settings
        self.id = f"d-{secrets.token_hex(6)}"
        self._core = _Core(settings, self.id)

    @property
    def mode(self) -> str:
        """``embedded`` (in-process) or ``fleet`` (Celery workers via the broker)."""
        return "fleet" if self.settings.broker_url else "embedded"

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        /,
        prompt: str | Sequence[str],
        config: AgentConfig | None = None,
        *,
        session_id: str | None = None,
        observers: Sequence[StateObserver] = (),
        output_schema: SchemaLike | None = None,
        **options: Any,
    ) -> Job:
        """Send one job; several prompts make a multi-run in one session.

        ``session_id`` continues that session (on any worker, with its full history).
        ``output_schema`` (a pydantic model class or a JSON schema dict) types the answer of the
        last prompt: ``result.output`` holds it validated (an instance of the model), or the
        status is ``invalid_output`` (see ``rho_agent.output``).
        ``options``: ``labels`` (dict), ``timeout_s``, ``queue``, ``priority`` (0-9),
        ``max_cost_usd`` and ``max_tokens`` (this job's budget), ``rate_limits`` (its own).
        """
        schema = _schema(output_schema)
        spec = self._spec(prompt, config, session_id, options, schema)
        return self._core.submit([spec], list(observers), schema)[0]

    asubmit = threaded(submit)

    def map(
        self,
        /,
        prompts: Iterable[str],
        config: AgentConfig | None = None,
        *,
        output_schema: SchemaLike | None = None,
        **options: Any,
    ) -> list[Job]:
        """Fan out: one job per prompt, each in a new session; Jobs in the prompts' order.

        ``output_schema`` types every answer, as in ``submit``. ``batch_max_cost_usd`` /
        ``batch_max_tokens`` budget the whole fan-out together, ``max_cost_usd`` /
        ``max_tokens`` each job; ``rate_limits`` are the fan-out's own.
        """
        schema = _schema(output_schema)
        options.setdefault("batch_id", new_batch_id())
        specs = [self._spec(prompt, config, None, options, schema) for prompt in prompts]
        return self._core.submit(specs, [], schema)

    amap = threaded(map)

    def reduce(
        self,
        jobs_or_results: Sequence[Job] | Sequence[RunResult],
        prompt: str,
        config: AgentConfig | None = None,
        *,
        output_schema: SchemaLike | None = None,
        batch_id: str | None = None,
        **options: Any,
    ) -> Reduction:
        """Reduce many jobs' results with reducer jobs on the queue; returns at once.

        Waits for the jobs, then gives their results (typed outputs as JSON, failures marked as
        failed with their error) to one reducer with ``prompt``, or, when they do not fit the
        reducer's context window (``config``'s model or ``extras.context_window``, tool
        definitions included), to groups that fit and then a final reducer, level by level.
        ``output_schema`` types every reducer's answer. ``Reduction.result()`` is the final
        reducer's result; ``cancel()`` stops the whole tree. See ``dispatch.reduce``.
        Every reducer belongs to batch ``batch_id`` (a new one if None): give the map's batch id
        and its ``batch_max_cost_usd`` / ``batch_max_tokens`` and the whole tree spends from one
        budget.
        """
        schema = _schema(output_schema)
        plan = plan_reduce(prompt, config or AgentConfig(), schema, options)
        sources: list[Job | RunResult] = list(jobs_or_results)
        return Reduction(self._core, sources, plan, batch_id)

    def submit_specs(self, specs: Sequence[JobSpec]) -> list[Job]:
        """Send prepared JobSpecs (``dispatch.batch`` builds them from a file)."""
        specs = [spec.model_copy(update={"reply_to": self.id}) for spec in specs]
        return self._core.submit(specs, [])

    def submit_batch(self, path: str | Path, config: AgentConfig | None = None) -> list[Job]:
        """Send every entry of a JSONL or YAML batch file (see ``dispatch.batch``)."""
        from dispatch.batch import load_batch

        return self.submit_specs(load_batch(path, config or AgentConfig()))

    # -- waiting ------------------------------------------------------------------------------

    async def agather(
        self,
        jobs: Sequence[Job],
        timeout: float | None = None,  # noqa: ASYNC109 - the same signature as gather()
    ) -> list[RunResult]:
        """Wait for every job; results in the jobs' order (JobTimeout after ``timeout`` s)."""
        return await self._core.loop.acall(self._core.gather([job.id for job in jobs], timeout))

    gather = blocking(agather)

    # -- looking up ---------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        """A handle on an existing job, submitted by any dispatcher (JobNotFound if unknown)."""
        info = self._core.loop.call(self._core.require_info(job_id))
        return Job(job_id, info.session_id, self._core)

    def infos(self, job_ids: Sequence[str]) -> list[JobInfo | None]:
        """Metadata of many jobs in one round trip (``None`` for unknown ids)."""
        return self._core.loop.call(self._core.infos(list(job_ids)))

    def jobs(self, limit: int = 20) -> list[JobInfo]:
        """The most recently submitted jobs, newest first."""
        return self._core.loop.call(self._core.recent(limit))

    def approvals(self, limit: int = 100) -> list[JobInfo]:
        """Jobs awaiting approval (their ``pending_approvals``), the soonest to expire first."""
        return self._core.loop.call(self._core.awaiting(limit))

    def attach(self, job_ids: Sequence[str]) -> list[Job | None]:
        """Handles on existing jobs in one round trip (``None`` for unknown or expired ids)."""
        infos = self.infos(job_ids)
        return [
            None if info is None else Job(job_id, info.session_id, self._core)
            for job_id, info in zip(job_ids, infos, strict=True)
        ]

    def resend_vanished(self, jobs: Sequence[Job]) -> dict[str, JobLost]:
        """For followers that poll ``infos`` instead of waiting (batch runs): of ``jobs`` this
        dispatcher sent, send again those whose record Redis lost (restarted without
        persistence) for ``RHO_AGENT_REDIS_OUTAGE_LIMIT``, as ``gather`` does. Returns the
        jobs given up on (after three re-sends), each with its JobLost."""
        return self._core.loop.call(self._core.fan_in.audit([job.id for job in jobs]))

    # -- batches ------------------------------------------------------------------------------

    def record_batch(self, batch_id: str, job_ids: dict[int, str], *, total: int) -> None:
        """Store which job runs each entry of batch ``batch_id`` (in Redis for a fleet)."""
        fields = {str(index): job_id for index, job_id in job_ids.items()}
        self._core.broker.record_batch(batch_id, {"total": str(total), **fields})

    def batch_jobs(self, batch_id: str) -> tuple[int, dict[int, str]]:
        """A recorded batch: its number of entries, and the job id of each entry sent so far."""
        fields = self._core.broker.read_batch(batch_id)
        if "total" not in fields:
            raise BatchNotFound(
                f"batch {batch_id} is not recorded on this {self.mode} dispatcher (never "
                "dispatched here, or expired); check the id and --broker / RHO_AGENT_BROKER_URL"
            )
        total = int(fields.pop("total"))
        return total, {int(index): job_id for index, job_id in fields.items()}

    # -- budgets ------------------------------------------------------------------------------

    def set_budget(self, budget: Budget) -> None:
        """Set a label (``label:team=ops``) or fleet-wide (``fleet``) budget; it applies to the
        next model call of every job in that scope, already running or not."""
        self._core.broker.set_budget(budget)

    def budgets(self) -> list[BudgetStatus]:
        """Every budget scope with its limit, spent and reserved in its current window."""
        return self._core.broker.budget_statuses()

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background loop (embedded jobs still running are cancelled)."""
        self._core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def _spec(
        self,
        prompt: str | Sequence[str],
        config: AgentConfig | None,
        session_id: str | None,
        options: dict[str, Any],
        schema: OutputSchema | None = None,
    ) -> JobSpec:
        return build_spec(
            prompt,
            config or AgentConfig(),
            session_id=session_id,
            continue_session=session_id is not None,
            reply_to=self.id,
            output_schema=schema.json_schema if schema is not None else None,
            **options,
        )


def _schema(output_schema: SchemaLike | None) -> OutputSchema | None:
    return None if output_schema is None else OutputSchema.of(output_schema)
