"""Retrying a broken stream: the backoff, and text the caller must not see twice.

A stream can break after text already reached ``on_text``. The retried answer is streamed from its
start again, so ``ShownText`` passes on only what goes beyond the text already shown. If the retry
says something else (a sampling model), the rest of it is not streamed: the caller already holds
text that cannot be taken back, and the finished turn carries the answer in full.
"""

from __future__ import annotations

import random

from rho_agent.model.base import TextCallback

# The backoff of the openai package for a refused request (429, 5xx) without Retry-After, so a
# broken stream waits as long as a refused one: 0.5 s doubling up to 8 s, minus up to 25% jitter.
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0


def retry_delay(retries_done: int) -> float:
    """Seconds to wait before retry number ``retries_done + 1``."""
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


class ShownText:
    """The text passed to the caller's ``on_text`` across every attempt of one model call."""

    def __init__(self, on_text: TextCallback) -> None:
        self._on_text = on_text
        self._parts: list[str] = []

    def attempt(self) -> AttemptText:
        """The ``on_text`` for the next attempt."""
        return AttemptText(self, "".join(self._parts))

    def show(self, text: str) -> None:
        self._parts.append(text)
        self._on_text(text)


class AttemptText:
    """Forwards one attempt's text deltas, skipping what an earlier attempt already showed."""

    def __init__(self, shown: ShownText, already_shown: str) -> None:
        self._shown = shown
        self._already = already_shown
        self._position = 0
        self._diverged = False

    def __call__(self, delta: str) -> None:
        start, self._position = self._position, self._position + len(delta)
        if self._diverged:
            return
        repeated = max(0, min(len(self._already) - start, len(delta)))
        if delta[:repeated] != self._already[start : start + repeated]:
            self._diverged = True
            return
        if fresh := delta[repeated:]:
            self._shown.show(fresh)
