"""Tool arguments as pydantic models: the JSON schema the model sees and the validation it gets.

Built-in tools and ``@tool`` functions share this, so every tool reports bad arguments the same way:
a ``ToolError`` naming each bad argument, which the model reads and can correct.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from rho_agent.errors import ToolError

ArgsT = TypeVar("ArgsT", bound=BaseModel)


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of ``model`` (aliases as names) without pydantic's ``title`` noise.

    Building a schema costs milliseconds, and every Agent builds its tools': it is made once per
    model class and each caller gets its own copy.
    """
    return copy.deepcopy(_cached_schema(model))


@functools.cache
def _cached_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    cleaned = _drop_titles(schema)
    assert isinstance(cleaned, dict)
    cleaned.setdefault("properties", {})
    return cleaned


def _drop_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    cleaned: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            cleaned[key] = {name: _drop_titles(sub) for name, sub in value.items()}
        else:
            cleaned[key] = _drop_titles(value)
    return cleaned


def parse_arguments(model: type[ArgsT], arguments: dict[str, Any], tool_name: str) -> ArgsT:
    """Validate the model's arguments; raise ``ToolError`` naming every bad one."""
    try:
        return model.model_validate(arguments)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        raise ToolError(
            f"invalid arguments for tool {tool_name!r}: " + "; ".join(problems)
        ) from None


def _describe(error: Any) -> str:
    name = ".".join(str(part) for part in error.get("loc", ())) or "arguments"
    kind = error.get("type")
    if kind == "missing":
        return f"missing required argument {name!r}"
    if kind == "extra_forbidden":
        return f"unexpected argument {name!r}"
    return f"argument {name!r}: {error.get('msg', 'invalid value')}"
