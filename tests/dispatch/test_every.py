"""``every``: the one loop of the worker's background tasks (lease renewal, sweeper, janitor)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dispatch.engine.loop import every


async def _run(at_once: bool, fail_first: bool) -> tuple[list[str], list[str]]:
    """Run ``every`` until its step ran twice; what happened, in order, and the error hooks."""
    seen: list[str] = []
    errors: list[str] = []
    twice = asyncio.Event()

    async def step() -> None:
        seen.append("step")
        if seen.count("step") == 2:
            twice.set()
        if fail_first and seen.count("step") == 1:
            raise ConnectionError("redis down")

    task = asyncio.create_task(
        every(
            0.05,
            step,
            failing="stepping",
            log=logging.getLogger("test.every"),
            at_once=at_once,
            on_error=lambda: errors.append("error"),
        )
    )
    await asyncio.sleep(0.01)
    seen.append("checked")
    await asyncio.wait_for(twice.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return seen, errors


async def test_first_step_waits_one_interval_unless_at_once() -> None:
    assert (await _run(at_once=False, fail_first=False))[0][:2] == ["checked", "step"]
    assert (await _run(at_once=True, fail_first=False))[0][:2] == ["step", "checked"]


async def test_a_failing_step_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="test.every"):
        seen, errors = await _run(at_once=False, fail_first=True)
    assert seen.count("step") == 2
    assert errors == ["error"]
    assert "stepping failed (redis down); retrying" in caplog.text
