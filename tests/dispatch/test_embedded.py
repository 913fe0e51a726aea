"""Embedded mode: with no broker the Dispatcher runs jobs in-process, same events and results."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch import Dispatcher, JobNotFound, JobSpecError, JobTimeout
from rho_agent import AgentConfig, AgentEvent
from rho_agent.testing import ScriptedModelServer, ScriptedResponse, behaviour, error, text


@pytest.fixture
def config(model_server: ScriptedModelServer, tmp_path: Path) -> AgentConfig:
    model_server.responder = behaviour("echo")
    return AgentConfig(base_url=model_server.base_url, working_dir=str(tmp_path))


@pytest.fixture
def dispatcher() -> Iterator[Dispatcher]:
    with Dispatcher(concurrency=8) as embedded:
        yield embedded


def slow_echo(delay: float) -> Any:
    echo = behaviour("echo")

    def respond(body: dict[str, Any]) -> ScriptedResponse:
        answer = echo(body)
        assert isinstance(answer, ScriptedResponse)
        return text(answer.text, delay=delay)

    return respond


def test_no_broker_means_embedded(dispatcher: Dispatcher) -> None:
    assert dispatcher.mode == "embedded"


def test_submit_result_status_and_info(dispatcher: Dispatcher, config: AgentConfig) -> None:
    job = dispatcher.submit("hello", config, labels={"team": "a"})
    result = job.result(timeout=10)
    assert (result.status, result.text) == ("completed", "Echo: hello")
    # "Echo: " then "hello": streamed text goes out at whitespace (rho_agent.redact.StreamRedactor)
    assert [event.type for event in result.events] == [
        "text",
        "text",
        "api_call_complete",
        "turn_complete",
    ]
    assert result.usage["input_tokens"] > 0
    info = job.info()
    assert (info.status, info.worker, info.attempt, info.turns) == ("completed", "embedded", 1, 1)
    assert info.labels == {"team": "a"} and info.input_tokens == result.usage["input_tokens"]
    assert job.status() == "completed"


def test_map_and_gather_keep_submission_order(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    echo = behaviour("echo")
    model_server.responder = lambda body: text(
        echo(body).text,  # type: ignore[union-attr]
        delay=random.uniform(0, 0.05),
    )
    prompts = [f"prompt {index}" for index in range(30)]
    results = dispatcher.gather(dispatcher.map(prompts, config), timeout=30)
    assert [result.text for result in results] == [f"Echo: {prompt}" for prompt in prompts]


def test_events_replay_from_the_first_for_a_late_reader(
    dispatcher: Dispatcher, config: AgentConfig
) -> None:
    job = dispatcher.submit("hello", config)
    result = job.result(timeout=10)
    assert list(job.events()) == result.events
    assert list(job.events()) == result.events, "every reader gets the whole stream"


def test_events_are_live_and_end_with_the_job(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(0.3)
    job = dispatcher.submit("hello", config)
    seen = [event.type for event in job.events()]
    assert seen == ["text", "text", "api_call_complete", "turn_complete"]
    assert job.status() == "completed"


def test_events_can_start_from_now(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(0.5)
    job = dispatcher.submit(["first", "second"], config)
    deadline = time.monotonic() + 5
    while job.info().turns < 1:  # the first run has ended, the second waits on the model
        assert time.monotonic() < deadline
        time.sleep(0.02)
    later = [event.type for event in job.events(from_start=False)]
    assert later == ["text", "text", "api_call_complete", "turn_complete"], "only the second run"
    assert list(job.events(from_start=False)) == [], "nothing is left once the job ended"


async def test_async_forms(dispatcher: Dispatcher, config: AgentConfig) -> None:
    job = await dispatcher.asubmit("one", config)
    jobs = await dispatcher.amap(["two", "three"], config)
    results = await dispatcher.agather([job, *jobs], timeout=10)
    assert [result.text for result in results] == ["Echo: one", "Echo: two", "Echo: three"]
    events = [event async for event in job.events()]
    assert events == (await job.aresult()).events
    assert await job.astatus() == "completed"
    assert (await job.astate()).run_count == 1


def test_cancel_stops_a_running_job_within_a_second(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(30)
    job = dispatcher.submit("slow", config)
    wait_for_status(job, "running")
    started = time.monotonic()
    assert job.cancel() == "requested"
    result = job.result(timeout=5)
    assert time.monotonic() - started < 1.0
    assert result.status == "cancelled"
    assert result.events[-1].type == "cancelled"
    assert job.state().status == "cancelled"


def test_cancel_of_a_queued_job_revokes_it(
    config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(30)
    with Dispatcher(concurrency=1) as single:
        running = single.submit("first", config)
        queued = single.submit("second", config)
        wait_for_status(running, "running")
        assert queued.cancel() == "cancelled"
        result = queued.result(timeout=1)
        assert result.status == "cancelled"
        assert result.events == [AgentEvent("cancelled", content="cancelled before it started")]
        running.cancel()
        assert running.result(timeout=5).status == "cancelled"


def test_a_job_continues_an_earlier_jobs_session(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    first = dispatcher.submit("remember 42", config)
    first.result(timeout=10)
    second = dispatcher.submit("what was it?", config, session_id=first.session_id)
    assert second.session_id == first.session_id
    assert second.result(timeout=10).text == "Echo: what was it?"
    sent = model_server.requests[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["remember 42", "what was it?"]
    state = second.state()
    assert state.run_count == 2
    assert state.get_user_messages() == ["remember 42", "what was it?"]


def test_several_prompts_make_a_multi_run(dispatcher: Dispatcher, config: AgentConfig) -> None:
    job = dispatcher.submit(["first", "second"], config)
    result = job.result(timeout=10)
    assert (result.status, result.text) == ("completed", "Echo: second")
    assert [event.type for event in result.events].count("turn_complete") == 2
    assert job.state().run_count == 2


def test_observers_receive_the_jobs_trace_records(
    dispatcher: Dispatcher, config: AgentConfig
) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def on_event(self, event: dict[str, Any]) -> None:
            self.records.append(event)

    early, late = Recorder(), Recorder()
    job = dispatcher.submit("hello", config, observers=[early])
    job.result(timeout=10)
    job.add_observer(late)
    expected = job.state().records
    deadline = time.monotonic() + 5
    while (len(early.records), len(late.records)) != (len(expected),) * 2:
        assert time.monotonic() < deadline, "observers did not get every record"
        time.sleep(0.02)
    assert early.records == late.records == expected
    assert {"session_start", "run_start", "model_call", "run_end"} <= {
        record["type"] for record in expected
    }


def test_a_job_timeout_stops_it_with_an_error(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(30)
    result = dispatcher.submit("slow", config, timeout_s=0.3).result(timeout=5)
    assert result.status == "error"
    info = dispatcher.jobs(1)[0]
    assert info.status == "error" and "timed out after 0.3 s" in (info.error or "")
    assert result.error is not None and result.error.type == "job_timeout"
    assert "timed out after 0.3 s" in result.error.message


def test_a_failed_model_call_says_why_in_the_result_and_the_job_info(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = lambda body: error(400, "the model does not exist: gpt-nope")
    job = dispatcher.submit("hi", config)
    result = job.result(timeout=10)
    assert result.status == "error" and result.error is not None
    assert result.error.type == "ModelError" and "gpt-nope" in result.error.message
    assert job.info().error == "ModelError: model API error 400: the model does not exist: gpt-nope"


def test_waiting_has_a_timeout(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(30)
    job = dispatcher.submit("slow", config)
    with pytest.raises(JobTimeout, match="keep running"):
        job.result(timeout=0.2)
    job.cancel()


def test_a_session_in_use_is_refused(
    dispatcher: Dispatcher, config: AgentConfig, model_server: ScriptedModelServer
) -> None:
    model_server.responder = slow_echo(30)
    first = dispatcher.submit("slow", config)
    wait_for_status(first, "running")
    second = dispatcher.submit("meanwhile", config, session_id=first.session_id)
    result = second.result(timeout=5)
    assert result.status == "error"
    assert f"in use by job {first.id}" in (second.info().error or "")
    first.cancel()


def test_continuing_an_unknown_session_fails_clearly(
    dispatcher: Dispatcher, config: AgentConfig
) -> None:
    job = dispatcher.submit("hi", config, session_id="no-such-session")
    assert job.result(timeout=5).status == "error"
    assert "no-such-session has no trace" in (job.info().error or "")


def test_unknown_jobs_and_bad_options(dispatcher: Dispatcher, config: AgentConfig) -> None:
    with pytest.raises(JobNotFound):
        dispatcher.job("j-nope")
    with pytest.raises(JobSpecError, match="priority"):
        dispatcher.submit("hi", config, priority=99)
    job = dispatcher.submit("hi", config)
    job.result(timeout=10)
    attached = dispatcher.job(job.id)
    assert attached.session_id == job.session_id
    assert attached.result().text == "Echo: hi"
    assert dispatcher.jobs(5)[0].job_id == job.id


def wait_for_status(job: Any, status: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while job.status() != status:
        assert time.monotonic() < deadline, f"job never became {status}"
        time.sleep(0.01)
