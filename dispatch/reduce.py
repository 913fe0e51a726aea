"""Map-reduce over the queue: reduce the results of many jobs with reducer jobs that fit.

``Dispatcher.reduce`` returns a ``Reduction``: one batch id, its levels (the map, then each
reduce level, the last one a single final reducer), one result and one cancel. It runs as a
task on the dispatcher's loop: it waits for the map's jobs, plans groups that fit the reducer's
context window (``dispatch.reduce_plan``), submits each level as ordinary fleet jobs labelled with
the batch id and level, and feeds each level's answers to the next. A failed job, at any level,
is handed to its reducer as failed, with its error; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dispatch._client.twins import blocking
from dispatch.batch_run import new_batch_id
from dispatch.errors import FleetError, JobNotFound, JobTimeout
from dispatch.reduce_plan import (
    ReduceItem,
    group_budget,
    item_of,
    plan_groups,
    prompt_overhead,
    reducer_prompt,
)
from dispatch.spec import JobSpec, build_spec
from rho_agent import compaction
from rho_agent.agent import Agent
from rho_agent.config import AgentConfig
from rho_agent.events import AgentEvent, RunError, RunResult
from rho_agent.output import OutputSchema, structured_output_mode
from rho_agent.pricing import context_window

if TYPE_CHECKING:
    from dispatch._client.core import _Core
    from dispatch.job import Job

LevelKind = Literal["map", "reduce", "final"]


@dataclass
class Level:
    """One level of the tree: its jobs, and once it is over, how many finished and their cost."""

    kind: LevelKind
    depth: int
    job_ids: list[str]
    groups: list[list[str]] = field(default_factory=list)
    """For a reduce level: the sources (job ids of the level below) each reducer read."""
    finished: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    over: bool = False

    @property
    def name(self) -> str:
        return self.kind if self.kind != "reduce" else f"reduce-{self.depth}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "depth": self.depth,
            "jobs": list(self.job_ids),
            "groups": [list(group) for group in self.groups],
            "finished": self.finished,
            "failed": self.failed,
            "cost_usd": round(self.cost_usd, 6),
        }


@dataclass(frozen=True)
class ReducePlan:
    """What each reducer is: its config, schema, instruction and the request size it may use."""

    instruction: str
    config: AgentConfig
    schema: OutputSchema | None
    budget: int
    options: dict[str, Any]


class Reduction:
    """A map-reduce tree running on the queue: ``id``, ``levels``, ``result()``, ``cancel()``."""

    def __init__(
        self,
        core: _Core,
        sources: Sequence[Job | RunResult],
        plan: ReducePlan,
        batch_id: str | None = None,
    ) -> None:
        self.id = batch_id or new_batch_id()
        self._core = core
        self._plan = plan
        self.levels: list[Level] = []
        self._inputs: list[RunResult] = []
        job_ids: list[str] = []
        for index, source in enumerate(sources):
            if isinstance(source, RunResult):
                self._inputs.append(source)
                job_ids.append(f"result-{index}")
            else:
                job_ids.append(source.id)
        if not job_ids:
            raise FleetError("reduce() needs at least one job or result to reduce")
        if self._inputs and len(self._inputs) != len(job_ids):
            raise FleetError("reduce() takes Jobs or RunResults, not a mix of both")
        self.levels.append(Level("map", 0, job_ids, over=bool(self._inputs)))
        self._cancelled = False
        self._future: concurrent.futures.Future[RunResult] = core.loop.submit(self._run())

    def __repr__(self) -> str:
        return f"Reduction(id={self.id!r}, levels={[level.name for level in self.levels]})"

    # -- waiting ------------------------------------------------------------------------------

    async def aresult(self, timeout: float | None = None) -> RunResult:  # noqa: ASYNC109
        """The final reducer's result (JobTimeout after ``timeout`` s; the tree keeps running)."""
        finished = asyncio.shield(asyncio.wrap_future(self._future))  # a timeout cancels nothing
        try:
            return await asyncio.wait_for(finished, timeout)
        except TimeoutError:
            raise JobTimeout(
                f"reduce {self.id} did not finish in time; it keeps running: wait again, or "
                "cancel it with cancel()"
            ) from None

    result = blocking(aresult)

    def done(self) -> bool:
        return self._future.done()

    def progress(self) -> list[tuple[str, int, int]]:
        """(level name, finished jobs, jobs) for every level planned so far."""
        return self._core.loop.call(self._progress())

    async def _progress(self) -> list[tuple[str, int, int]]:
        rows = []
        for level in list(self.levels):
            if level.over:
                rows.append((level.name, len(level.job_ids), len(level.job_ids)))
                continue
            infos = await self._core.infos(level.job_ids)
            done = sum(1 for info in infos if info is not None and info.finished)
            rows.append((level.name, done, len(level.job_ids)))
        return rows

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self) -> int:
        """Cancel the whole tree: every unfinished job of every level, and the levels to come.

        Returns how many jobs were asked to stop.
        """
        return self._core.loop.call(self._cancel())

    async def _cancel(self) -> int:
        self._cancelled = True  # set before the snapshot: a level added later cancels itself
        stopped = 0
        for level in list(self.levels):
            stopped += await self._cancel_jobs(level)
        return stopped

    async def _cancel_jobs(self, level: Level) -> int:
        stopped = 0
        if level.over:
            return stopped
        for job_id in level.job_ids:
            with contextlib.suppress(JobNotFound):
                stopped += await self._core.cancel(job_id) in ("cancelled", "requested")
        return stopped

    # -- running ------------------------------------------------------------------------------

    async def _run(self) -> RunResult:
        try:
            items = await self._map_items()
            return await self._reduce(items)
        except FleetError as exc:
            return _failed(type(exc).__name__, str(exc))

    async def _map_items(self) -> list[ReduceItem]:
        level = self.levels[0]
        if self._inputs:
            results = self._inputs
        else:
            results = await self._core.gather(level.job_ids, None)
            _close(level, results)
        pairs = zip(level.job_ids, results, strict=True)
        return [item_of(job_id, result) for job_id, result in pairs]

    async def _reduce(self, items: list[ReduceItem]) -> RunResult:
        depth = 0
        while True:
            depth += 1
            if self._cancelled:
                return _cancelled(self.id)
            groups = plan_groups(
                [item.tokens() for item in items],
                self._plan.budget,
                [item.source for item in items],
            )
            final = len(groups) == 1
            if not final and len(groups) >= len(items):
                raise FleetError(
                    f"reduce {self.id}: level {depth} cannot shrink {len(items)} results (each "
                    "reducer's answer is as large as its input); ask for shorter answers"
                )
            level, specs = self._level(depth, [[items[i] for i in group] for group in groups])
            await asyncio.to_thread(self._core.submit, specs, [], self._plan.schema)
            self.levels.append(level)
            if self._cancelled:
                await self._cancel_jobs(level)
            results = await self._core.gather(level.job_ids, None)
            _close(level, results)
            if final:
                return results[0]
            items = [item_of(job_id, r) for job_id, r in zip(level.job_ids, results, strict=True)]

    def _level(self, depth: int, groups: list[list[ReduceItem]]) -> tuple[Level, list[JobSpec]]:
        plan = self._plan
        kind: LevelKind = "final" if len(groups) == 1 else "reduce"
        specs = []
        for index, group in enumerate(groups, start=1):
            labels = {
                **plan.options.get("labels", {}),
                "batch": self.id,
                "level": kind if kind == "final" else f"reduce-{depth}",
                "part": f"{index}/{len(groups)}",
                "inputs": str(len(group)),
            }
            options = {"batch_id": self.id, **plan.options, "labels": labels}
            specs.append(
                build_spec(
                    reducer_prompt(plan.instruction, group, (index, len(groups))),
                    plan.config,
                    reply_to=self._core.id,
                    output_schema=plan.schema.json_schema if plan.schema is not None else None,
                    **options,
                )
            )
        level = Level(
            kind,
            depth,
            [spec.job_id for spec in specs],
            [[item.source for item in group] for group in groups],
        )
        return level, specs


def plan_reduce(
    instruction: str,
    config: AgentConfig,
    schema: OutputSchema | None,
    options: dict[str, Any],
) -> ReducePlan:
    """The reducers' plan: the request size each may fill, tool definitions included."""
    if not instruction.strip():
        raise FleetError("reduce() needs a prompt saying how to combine the results")
    build_spec(instruction, config, **options)  # bad options fail here, not in the tree
    agent = Agent(config)
    tools = agent.registry.schemas()
    overhead = 0
    if schema is not None:
        schema = schema.asked_by(structured_output_mode(config.extras))
        if schema.mode == "tool":
            tools = [*tools, schema.final_answer_tool()]
        else:  # the response format travels with every request too
            overhead = compaction.count_tokens([], [schema.response_format()])
    window = context_window(config.model, config.context_window())
    overhead += prompt_overhead(instruction, agent.system_prompt, tools)
    return ReducePlan(instruction, config, schema, group_budget(window, overhead), options)


def _close(level: Level, results: Sequence[RunResult]) -> None:
    level.over = True
    level.finished = len(results)
    level.failed = sum(result.status != "completed" for result in results)
    level.cost_usd = sum(float(result.usage.get("cost_usd", 0.0)) for result in results)


def _failed(kind: str, message: str) -> RunResult:
    event = AgentEvent(type="error", content=message)
    return RunResult(text="", events=[event], status="error", error=RunError(kind, message))


def _cancelled(batch_id: str) -> RunResult:
    message = f"reduce {batch_id} was cancelled"
    return RunResult(text="", events=[AgentEvent("cancelled", content=message)], status="cancelled")
