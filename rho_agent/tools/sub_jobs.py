"""The seam between the ``fan_out`` tool and whoever runs its sub-jobs.

The SDK defines what a fan-out asks for (``SubJobRequest``) and what comes back
(``SubJobResult``); the job engine in ``dispatch`` implements ``SubJobs`` on its bus (a Redis
fleet or the embedded in-process host). A bare ``Session`` has none, so the tool says how to get
one instead of running anything. The SDK never imports the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SubJobRequest:
    """One ``fan_out`` call: its prompts, and what every child answers and runs with.

    ``call_id`` is the tool call's id: with the parent job's id and a prompt's index it names
    the child, so running the same call again (a resumed parent) finds the same children.
    ``profile`` names a built-in profile for the children (``None``: the parent's own).
    """

    call_id: str
    prompts: list[str]
    output_schema: dict[str, Any] | None = None
    profile: str | None = None


@dataclass(frozen=True)
class SubJobResult:
    """How one child ended: its status and answer (``output`` when typed), or its error."""

    index: int
    job_id: str
    status: str
    text: str = ""
    output: Any = None
    error: str | None = None

    def to_dict(self, text_limit: int) -> dict[str, Any]:
        """Compact data for the tool result: no empty fields, text cut to ``text_limit``."""
        data: dict[str, Any] = {"index": self.index, "job_id": self.job_id, "status": self.status}
        if self.output is not None:
            data["output"] = self.output
        elif self.text:
            cut = self.text[:text_limit]
            data["text"] = cut if cut == self.text else cut + " [cut: answer too long]"
        if self.error:
            data["error"] = self.error[:500]
        return data


class SubJobs(Protocol):
    """Runs a fan-out's children as jobs and waits for them (without holding a thread)."""

    async def run(self, request: SubJobRequest) -> list[SubJobResult]:
        """Submit (or re-attach to) the children and return their results in prompt order.

        Raise ``ToolError`` when the request is refused (depth, breadth, profile), saying why
        and what to ask for instead.
        """
        ...
