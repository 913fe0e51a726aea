"""The ``fan_out`` tool: a running agent splits its task into sub-jobs and reads their answers.

No profile has it unless the profile grants it (``grants: [fan_out]``). The children are
ordinary jobs run by the same job engine as their parent (``SubJobs``, see
``rho_agent.tools.sub_jobs``), so the fleet's limits, fencing and cancellation hold for them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from rho_agent.errors import ToolError
from rho_agent.tools._schema import parse_arguments
from rho_agent.tools.base import ToolInvocation, ToolOutput
from rho_agent.tools.builtin._common import Arguments, BuiltinTool
from rho_agent.tools.sub_jobs import SubJobRequest

ANSWERS_LIMIT = 40_000
"""Characters of the children's text answers the parent reads in all, shared equally (at least
``ANSWER_MIN`` each; the rest of an answer is cut and marked), so the result fits its context."""
ANSWER_MIN = 400

_DESCRIPTION = """\
Split a task into independent sub-tasks that run as separate agents at the same time, and get \
all their answers back as one JSON result.
- Each prompt becomes one sub-agent with your configuration and tools; it does not see your \
conversation, so each prompt must say everything the sub-agent needs.
- With `output_schema` (a JSON schema) every sub-agent answers with JSON matching it, and you \
get the parsed `output` of each; otherwise its `text`.
- `profile` may ask for a more restricted permission profile for the sub-agents (e.g. \
`readonly`), never a more permissive one than yours.
- The result lists each sub-agent by `index` (the prompt's position) with its `status` \
(`completed`, `error`, `cancelled`, ...) and its answer or `error`."""


class FanOutArguments(Arguments):
    prompts: list[str] = Field(min_length=1, description="One self-contained prompt per sub-agent.")
    output_schema: dict[str, Any] | None = Field(
        default=None, description="Optional JSON schema every sub-agent's answer must match."
    )
    profile: str | None = Field(
        default=None,
        description="Optional built-in profile for the sub-agents (readonly, developer, "
        "unrestricted); no more permissive than yours. Default: yours.",
    )


class FanOutTool(BuiltinTool):
    """Runs its prompts as sub-jobs through the invocation's ``sub_jobs`` and awaits them."""

    name = "fan_out"
    description = _DESCRIPTION
    arguments = FanOutArguments

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        args = parse_arguments(FanOutArguments, invocation.arguments, self.name)
        if any(not prompt.strip() for prompt in args.prompts):
            raise ToolError("every prompt must be non-empty text")
        if invocation.sub_jobs is None:
            raise ToolError(
                "fan_out needs a job engine to run sub-agents: run this agent as a job through "
                "dispatch.Dispatcher (embedded or fleet), not as a bare Session"
            )
        request = SubJobRequest(
            call_id=invocation.call_id,
            prompts=list(args.prompts),
            output_schema=args.output_schema,
            profile=args.profile,
        )
        results = await invocation.sub_jobs.run(request)
        completed = sum(result.status == "completed" for result in results)
        limit = max(ANSWER_MIN, ANSWERS_LIMIT // max(1, len(results)))
        summary = {
            "completed": completed,
            "failed": len(results) - completed,
            "children": [result.to_dict(limit) for result in results],
        }
        content = json.dumps(summary, ensure_ascii=False, separators=(",", ":"))
        return ToolOutput(content, metadata={"children": len(results), "completed": completed})
