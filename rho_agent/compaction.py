"""Context compaction: replace older history with a model-written summary.

The summary takes the place of everything between the system prompt and the most recent
exchange; a cut falls only at a user message, so no tool result loses its tool call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rho_agent.errors import ContextWindowExceeded
from rho_agent.model._assemble import estimate_prompt_tokens
from rho_agent.model.base import ModelClient, ModelRequest, ModelTurn

SUMMARY_PREFIX = "Summary of the conversation so far (older messages were compacted):\n\n"

SUMMARY_INSTRUCTIONS = """\
You compress an agent's working history. Write a concise summary that lets the agent continue the
task without the original messages: the user's goals and constraints, what was done (tools used,
files touched, commands run and their key results), what was found, decisions made, and what is
still open. Keep exact names, paths, numbers and error messages. Do not invent anything."""

AUTO_COMPACT_FRACTION = 0.8


def count_tokens(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """The context's size in tokens, tool definitions included (they are sent with every
    request), estimated the same way before and after compaction."""
    return estimate_prompt_tokens(messages, tools)


def check_fits(
    needed: int,
    messages: list[dict[str, Any]],
    *,
    model: str,
    window: int,
    auto_compact: bool,
) -> None:
    """Raise ContextWindowExceeded, saying by how much and what to do, if the request is too big.

    ``needed`` is the request's ``count_tokens``, taken by the caller once per request (it
    encodes the whole history); the split into history and tool definitions is worked out
    only for the error. Called after auto compaction had its chance, so an error here means
    compacting did not help.
    """
    if needed <= window:
        return
    history = count_tokens(messages, [])
    tried = "even after compaction" if auto_compact else "and auto compaction is off"
    raise ContextWindowExceeded(
        f"the next request to {model} needs about {needed} tokens (history {history}, tool "
        f"definitions {needed - history}) but its context window is {window} tokens, {tried}. "
        "Fix: shorten the prompt or the tool outputs, start a new session, or use a model with a "
        "larger window; for a self-hosted model with a larger window, set it with "
        "extras.context_window (rho-agent run --context-window N)",
        needed=needed,
        window=window,
    )


@dataclass
class CompactionPlan:
    head: list[dict[str, Any]]
    """Kept as is at the start (the system prompt)."""
    older: list[dict[str, Any]]
    """Replaced by the summary."""
    recent: list[dict[str, Any]]
    """Kept as is at the end (the most recent exchange and the newest prompt)."""


def plan(messages: list[dict[str, Any]], keep_exchanges: int = 2) -> CompactionPlan | None:
    """Split the history; None when there is nothing older than the recent exchanges."""
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    body = messages[len(head) :]
    user_indexes = [i for i, message in enumerate(body) if message.get("role") == "user"]
    if len(user_indexes) < keep_exchanges or user_indexes[-keep_exchanges] == 0:
        return None
    cut = user_indexes[-keep_exchanges]
    return CompactionPlan(head=head, older=body[:cut], recent=body[cut:])


def compacted_messages(compaction: CompactionPlan, summary: str) -> list[dict[str, Any]]:
    summary_message = {"role": "user", "content": SUMMARY_PREFIX + summary}
    return [*compaction.head, summary_message, *compaction.recent]


async def summarise(client: ModelClient, model: str, older: list[dict[str, Any]]) -> ModelTurn:
    """Ask the model for a summary of ``older`` (no tools offered)."""
    transcript = "\n\n".join(_render(message) for message in older)
    request = ModelRequest(
        model=model,
        messages=[
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {"role": "user", "content": "Summarise this history:\n\n" + transcript},
        ],
    )
    return await client.stream(request)


def _render(message: dict[str, Any]) -> str:
    role = message.get("role", "?")
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    calls = message.get("tool_calls") or []
    rendered_calls = "".join(
        f"\n[calls {call['function']['name']}({call['function']['arguments']})]" for call in calls
    )
    return f"[{role}] {content}{rendered_calls}"
