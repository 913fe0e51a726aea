"""Account for a whole fan-out after a chaos scenario: the counts of ``counts.ChaosCounts`` for
every job, the side-effecting calls from the ledger, and a history check for each job."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dispatch import Dispatcher, Job
from dispatch.keys import Keys
from rho_agent import RunResult
from tests.chaos.counts import ChaosCounts, count_job
from tests.chaos.ledger import Ledger, read_ledger


def account(
    client: Any,
    keys: Keys,
    jobs: Sequence[Job],
    results: Sequence[RunResult | None],
    ledger: Path,
) -> tuple[ChaosCounts, Ledger]:
    """Count every job (an observer reads each job's events from the start, after the fact, as
    a late ``for event in job.events()`` would) and the ledger's re-run calls."""
    counts = ChaosCounts()
    for job, result in zip(jobs, results, strict=True):
        seen = list(job.events())
        count_job(counts, client, keys, job.id, result, seen)
        if result is None or result.status != "completed":
            info = job.info()
            print(
                f"[chaos] job {job.id} ended {info.status} (attempt {info.attempt}, worker "
                f"{info.worker}): {info.error}; its events: {[e.type for e in seen]}"
            )
    book = read_ledger(ledger)
    counts.reexecuted_side_effects = book.rerun_calls
    return counts, book


def broken_histories(dispatcher: Dispatcher, jobs: Sequence[Job], turns: int) -> list[str]:
    """Jobs whose history is not one clean run: a stale attempt's ``cancelled``, more than one
    run end, or a tool call answered twice or never."""
    broken = []
    for job in jobs:
        state = dispatcher.job(job.id).state()
        types = [record["type"] for record in state.records]
        answered = [m["tool_call_id"] for m in state.messages if m["role"] == "tool"]
        asked = [c["id"] for m in state.messages for c in m.get("tool_calls") or []]
        clean = (
            "cancelled" not in types
            and types.count("run_end") == 1
            and len(answered) == len(set(answered)) == turns
            and set(answered) == set(asked)
        )
        if not clean:
            broken.append(f"{job.id}: records {types}, answered {answered}")
    return broken


def print_ledger(scenario: str, book: Ledger) -> None:
    print(
        f"[chaos] {scenario}: ledger runs={book.runs} steps={len(book.steps)} "
        f"rerun_calls={book.rerun_calls} redone_steps={book.redone_steps}"
    )
