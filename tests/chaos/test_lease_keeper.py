"""The lease keeper stops only the attempt that lost its lease.

Found by the poison chaos test (tests/chaos/test_poison.py): a 50 MB tool output held a worker's
loop past its jobs' 2 s leases, the sweeper sent the jobs again, and some came back to the same
worker, which then ran the stale and the current attempt of one job. Its lease keeper, told the
stale attempt was taken over, cancelled the job by id: both attempts, and the current one's
``cancelled`` end was accepted. Eight of twenty jobs ended ``cancelled``.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from dispatch.engine.bus import Claim
from dispatch.fleet.redis_bus import RedisBus
from dispatch.settings import FleetSettings
from dispatch.spec import build_spec
from rho_agent import AgentConfig
from tests.integration.fleet import REDIS_HOST, claimed_db
from workers.lease import LeaseKeeper

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(30)]


class TwoAttemptsHost:
    """A host running the stale attempt 1 and the current attempt 2 of one job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.stopped: list[Claim] = []
        self.cancelled: list[str] = []

    def active(self) -> list[tuple[str, int]]:
        return [(self.job_id, 1), (self.job_id, 2)]

    def job_ids(self) -> set[str]:
        return {self.job_id}

    def stop_attempt(self, claim: Claim) -> None:
        self.stopped.append(claim)

    def cancel_local(self, job_id: str) -> bool:
        self.cancelled.append(job_id)
        return True


async def renew_with_two_attempts(settings: FleetSettings) -> tuple[list[Claim], TwoAttemptsHost]:
    bus = RedisBus.from_settings(settings)
    spec = build_spec("hello", AgentConfig(), reply_to="d")
    await bus.submit([spec], settings.queue)
    first = await bus.start(spec, "w1", 2_000)
    assert first.attempt == 1
    # The sweeper's re-send, claimed by the same worker: attempt 2 now owns the job.
    client = redis.Redis.from_url(str(settings.bus_url), decode_responses=True)
    client.hset(settings.keys.job(spec.job_id), "attempt", 2)
    client.close()
    host = TwoAttemptsHost(spec.job_id)
    keeper = LeaseKeeper(bus, host, 2_000)  # type: ignore[arg-type]
    lost = await keeper.renew_once()
    await bus.close()
    return lost, host


def test_only_the_stale_attempt_of_a_job_is_stopped() -> None:
    with claimed_db() as db:
        settings = FleetSettings(
            broker_url=f"{REDIS_HOST}/{db}", key_prefix=f"lk{secrets.token_hex(3)}:"
        )
        lost, host = asyncio.run(renew_with_two_attempts(settings))
    assert lost == [Claim(host.job_id, 1)]
    assert host.stopped == [Claim(host.job_id, 1)] and host.cancelled == []
