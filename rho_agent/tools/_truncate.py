"""Cutting long tool output down to what fits in a model's context.

The middle goes, the head and tail stay: the start of an output says what ran, the end says how it
finished (errors, exit summaries), and a marker says how much was left out.
"""

from __future__ import annotations

from rho_agent.redact import redact

MAX_OUTPUT_CHARS = 30_000
"""The most characters any built-in tool returns to the model."""

_SNAP = 0.2
"""How far (as a share of the kept part) a cut may move to land on a line break."""


def truncate_middle(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker.

    Redacted first when cut: a secret the cut splits would leave a piece the output's later
    redaction no longer recognises.
    """
    if len(text) <= limit:
        return text
    text = redact(text)
    if len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    head = text[:half]
    tail = text[-half:]
    newline = head.rfind("\n")
    if newline >= half * (1 - _SNAP):
        head = head[: newline + 1]
    newline = tail.find("\n")
    if 0 <= newline <= half * _SNAP:
        tail = tail[newline + 1 :]
    omitted = len(text) - len(head) - len(tail)
    return f"{head}\n[... {omitted:,} characters omitted ...]\n{tail}"
