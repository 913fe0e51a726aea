"""The trace: one appended JSON record per state change, read back into an exact State."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rho_agent import JsonlTraceSink, State, TraceError
from rho_agent.trace import TRACE_FORMAT_VERSION, decode_records


def _call(call_id: str, name: str = "probe", args: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _usage(inp: int, out: int, cached: int = 0) -> dict[str, int]:
    return {
        "input_tokens": inp,
        "output_tokens": out,
        "cached_tokens": cached,
        "reasoning_tokens": 1,
    }


def build_two_run_state(state: State | None = None) -> State:
    """A session with parallel tools finishing out of order, a compaction and an interrupted run."""
    state = state if state is not None else State()
    state.append("session_start", session_id="s-1", model="gpt-5-mini", profile="developer")
    state.append("run_start", run=1, prompt="first")
    state.append("message", role="system", content="sys")
    state.append("message", role="user", content="first")
    state.append("model_call", model="gpt-5-mini", usage=_usage(100, 10, 40), cost_usd=0.25)
    state.append("message", role="assistant", content="", tool_calls=[_call("c1"), _call("c2")])
    state.append("tool_start", call_id="c1", tool_name="probe", arguments={})
    state.append("tool_start", call_id="c2", tool_name="probe", arguments={})
    state.append("tool_end", call_id="c2", tool_name="probe", success=True, metadata={})
    state.append("message", role="tool", tool_call_id="c2", content="two")
    state.append("tool_end", call_id="c1", tool_name="probe", success=True, metadata={})
    state.append("message", role="tool", tool_call_id="c1", content="one")
    state.append("model_call", model="gpt-5-mini", usage=_usage(200, 20), cost_usd=0.5)
    state.append("message", role="assistant", content="done")
    state.append("run_end", status="completed", usage=_usage(300, 30, 40), text="done")
    summary = {"role": "user", "content": "Summary: first run used probe twice."}
    state.append(
        "compaction",
        trigger="manual",
        summary="first run used probe twice",
        tokens_before=90,
        tokens_after=20,
        messages=[{"role": "system", "content": "sys"}, summary],
    )
    state.append("run_start", run=2, prompt="second")
    state.append("message", role="user", content="second")
    state.append("model_call", model="gpt-5-mini", usage=_usage(50, 5), cost_usd=0.125)
    state.append("message", role="assistant", content=None, tool_calls=[_call("c3", "bash")])
    pending = [{"call_id": "c3", "tool_name": "bash", "arguments": {}}]
    state.append("approval_pending", calls=pending)
    state.append("run_end", status="interrupted", usage=_usage(50, 5), text="")
    return state


def assert_same_state(loaded: State, live: State) -> None:
    for name in (
        "session_id", "messages", "usage", "status", "run_count", "model", "profile",
        "created_at", "pending_turn", "pending_results", "pending_approvals", "records",
    ):  # fmt: skip
        assert getattr(loaded, name) == getattr(live, name), name


class FileWatcher:
    """An observer that reads the trace file at every event (observers run after the sinks)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self.lines_on_disk: list[int] = []

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.lines_on_disk.append(len(self.path.read_bytes().splitlines()))


def test_every_change_is_one_versioned_record_written_as_it_happens(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    state = State()
    state.add_sink(JsonlTraceSink(path))
    watcher = FileWatcher(path)
    state.add_observer(watcher)

    build_two_run_state(state)

    count = len(state.records)
    # Each record was on disk when its observer call ran: no buffering, no close needed.
    assert watcher.lines_on_disk == list(range(1, count + 1))
    lines = path.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == state.records == watcher.events
    assert all(record["v"] == TRACE_FORMAT_VERSION for record in state.records)
    assert all(record["ts"].endswith("+00:00") for record in state.records)
    assert {r["type"] for r in state.records} >= {
        "session_start", "run_start", "message", "model_call", "tool_start", "tool_end",
        "compaction", "approval_pending", "run_end",
    }  # fmt: skip


def test_from_jsonl_rebuilds_everything_and_to_jsonl_round_trips(tmp_path: Path) -> None:
    live = build_two_run_state()
    data = live.to_jsonl()
    loaded = State.from_jsonl(data)

    assert_same_state(loaded, live)
    assert loaded.to_jsonl() == data
    assert loaded.session_id == "s-1" and loaded.run_count == 2
    assert loaded.status == "interrupted"
    # The compaction replaced the first run's messages; the tool turn waits for approval.
    assert [m["role"] for m in loaded.messages] == ["system", "user", "user"]
    assert loaded.messages[1]["content"].startswith("Summary")
    assert loaded.pending_approvals == [{"call_id": "c3", "tool_name": "bash", "arguments": {}}]
    assert loaded.unanswered_tool_calls()[0]["id"] == "c3"
    assert loaded.usage == {
        "input_tokens": 350, "output_tokens": 35, "cached_tokens": 40,
        "reasoning_tokens": 3, "cost_usd": 0.875,
    }  # fmt: skip
    assert loaded.get_user_messages() == [loaded.messages[1]["content"], "second"]
    # str input works too, and a second round trip is stable.
    assert State.from_jsonl(data.decode()).to_jsonl() == data


def test_tool_results_are_put_in_model_order_whatever_order_they_finished() -> None:
    state = build_two_run_state()
    loaded = State.from_jsonl(state.to_jsonl())
    records = State.from_records(loaded.records[:15])  # up to the end of run 1
    tool_ids = [m.get("tool_call_id") for m in records.messages if m["role"] == "tool"]
    assert tool_ids == ["c1", "c2"]


def test_a_crash_mid_run_loads_as_an_unfinished_run_with_its_finished_calls() -> None:
    full = build_two_run_state()
    # Cut after c2 finished but before c1 did.
    crashed = State.from_records(full.records[:10])
    assert crashed.status == "running" and crashed.has_unfinished_run
    assert crashed.run_count == 0
    assert [c["id"] for c in crashed.unanswered_tool_calls()] == ["c1"]
    assert crashed.pending_results["c2"]["content"] == "two"
    # The held-back turn keeps `messages` valid to send: no assistant turn without its results.
    assert [m["role"] for m in crashed.messages] == ["system", "user"]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    data = build_two_run_state().to_jsonl()
    lines = data.splitlines(keepends=True)
    last = lines[-1]
    for cut in (1, len(last) // 2, len(last) - 2):
        torn = b"".join(lines[:-1]) + last[:cut]
        loaded = State.from_jsonl(torn)
        assert loaded.records == State.from_jsonl(b"".join(lines[:-1])).records
        assert loaded.status == "running"  # the run_end was the torn record
    # A cut inside a multi-byte character is still only a torn line.
    accented = build_two_run_state()
    accented.append("message", role="user", content="héllo wörld")
    encoded = accented.to_jsonl()
    cut = encoded.rindex("ö".encode()) + 1
    assert State.from_jsonl(encoded[:cut]).records == accented.records[:-1]


def test_a_bad_line_in_the_middle_is_an_error_naming_the_line() -> None:
    lines = build_two_run_state().to_jsonl().splitlines(keepends=True)
    broken = b"".join([*lines[:3], b'{"v":1,"type":"mess\n', *lines[3:]])
    with pytest.raises(TraceError, match="line 4"):
        State.from_jsonl(broken)
    with pytest.raises(TraceError, match="line 2 is not a JSON object"):
        decode_records(lines[0] + b"[1, 2]\n" + lines[1])


def test_an_existing_trace_is_only_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    original = build_two_run_state().to_jsonl()
    path.write_bytes(original)
    state = State.from_jsonl(original)
    sink = JsonlTraceSink(path)
    state.add_sink(sink)
    state.append("run_start", run=3, prompt="third")
    sink.close()
    data = path.read_bytes()
    assert data.startswith(original)
    assert State.from_jsonl(data).records == state.records


def _append_timed(state: State, count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        state.append("message", role="user", content=f"prompt {index} " + "x" * 200)
    return time.perf_counter() - started


def test_appending_costs_the_same_at_100k_records_as_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    state = State(session_id="big")
    sink = JsonlTraceSink(path)
    state.add_sink(sink)
    first = _append_timed(state, 1_000)
    _append_timed(state, 98_000)
    last = _append_timed(state, 1_000)
    sink.close()
    assert len(path.read_bytes().splitlines()) == 100_000
    # Rewriting (or re-reading) the file per event would make the last thousand ~100x slower.
    assert last < max(4 * first, 0.05), f"first 1,000: {first:.3f}s, last 1,000: {last:.3f}s"


def realistic_trace(records: int) -> bytes:
    """About ``records`` records shaped like a real tool-using session."""
    state = State()
    state.append("session_start", session_id="big", model="gpt-5-mini", profile="developer")
    state.append("run_start", run=1, prompt="go")
    state.append("message", role="system", content="You are an agent. " * 20)
    state.append("message", role="user", content="go")
    turn = 0
    while len(state.records) < records - 1:
        turn += 1
        call_id = f"call_{turn}"
        args = json.dumps({"command": f"grep -rn pattern src/module_{turn}.py"})
        state.append("model_call", model="gpt-5-mini", usage=_usage(1000 + turn, 50), cost_usd=1e-4)
        state.append(
            "message",
            role="assistant",
            content="Looking.",
            tool_calls=[_call(call_id, "bash", args)],
        )
        state.append("tool_start", call_id=call_id, tool_name="bash", arguments=json.loads(args))
        state.append(
            "tool_end", call_id=call_id, tool_name="bash", success=True, metadata={"exit_code": 0}
        )
        state.append(
            "message", role="tool", tool_call_id=call_id, content="src/x.py:1: match\n" * 12
        )
    state.append("run_end", status="completed", usage=_usage(1, 1), text="done")
    return state.to_jsonl()


def test_a_100k_record_trace_loads_well_under_a_second() -> None:
    data = realistic_trace(100_000)
    assert len(data.splitlines()) >= 100_000
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        state = State.from_jsonl(data)
        best = min(best, time.perf_counter() - started)
    assert state.status == "completed" and len(state.messages) >= 40_000
    assert best < 0.8, f"loading 100k records took {best:.2f}s"
