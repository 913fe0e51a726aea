"""One pattern for every sync/async twin of the public API (``Dispatcher``, ``Job``,
``Reduction``): one method holds the body and the docstring, and its twin is one line that
derives from it, so a twin cannot drift and both keep one signature.

``name = blocking(aname)``: the async method is the definition; the sync twin runs it on the
dispatcher's private loop and waits (reads, waits, decisions: work that lives on the loop).
``aname = threaded(name)``: the sync method is the definition, because its blocking work belongs
on the caller's thread (sending to the fleet); the async twin runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from dispatch._client.core import _Core

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class OnCore(Protocol):
    """Anything that works on a dispatcher's core (and so on its private loop)."""

    @property
    def _core(self) -> _Core: ...


H = TypeVar("H", bound=OnCore)


def blocking(
    amethod: Callable[Concatenate[H, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[H, P], R]:
    """The sync twin of ``amethod``: callable from any thread but the dispatcher's loop."""

    @functools.wraps(amethod)
    def method(self: H, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._core.loop.call(amethod(self, *args, **kwargs))

    return _named(method, amethod.__name__.removeprefix("a"))


def threaded(
    method: Callable[Concatenate[H, P], R],
) -> Callable[Concatenate[H, P], Coroutine[Any, Any, R]]:
    """The async twin of ``method``: awaitable from any event loop, the dispatcher's included."""

    @functools.wraps(method)
    async def amethod(self: H, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(method, self, *args, **kwargs)

    return _named(amethod, f"a{method.__name__}")


def _named(twin: F, name: str) -> F:
    """``twin`` under its own name (``functools.wraps`` gave it its source's)."""
    twin.__qualname__ = twin.__qualname__.removesuffix(twin.__name__) + name
    twin.__name__ = name
    return twin
