"""An embedded dispatcher stays bounded in a long-lived program, as Redis bounds a fleet: finished
jobs nobody holds are forgotten beyond ``RHO_AGENT_EMBEDDED_KEEP``, with their events, sub-jobs
and sessions; held jobs stay; event streams are trimmed; the fan-in's done stream keeps only
what it has not read."""

from __future__ import annotations

import gc
from pathlib import Path

from dispatch import Dispatcher
from dispatch.engine.bus import START, Claim
from dispatch.engine.memory_bus import MemoryBus
from dispatch.settings import FleetSettings
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.events import RunResult
from rho_agent.testing import ScriptedModelServer, text

KEEP = 5
ROUND = 10


def test_finished_jobs_nobody_holds_are_forgotten_beyond_the_bound_and_held_ones_stay(
    model_server: ScriptedModelServer, tmp_path: Path
) -> None:
    model_server.responder = lambda body: text("done")
    config = AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))
    with Dispatcher(settings=FleetSettings(embedded_keep=KEEP)) as dispatcher:
        jobs = dispatcher.map([f"first {index}" for index in range(ROUND)], config)
        dispatcher.gather(jobs)
        held, first_ids = jobs[0], [job.id for job in jobs]
        forgotten_session = jobs[1].session_id
        all_ids = list(first_ids)
        del jobs
        for round_ in range(2):
            more = dispatcher.map([f"more {round_} {i}" for i in range(ROUND)], config)
            dispatcher.gather(more)
            all_ids += [job.id for job in more]
        del more
        gc.collect()
        last = dispatcher.map([f"last {index}" for index in range(ROUND)], config)
        dispatcher.gather(last)
        all_ids += [job.id for job in last]

        kept = [info is not None for info in dispatcher.infos(first_ids)]
        assert kept == [True] + [False] * (ROUND - 1)  # only the one a handle holds
        assert held.result(timeout=10).text == "done"
        assert [event.type for event in held.events()][-1] == "turn_complete"
        known = sum(info is not None for info in dispatcher.infos(all_ids))
        assert known == KEEP + ROUND + 1

        again = dispatcher.submit("and then?", config, session_id=forgotten_session)
        result = again.result(timeout=30)
        assert result.status == "error"
        assert "has no trace in the job store" in (again.info().error or "")


async def test_a_parent_takes_its_sub_jobs_and_their_results_with_it() -> None:
    bus = MemoryBus(keep_finished=0)
    parent = _spec("parent", reply_to="d-one")
    child = _spec("child", reply_to=parent.job_id, depth=1)
    await bus.submit([parent], "q")
    await bus.submit_children(parent.job_id, [child])
    for spec in (child, parent):
        await _run(bus, spec)
    assert [entry.data["job_id"] for entry in await bus.read_done(parent.job_id, START, 0)] == [
        child.job_id
    ]
    await bus.submit([_spec("next", reply_to="d-one")], "q")  # forgetting happens on a submit
    assert await bus.get_info([parent.job_id, child.job_id]) == [None, None]
    assert await bus.read_done(parent.job_id, START, 0) == []
    assert await bus.read_trace(parent.session_id) == []


async def test_a_job_still_awaiting_approval_or_running_is_never_forgotten() -> None:
    bus = MemoryBus(keep_finished=0)
    running = _spec("running", reply_to="d-one")
    await bus.submit([running], "q")
    await bus.start(running, "w", 60_000)
    await bus.submit([_spec("next", reply_to="d-one")], "q")
    [info] = await bus.get_info([running.job_id])
    assert info is not None and info.status == "running"


async def test_a_jobs_events_keep_their_newest_entries_with_their_ids() -> None:
    bus = MemoryBus(events_maxlen=100)
    spec = _spec("chatty", reply_to="d-one")
    await bus.submit([spec], "q")
    decision = await bus.start(spec, "w", 60_000)
    for index in range(300):
        bus.emit_event(Claim(spec.job_id, decision.attempt), {"n": index})
    entries = await bus.read_events(spec.job_id, START, count=1000)
    assert 100 <= len(entries) <= 110
    assert entries[-1].data == {"n": 299}
    assert entries[-1].id == "301-0"  # the lifecycle entry, then 300 events: ids kept
    later = await bus.read_events(spec.job_id, entries[-2].id, count=10)
    assert [entry.data for entry in later] == [{"n": 299}]


async def test_the_fan_ins_done_stream_keeps_only_what_it_has_not_read() -> None:
    bus = MemoryBus()
    specs = [_spec(f"job {index}", reply_to="d-one") for index in range(3)]
    await bus.submit(specs, "q")
    for spec in specs[:2]:
        await _run(bus, spec)
    first = await bus.read_done("d-one", START, 0)
    assert len(first) == 2
    await _run(bus, specs[2])
    after = await bus.read_done("d-one", first[-1].id, 0)
    assert [entry.data["job_id"] for entry in after] == [specs[2].job_id]
    assert [entry.data["job_id"] for entry in await bus.read_done("d-one", START, 0)] == [
        specs[2].job_id
    ]  # what was read before is gone


async def test_reading_an_unknown_job_leaves_nothing_behind() -> None:
    bus = MemoryBus()
    for index in range(100):
        assert await bus.read_events(f"j-unknown-{index}") == []
    assert await bus.get_info(["j-unknown-1"]) == [None]
    assert bus._streams == {}


def _spec(prompt: str, *, reply_to: str, depth: int = 0) -> JobSpec:
    spec = build_spec(prompt, AgentConfig())
    return spec.model_copy(update={"reply_to": reply_to, "depth": depth})


async def _run(bus: MemoryBus, spec: JobSpec) -> None:
    decision = await bus.start(spec, "w", 60_000)
    claim = Claim(spec.job_id, decision.attempt)
    bus.emit_trace(claim, spec.session_id, {"type": "session_start"})
    assert await bus.finish(spec, decision.attempt, RunResult(text="ok"), None)
