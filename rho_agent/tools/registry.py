"""ToolRegistry: the tools one agent offers the model, by name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from rho_agent.errors import ConfigError
from rho_agent.tools.base import ToolHandler


class ToolRegistry:
    """An ordered name → handler map; ``register`` adds or replaces a tool."""

    def __init__(self, handlers: list[ToolHandler] | None = None) -> None:
        self._handlers: dict[str, ToolHandler] = {}
        for handler in handlers or []:
            self.register(handler)

    def register(self, handler: ToolHandler) -> None:
        """Make ``handler`` available to the model (replacing a tool of the same name)."""
        name = getattr(handler, "name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tool handler {handler!r} has no 'name'; set a non-empty str name")
        if not callable(getattr(handler, "handle", None)):
            raise ConfigError(f"tool handler {name!r} has no async 'handle(invocation)' method")
        _check_schema_is_json(name, handler)
        self._handlers[name] = handler

    def unregister(self, name: str) -> None:
        """Remove the tool called ``name`` (no error if absent)."""
        self._handlers.pop(name, None)

    def get(self, name: str) -> ToolHandler | None:
        return self._handlers.get(name)

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list for every registered handler, in registration order."""
        return [handler.schema() for handler in self._handlers.values()]

    @property
    def names(self) -> list[str]:
        return list(self._handlers)

    def copy(self) -> ToolRegistry:
        return ToolRegistry(list(self._handlers.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[ToolHandler]:
        return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        return len(self._handlers)


def _check_schema_is_json(name: str, handler: ToolHandler) -> None:
    """Refuse a schema that JSON cannot carry (NaN, infinity, an object that is not data): the
    request body's encoder would send NaN as null, changing the schema the model sees."""
    try:
        json.dumps(handler.schema(), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"tool {name!r} has a schema that is not JSON data ({exc}); "
            "use only strings, numbers, booleans, null, lists and dicts in its parameters"
        ) from None
