"""``@tool``: typed functions become ToolHandlers with a schema, validation and a description."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import ConfigError, ToolError
from rho_agent.permissions.profile import load_profile
from rho_agent.tools import (
    FunctionTool,
    ToolHandler,
    ToolInvocation,
    ToolOutput,
    ToolRegistry,
    tool,
)


def invoke(handler: ToolHandler, backend: LocalBackend | None = None, **arguments: Any) -> Any:
    return handler.handle(
        ToolInvocation(
            call_id="call-1",
            tool_name=handler.name,
            arguments=arguments,
            backend=backend or LocalBackend("."),
            profile=load_profile("readonly"),
            session_id="session-1",
        )
    )


@tool
def search_logs(
    query: str,
    limit: int = 10,
    level: Literal["info", "error"] = "error",
    services: list[str] | None = None,
    ratio: float = 0.5,
    exact: bool = False,
) -> str:
    """Search the application logs.

    Use it before guessing at causes.

    Args:
        query: Text to look for.
        limit: How many lines
            to return at most.
        level: Lowest level to include.
        services: Only these services.

    Returns:
        The matching lines.
    """
    return f"{query}|{limit}|{level}|{services}|{ratio}|{exact}"


def test_bare_decorator_builds_a_handler() -> None:
    assert isinstance(search_logs, FunctionTool)
    assert isinstance(search_logs, ToolHandler)
    assert search_logs.name == "search_logs"
    assert search_logs.description == (
        "Search the application logs.\n\nUse it before guessing at causes."
    )
    assert search_logs.requires_approval is False


def test_schema_comes_from_the_signature() -> None:
    schema = search_logs.parameters
    assert schema["type"] == "object"
    assert schema["required"] == ["query"]
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["query"] == {"type": "string", "description": "Text to look for."}
    assert properties["limit"] == {
        "type": "integer",
        "default": 10,
        "description": "How many lines to return at most.",
    }
    assert properties["level"]["enum"] == ["info", "error"]
    assert properties["services"]["anyOf"] == [
        {"type": "array", "items": {"type": "string"}},
        {"type": "null"},
    ]
    assert properties["ratio"]["type"] == "number"
    assert properties["exact"]["type"] == "boolean"
    assert "title" not in str(schema)
    assert search_logs.schema()["function"]["name"] == "search_logs"


async def test_arguments_arrive_as_keywords_with_defaults() -> None:
    output = await invoke(search_logs, query="timeout", services=["api"])
    assert output == ToolOutput("timeout|10|error|['api']|0.5|False")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "missing required argument 'query'"),
        ({"query": "x", "limit": "many"}, "argument 'limit'"),
        ({"query": "x", "level": "debug"}, "argument 'level'"),
        ({"query": 5}, "argument 'query'"),
        ({"query": "x", "services": "api"}, "argument 'services'"),
        ({"query": "x", "verbose": True}, "unexpected argument 'verbose'"),
    ],
)
async def test_invalid_arguments_name_the_argument(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=message) as raised:
        await invoke(search_logs, **arguments)
    assert "search_logs" in str(raised.value)


async def test_options_and_async_functions() -> None:
    @tool(name="deploy", description="Deploy a service.", requires_approval=True)
    async def _deploy(service: str) -> str:
        return f"deployed {service}"

    assert (_deploy.name, _deploy.description, _deploy.requires_approval) == (
        "deploy",
        "Deploy a service.",
        True,
    )
    assert (await invoke(_deploy, service="api")).content == "deployed api"


async def test_sync_functions_run_in_a_worker_thread() -> None:
    @tool
    def where() -> str:
        """Say which thread runs the tool."""
        return threading.current_thread().name

    assert (await invoke(where)).content != threading.main_thread().name


async def test_the_invocation_can_be_requested(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("12345")

    @tool
    async def file_size(path: str, invocation: ToolInvocation) -> str:
        """Size of a file in the working directory."""
        data = await invocation.backend.read_file(f"{invocation.backend.working_dir}/{path}")
        return f"{invocation.session_id}: {len(data)}"

    assert list(file_size.parameters["properties"]) == ["path"]
    output = await invoke(file_size, LocalBackend(str(tmp_path)), path="data.txt")
    assert output.content == "session-1: 5"


class Report(BaseModel):
    ok: bool
    count: int


@pytest.mark.parametrize(
    ("value", "content"),
    [
        (None, ""),
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        (Report(ok=True, count=2), '{"ok":true,"count":2}'),
        (ToolOutput("custom", success=False), "custom"),
    ],
)
async def test_return_values_become_tool_output(value: object, content: str) -> None:
    @tool
    def produce() -> object:
        """Return a fixed value."""
        return value

    assert (await invoke(produce)).content == content


def test_decorated_function_stays_callable() -> None:
    assert search_logs("direct", limit=1) == "direct|1|error|None|0.5|False"


def test_parameter_names_that_clash_with_pydantic_are_fine() -> None:
    @tool
    def clash(schema: str, model_config: int = 1) -> str:
        """Use awkward parameter names."""
        return schema

    assert set(clash.parameters["properties"]) == {"schema", "model_config"}


def test_registry_accepts_decorated_tools() -> None:
    registry = ToolRegistry()
    registry.register(search_logs)
    assert registry.get("search_logs") is search_logs


def test_a_schema_json_cannot_carry_is_refused_at_registration() -> None:
    """The request body's encoder would send NaN as null: the model would see another schema."""

    class Threshold(ToolHandler):
        name = "threshold"
        description = "Check a value."

        def __init__(self) -> None:
            self.parameters = {"type": "object", "properties": {"x": {"maximum": 1e999}}}

        async def handle(self, invocation: ToolInvocation) -> ToolOutput:
            return ToolOutput(content="")

    with pytest.raises(ConfigError, match="'threshold' has a schema that is not JSON data"):
        ToolRegistry([Threshold()])


def test_missing_description_is_a_config_error() -> None:
    def undocumented(x: int) -> str:
        return str(x)

    with pytest.raises(ConfigError, match="docstring"):
        tool(undocumented)


def test_variadic_parameters_are_a_config_error() -> None:
    def spread(*items: str) -> str:
        """Join items."""
        return "".join(items)

    with pytest.raises(ConfigError, match="ordinary named parameter"):
        tool(spread)


def test_unschemable_types_are_a_config_error() -> None:
    def takes_lock(lock: threading.Lock) -> str:
        """Take a lock."""
        return ""

    with pytest.raises(ConfigError, match="JSON schema"):
        tool(takes_lock)


def test_non_callables_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a function"):
        tool("not a function")  # type: ignore[call-overload]
