"""Riding out Redis outages: the retry helper, and a dispatcher's wait on jobs Redis forgot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatch import Dispatcher, FleetSettings
from dispatch._client.fanin import FanIn
from dispatch.engine.bus import START, DispatchBus, StreamEntry
from dispatch.engine.memory_bus import MemoryBus
from dispatch.errors import ApprovalRefused, FleetUnavailable, JobLost, JobNotFound
from dispatch.fleet.outage import RedisOutage, survive, survive_sync
from dispatch.info import JobInfo
from dispatch.spec import JobSpec, build_spec
from rho_agent import AgentConfig
from rho_agent.events import RunResult


async def test_survive_retries_until_redis_answers() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 4:
            raise RedisConnectionError("Connection refused")
        return "ok"

    assert await survive(flaky, limit_s=5, what="testing") == "ok"
    assert len(calls) == 4
    assert calls[-1] - calls[0] >= 0.05 + 0.1 + 0.2 - 0.01  # backoff doubles


def test_survive_gives_up_after_the_limit_naming_the_setting() -> None:
    def down() -> None:
        raise RedisConnectionError("Connection refused")

    started = time.monotonic()
    with pytest.raises(RedisOutage) as caught:
        survive_sync(down, limit_s=0.5, what="reading job j-1")
    assert time.monotonic() - started < 1.5
    assert "RHO_AGENT_REDIS_OUTAGE_LIMIT" in str(caught.value)
    assert "reading job j-1" in str(caught.value)


def test_survive_does_not_retry_other_errors() -> None:
    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        survive_sync(broken, limit_s=5, what="testing")


class ForgetfulBus:
    """A DispatchBus whose Redis forgot every job (``get_info`` finds none) until re-sent."""

    def __init__(self) -> None:
        self.known: set[str] = set()

    async def get_info(self, job_ids: Sequence[str]) -> list[JobInfo | None]:
        return [
            JobInfo.from_fields(job_id, {"status": "queued"}) if job_id in self.known else None
            for job_id in job_ids
        ]

    async def read_done(self, dispatcher_id: str, after: str, block_s: float) -> list[StreamEntry]:
        await asyncio.sleep(min(block_s, 0.05))
        return []


async def test_a_forgotten_job_is_sent_again_then_lost_after_three_resends() -> None:
    bus = ForgetfulBus()
    sent: list[str] = []

    async def resend(specs: list[JobSpec]) -> None:
        sent.extend(spec.job_id for spec in specs)

    async def no_events(job_id: str, after: str, block_s: float) -> tuple[list[StreamEntry], bool]:
        raise AssertionError("not used")

    fan_in = FanIn(lambda: cast(DispatchBus, bus), "d1", no_events, resend, missing_limit_s=0.3)
    spec = build_spec("hello", AgentConfig(), reply_to="d1")
    fan_in.expect([spec])
    started = time.monotonic()
    with pytest.raises(JobLost, match="vanished from Redis 4 times"):
        await fan_in.results([spec.job_id], time.monotonic() + 10)
    assert sent == [spec.job_id] * 3
    assert fan_in.resent == 3
    assert time.monotonic() - started < 5


async def test_a_job_whose_done_entry_was_trimmed_unread_is_found_finished() -> None:
    """A done stream keeps its newest 100,000 entries: a job that finished before anyone
    waited, that far back, is found by the wait's periodic check, not waited on forever."""
    bus = MemoryBus()
    spec = build_spec("hello", AgentConfig(), reply_to="d3")
    await bus.submit([spec], "q")
    decision = await bus.start(spec, "w", 60_000)
    assert await bus.finish(spec, decision.attempt, RunResult(text="done early"), None)
    [entry] = await bus.read_done("d3", START, 0)
    bus._streams[bus._keys.done("d3")].trim_through(entry.id)  # as MAXLEN ~ would

    async def unused(*args: object) -> Any:
        raise AssertionError("not used")

    fan_in = FanIn(lambda: cast(DispatchBus, bus), "d3", unused, unused, missing_limit_s=0.3)
    fan_in.expect([spec])
    [result] = await fan_in.results([spec.job_id], time.monotonic() + 5)
    assert result.text == "done early"


async def test_a_job_redis_forgot_that_this_dispatcher_did_not_send_is_lost() -> None:
    bus = ForgetfulBus()
    bus.known.add("j-other")

    async def read_events(
        job_id: str, after: str, block_s: float
    ) -> tuple[list[StreamEntry], bool]:
        from dispatch.errors import JobNotFound

        bus.known.discard(job_id)  # Redis restarted without persistence
        raise JobNotFound(f"job {job_id} does not exist")

    async def resend(specs: list[JobSpec]) -> None:
        raise AssertionError("it has no spec to send")

    fan_in = FanIn(lambda: cast(DispatchBus, bus), "d2", read_events, resend, missing_limit_s=0.3)
    with pytest.raises(JobLost, match="did not submit it"):
        await fan_in.results(["j-other"], time.monotonic() + 10)


class GoneBus(ForgetfulBus):
    """A DispatchBus whose Redis stayed away past the outage limit."""

    async def read_done(self, dispatcher_id: str, after: str, block_s: float) -> list[StreamEntry]:
        await asyncio.sleep(0.05)
        raise RedisOutage("cannot reach the job bus's Redis for more than 0.3 s while reading")


async def test_a_wait_without_a_timeout_ends_when_redis_stays_away_past_the_limit() -> None:
    async def no_events(job_id: str, after: str, block_s: float) -> tuple[list[StreamEntry], bool]:
        raise AssertionError("not used")

    async def resend(specs: list[JobSpec]) -> None:
        raise AssertionError("not used")

    fan_in = FanIn(
        lambda: cast(DispatchBus, GoneBus()), "d3", no_events, resend, missing_limit_s=0.3
    )
    spec = build_spec("hello", AgentConfig(), reply_to="d3")
    fan_in.expect([spec])
    with pytest.raises(RedisOutage, match="while reading"):
        await asyncio.wait_for(fan_in.results([spec.job_id], None), 5)  # it waited forever


@pytest.mark.integration
@pytest.mark.parametrize(
    "use",
    [
        lambda d: d.job("j-1").info(),
        lambda d: list(d.job("j-1").events()),
        lambda d: d.jobs(5),
        lambda d: d.submit("hello", AgentConfig()),
    ],
    ids=["info", "events", "jobs", "submit"],
)
def test_a_redis_never_reached_fails_at_once_not_after_the_outage_limit(
    use: Callable[[Dispatcher], object],
) -> None:
    """The outage limit is for a Redis that went away; one that never answered is a wrong URL
    or a server not started, and every first use says so at once (without the password)."""
    from tests.integration.fleet import free_port

    url = f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"
    settings = FleetSettings(broker_url=url, redis_outage_s=60)
    started = time.monotonic()
    with Dispatcher(settings=settings) as dispatcher, pytest.raises(FleetUnavailable) as caught:
        use(dispatcher)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "cannot reach the job bus's Redis at redis://user:***@127.0.0.1" in message
    assert "s3cret-pw" not in message


@pytest.mark.integration
@pytest.mark.parametrize("scheme", ["amqp", "redis"])
def test_a_broker_of_its_own_never_reached_fails_at_once_and_writes_nothing(scheme: str) -> None:
    """The same for a job broker apart from the bus (RabbitMQ, or another Redis): jobs are not
    recorded as queued for a minute of retries, then left there, when it never answered."""
    from tests.integration.fleet import REDIS_HOST, claimed_db, free_port

    with claimed_db() as db:
        bus = redis.Redis.from_url(f"{REDIS_HOST}/{db}")
        settings = FleetSettings(
            broker_url=f"{scheme}://guest:s3cret-pw@127.0.0.1:{free_port()}/",
            redis_url=f"{REDIS_HOST}/{db}",
            redis_outage_s=60,
        )
        started = time.monotonic()
        with Dispatcher(settings=settings) as dispatcher, pytest.raises(FleetUnavailable) as caught:
            dispatcher.submit("hello", AgentConfig())
        assert time.monotonic() - started < 15
        written = bus.dbsize()
        bus.close()
    assert written == 0
    message = str(caught.value)
    assert f"cannot reach the job broker at {scheme}://guest:***@127.0.0.1" in message
    assert "s3cret-pw" not in message


@pytest.mark.integration
def test_a_decision_is_not_recorded_when_the_broker_to_send_it_was_never_reached() -> None:
    """Approving a parked job records the decision, then sends the job again: with a broker
    that never answered, the approval fails at once and the job stays awaiting it."""
    from dispatch.fleet.redis_bus import RedisBus
    from tests.dispatch.test_bus_contract import parked_job
    from tests.integration.fleet import REDIS_HOST, claimed_db, free_port

    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
            redis_url=f"{REDIS_HOST}/{db}",
            redis_outage_s=60,
        )

        async def park() -> str:
            bus = RedisBus.from_settings(settings)
            try:
                return (await parked_job(bus)).job_id
            finally:
                await bus.close()

        job_id = asyncio.run(park())
        started = time.monotonic()
        with Dispatcher(settings=settings) as dispatcher:
            with pytest.raises(FleetUnavailable, match="cannot reach the job broker"):
                dispatcher.job(job_id).approve()
            assert time.monotonic() - started < 15
            info = dispatcher.job(job_id).info()
    assert info.status == "awaiting_approval"
    assert [call.decision for call in info.pending_approvals] == [None, None]


@pytest.mark.integration
def test_a_decision_on_a_job_that_awaits_none_says_so_while_the_broker_is_down() -> None:
    """The caller's mistake is named before the broker is tried: an unknown job, or one that is
    running, gets its own error, not "cannot reach the job broker"."""
    from dispatch.fleet.redis_bus import RedisBus
    from tests.dispatch.test_bus_contract import spec
    from tests.integration.fleet import REDIS_HOST, claimed_db, free_port

    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
            redis_url=f"{REDIS_HOST}/{db}",
        )

        async def start() -> str:
            bus = RedisBus.from_settings(settings)
            try:
                job = spec(None)
                await bus.submit([job], "q")
                await bus.start(job, "w1", 60_000)
                return job.job_id
            finally:
                await bus.close()

        running = asyncio.run(start())
        with Dispatcher(settings=settings) as dispatcher:
            with pytest.raises(JobNotFound, match="j-never-submitted does not exist"):
                dispatcher.job("j-never-submitted").approve()
            with pytest.raises(ApprovalRefused, match=r"not awaiting approval \(it is running\)"):
                dispatcher.job(running).deny(reason="no")


@pytest.mark.integration
def test_reading_jobs_needs_only_redis_when_rabbitmq_is_down() -> None:
    from tests.integration.fleet import REDIS_HOST, claimed_db, free_port

    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
            redis_url=f"{REDIS_HOST}/{db}",
        )
        with Dispatcher(settings=settings) as dispatcher:
            assert dispatcher.jobs(5) == []


class _Pool:
    def __init__(self, sentinels: list[_Answers]) -> None:
        self.sentinel_manager = type("Manager", (), {"sentinels": sentinels})()
        self.service_name = "mymaster"


class _Answers:
    """A Redis (or Sentinel) client whose PINGs fail with the given errors, then answer."""

    def __init__(
        self,
        *failures: Exception,
        sentinels: list[_Answers] | None = None,
        masters: tuple[str, ...] = ("mymaster",),
    ) -> None:
        self.failures = list(failures)
        self.masters = masters
        self.pings = 0
        self.closed = False
        self.connection_pool = _Pool(sentinels or [])

    def ping(self) -> bool:
        self.pings += 1
        if self.failures:
            raise self.failures.pop(0)
        return True

    def close(self) -> None:
        self.closed = True

    def sentinel_masters(self) -> dict[str, object]:
        self.ping()
        return {name: {} for name in self.masters}


def test_a_redis_loading_its_data_or_between_masters_is_waited_for() -> None:
    """Answering but not ready (LOADING after a restart; Sentinels that monitor the master but
    have none up, during a failover) is an outage to ride out, not a wrong URL."""
    from redis.exceptions import BusyLoadingError
    from redis.sentinel import MasterNotFoundError

    from dispatch._client.brokers import _first_contact

    settings = FleetSettings(broker_url="redis://h:6379/0", redis_outage_s=10)
    loading = _Answers(BusyLoadingError("LOADING"), BusyLoadingError("LOADING"))
    _first_contact(loading, settings)
    assert (loading.pings, loading.closed) == (3, False)
    failover = _Answers(MasterNotFoundError("no master"), sentinels=[_Answers()])
    _first_contact(failover, settings)
    assert (failover.pings, failover.closed) == (2, False)


@pytest.mark.parametrize("sentinel", ["down", "other master"])
def test_sentinels_down_or_not_monitoring_the_master_are_not_waited_for(sentinel: str) -> None:
    """A wrong Sentinel address or master name is not a failover to wait a minute for."""
    from redis.sentinel import MasterNotFoundError

    from dispatch._client.brokers import _first_contact

    settings = FleetSettings(broker_url="redis://h:6379/0", redis_outage_s=60)
    down = RedisConnectionError("Connection refused")
    answers = _Answers(down, down) if sentinel == "down" else _Answers(masters=("other",))
    client = _Answers(MasterNotFoundError("no master"), sentinels=[answers])
    started = time.monotonic()
    with pytest.raises(FleetUnavailable, match="cannot reach the job bus's Redis"):
        _first_contact(client, settings)
    assert time.monotonic() - started < 1
    assert (client.pings, client.closed) == (1, True)
