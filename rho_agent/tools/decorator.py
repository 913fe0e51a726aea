"""``@tool``: turn a typed Python function into a ``ToolHandler``.

The JSON schema comes from the signature (type hints; parameters without a default are required),
the description from the docstring, and each parameter's description from its ``Args:`` section::

    @tool
    def word_count(text: str, unique: bool = False) -> str:
        \"\"\"Count the words in a text.

        Args:
            text: The text to count.
            unique: Count each distinct word once.
        \"\"\"
        words = text.split()
        return str(len(set(words)) if unique else len(words))

    agent.registry.register(word_count)

The function gets the arguments as keyword arguments, plus the ``ToolInvocation`` if it has a
parameter annotated with that type (to reach the backend or the session id). Sync functions run in
a worker thread. Return a ``str`` (or a ``ToolOutput``; anything else is sent as JSON).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import typing
from collections.abc import Callable
from typing import Any, overload

from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, create_model

from rho_agent.errors import ConfigError
from rho_agent.tools._schema import parse_arguments, schema_of
from rho_agent.tools.base import ToolHandler, ToolInvocation, ToolOutput

_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class FunctionTool(ToolHandler):
    """A ``ToolHandler`` that calls a Python function; made by ``@tool``.

    Calling the object calls the function directly, so decorated functions stay testable.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
    ) -> None:
        if not callable(func):
            raise ConfigError(f"@tool needs a function, got {type(func).__name__}")
        self._func = func
        self.name = name or str(getattr(func, "__name__", ""))
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        self.description = description or summary
        if not self.description:
            raise ConfigError(
                f"tool {self.name!r} has no description: give {_qualname(func)} a docstring or "
                "pass @tool(description=...); the model reads it to decide when to call the tool"
            )
        self.requires_approval = requires_approval
        self._model, self._fields, self._invocation_arg = _arguments_model(func, arg_docs)
        self.parameters = schema_of(self._model)

    def __repr__(self) -> str:
        return f"FunctionTool({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)

    async def handle(self, invocation: ToolInvocation) -> ToolOutput:
        values = parse_arguments(self._model, invocation.arguments, self.name)
        kwargs = {param: getattr(values, field) for field, param in self._fields.items()}
        if self._invocation_arg is not None:
            kwargs[self._invocation_arg] = invocation
        if inspect.iscoroutinefunction(self._func):
            result = await self._func(**kwargs)
        else:
            result = await asyncio.to_thread(functools.partial(self._func, **kwargs))
            if inspect.isawaitable(result):
                result = await result
        return _to_output(result)


@overload
def tool(func: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, requires_approval: bool = False
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a ``ToolHandler`` from a function: ``@tool`` or ``@tool(name=..., ...)``."""

    def wrap(target: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            target, name=name, description=description, requires_approval=requires_approval
        )

    return wrap(func) if func is not None else wrap


def _arguments_model(
    func: Callable[..., Any], arg_docs: dict[str, str]
) -> tuple[type[BaseModel], dict[str, str], str | None]:
    """A pydantic model of the function's parameters, its field -> parameter map, and the name of
    the parameter that receives the ``ToolInvocation`` (if any)."""
    try:
        hints = typing.get_type_hints(func)
        signature = inspect.signature(func)
    except (NameError, TypeError, ValueError) as exc:
        raise ConfigError(f"@tool cannot read the signature of {_qualname(func)}: {exc}") from None
    definitions: dict[str, Any] = {}
    fields: dict[str, str] = {}
    invocation_arg = None
    for index, param in enumerate(signature.parameters.values()):
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ConfigError(
                f"@tool: parameter {param.name!r} of {_qualname(func)} must be an ordinary "
                "named parameter (no *args, **kwargs or positional-only parameters)"
            )
        annotation = hints.get(param.name, Any)
        if annotation is ToolInvocation:
            invocation_arg = param.name
            continue
        default = ... if param.default is param.empty else param.default
        field = f"arg{index}"  # aliases keep any parameter name clear of BaseModel's attributes
        definitions[field] = (
            annotation,
            Field(default, alias=param.name, description=arg_docs.get(param.name)),
        )
        fields[field] = param.name
    try:
        model = create_model(
            f"{_qualname(func)}_arguments",
            __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=False),
            **definitions,
        )
        schema_of(model)
    except (PydanticUserError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"@tool cannot build a JSON schema for {_qualname(func)}: {exc}; use JSON-like "
            "types (str, int, float, bool, list, dict, Literal, Optional, pydantic models)"
        ) from None
    return model, fields, invocation_arg


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and the ``Args:`` entries."""
    summary: list[str] = []
    arg_docs: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        header = _SECTION.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if header:
            section, current = header.group(1), None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters") and line.strip():
            entry = _ARG_LINE.match(line.strip())
            if entry and _indent(line) <= 4:
                current = entry.group(1).lstrip("*")
                arg_docs[current] = entry.group(2).strip()
            elif current is not None:
                arg_docs[current] = f"{arg_docs[current]} {line.strip()}".strip()
    return "\n".join(summary).strip(), arg_docs


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _qualname(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func)))


def _to_output(result: Any) -> ToolOutput:
    if isinstance(result, ToolOutput):
        return result
    if result is None:
        return ToolOutput("")
    if isinstance(result, str):
        return ToolOutput(result)
    if isinstance(result, BaseModel):
        return ToolOutput(result.model_dump_json())
    return ToolOutput(json.dumps(result, ensure_ascii=False, default=str))
