"""Reduce planning: groups that fit, in order, every item once; failures stay visible."""

from __future__ import annotations

import pytest

from dispatch import ReduceError
from dispatch.reduce_plan import (
    ReduceItem,
    group_budget,
    item_of,
    plan_groups,
    prompt_overhead,
    reducer_prompt,
)
from rho_agent.events import RunError, RunResult


def test_everything_that_fits_goes_to_one_group() -> None:
    assert plan_groups([10, 20, 30], 60) == [range(0, 3)]


def test_groups_are_consecutive_fit_the_budget_and_cover_every_item() -> None:
    sizes = [7, 3, 9, 1, 1, 8, 2, 6, 5, 4]
    groups = plan_groups(sizes, 12)
    assert [index for group in groups for index in group] == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in group) <= 12 for group in groups)
    assert groups == [range(0, 2), range(2, 5), range(5, 7), range(7, 9), range(9, 10)]


def test_an_item_bigger_than_a_reducer_is_named() -> None:
    with pytest.raises(ReduceError, match="result j-big alone is about 50 tokens"):
        plan_groups([5, 50], 20, ["j-small", "j-big"])


def test_no_room_for_any_result_says_how_to_fix_it() -> None:
    with pytest.raises(ReduceError, match=r"extras\.context_window"):
        group_budget(window=1000, overhead=900)
    assert group_budget(window=1000, overhead=100) == 650


def test_failed_results_are_listed_as_failed_with_their_error() -> None:
    ok = item_of("j-1", RunResult(text="", output={"severity": 2}))
    failed = item_of(
        "j-2",
        RunResult(text="", status="invalid_output", error=RunError("invalid_output", "bad")),
    )
    prompt = reducer_prompt("Summarise.", [ok, failed], (1, 1))
    assert '### j-1 (completed)\n{"severity": 2}' in prompt
    assert "### j-2 (FAILED: invalid_output)\nerror: invalid_output: bad" in prompt
    assert "1 of them FAILED" in prompt
    assert "part 1 of" not in prompt


def test_intermediate_reducers_are_told_their_part() -> None:
    prompt = reducer_prompt("Summarise.", [ReduceItem("j-1", "completed", "x")], (2, 3))
    assert "This is part 2 of 3" in prompt


def test_sizes_add_up_to_the_whole_request() -> None:
    """The plan's estimate (overhead + items) is not below the request's real estimate."""
    from rho_agent import compaction

    items = [ReduceItem(f"j-{n}", "completed", '{"a": "' + "x" * (n * 7) + '"}') for n in range(30)]
    tools = [{"type": "function", "function": {"name": "t", "parameters": {}}}]
    planned = prompt_overhead("Summarise.", "system", tools) + sum(i.tokens() for i in items)
    messages = [
        {"role": "system", "content": "system"},
        {"role": "user", "content": reducer_prompt("Summarise.", items, (1, 2))},
    ]
    assert planned >= compaction.count_tokens(messages, tools)
