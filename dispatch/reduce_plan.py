"""Planning a reduce: which results go to which reducer, so that each reducer's request fits.

A reducer's request is its system prompt, the tool definitions, the instruction and the results it
reduces. When all the results fit one reducer's context window (less a reserve for its answer) one
reducer gets them all; otherwise they are split into consecutive groups that each fit, and the
groups' answers are reduced again, level by level, until one final reducer remains. Pure functions
of sizes and texts; ``dispatch.reduce`` runs the plan as fleet jobs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from dispatch.errors import ReduceError
from rho_agent import compaction
from rho_agent.events import RunResult, output_data

ANSWER_RESERVE: Final = 0.25
"""The share of a reducer's window kept free for its answer (and a corrective turn)."""


@dataclass(frozen=True)
class ReduceItem:
    """One result a reducer reads: the job it came from, whether it succeeded, its content."""

    source: str
    status: str
    body: str

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def render(self) -> str:
        """The item as the reducer reads it; a failure is labelled, with its error."""
        if self.ok:
            return f"### {self.source} (completed)\n{self.body}"
        return f"### {self.source} (FAILED: {self.status})\n{self.body}"

    def tokens(self) -> int:
        """Estimated tokens of the rendered item inside a request (JSON escapes included; the
        message wrapper counted too, so the sum of items errs on the large side)."""
        return compaction.count_tokens([{"content": self.render() + "\n\n"}], [])


def item_of(source: str, result: RunResult) -> ReduceItem:
    """A reduce item from a job's result: its typed output, else its text, else its error."""
    if result.status == "completed":
        output = output_data(result.output)
        body = json.dumps(output, ensure_ascii=False) if output is not None else result.text
        return ReduceItem(source, "completed", body)
    error = str(result.error) if result.error is not None else "no error recorded"
    return ReduceItem(source, result.status, f"error: {error}")


def group_budget(window: int, overhead: int, reserve: float = ANSWER_RESERVE) -> int:
    """Tokens left for the items of one reducer: the window, less the answer's reserve and the
    fixed part of the request (system prompt, tools, instruction)."""
    budget = int(window * (1 - reserve)) - overhead
    if budget <= 0:
        raise ReduceError(
            f"the reducer's context window ({window} tokens) leaves no room for any result: its "
            f"system prompt, tool definitions and instruction take about {overhead} tokens and "
            f"{reserve:.0%} is kept for the answer. Fix: use a model with a larger window "
            "(extras.context_window), a shorter reduce prompt, or a profile with fewer tools"
        )
    return budget


def plan_groups(sizes: Sequence[int], budget: int, sources: Sequence[str] = ()) -> list[range]:
    """Consecutive groups of item indexes whose sizes add up to at most ``budget`` each.

    Greedy in order, so results keep the map's order and every item is in exactly one group.
    An item larger than the budget alone raises ReduceError naming it (``sources`` gives names).
    """
    groups: list[range] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if size > budget:
            name = sources[index] if index < len(sources) else f"#{index}"
            raise ReduceError(
                f"result {name} alone is about {size} tokens, more than a reducer can take "
                f"({budget} tokens once its prompt, tools and answer are counted). Fix: ask the "
                "map for shorter answers (an output_schema helps), or reduce with a model with "
                "a larger window (extras.context_window)"
            )
        if used + size > budget and index > start:
            groups.append(range(start, index))
            start, used = index, 0
        used += size
    if start < len(sizes) or not groups:
        groups.append(range(start, len(sizes)))
    return groups


def reducer_prompt(instruction: str, items: Sequence[ReduceItem], part: tuple[int, int]) -> str:
    """The prompt of one reducer: the instruction, how to read the results, the results.

    ``part`` is (k, n): reducer k of n at its level; n == 1 is the final reducer.
    """
    failed = sum(not item.ok for item in items)
    lines = [
        instruction.strip(),
        "",
        f"Below are {len(items)} results, each under a line `### <id> (<status>)`.",
    ]
    if failed:
        lines.append(
            f"{failed} of them FAILED and have no answer: report them as failed (with their id "
            "and error); do not guess what they would have said."
        )
    index, total = part
    if total > 1:
        lines.append(
            f"This is part {index} of {total}: your answer is combined with the answers for the "
            "other parts, so keep every detail the final answer needs, with the ids it comes from."
        )
    lines.append("")
    return "\n".join(lines) + "\n" + "\n\n".join(item.render() for item in items)


def prompt_overhead(
    instruction: str, system_prompt: str, tools: list[dict[str, Any]], *, parts: int = 2
) -> int:
    """Estimated tokens of a reducer's request without its items (system, tools, instruction)."""
    header = reducer_prompt(instruction, [ReduceItem("x", "error", "")], (1, parts))
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": header}]
    return compaction.count_tokens(messages, tools)
