"""Typed results: the JSON schema a run's final answer must match, and how it is checked.

A run given an ``output_schema`` asks the model for that schema in one of two ways
(``extras.structured_output``): ``response_format`` sends OpenAI structured output
(``{"type": "json_schema", ...}``), which OpenAI, vLLM and most servers honour; ``tool`` offers a
``final_answer`` tool whose parameters are the schema, for servers without structured output.
The answer is then validated: with pydantic when a model class was given (its validators run too),
with ``jsonschema`` for a plain JSON schema. The session gives the model one corrective turn with
the validation error before the run ends as ``invalid_output``.

Only the JSON schema travels (in a JobSpec, across processes); the model class stays with the
program that named it, which turns the validated JSON data back into an instance.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, TypeAdapter, ValidationError

from rho_agent.errors import ConfigError, OutputInvalid

StructuredOutput = Literal["response_format", "tool"]
STRUCTURED_OUTPUT_MODES: Final = get_args(StructuredOutput)
DEFAULT_STRUCTURED_OUTPUT: Final[StructuredOutput] = "response_format"
FINAL_ANSWER_TOOL: Final = "final_answer"
"""The tool a model calls with its answer when ``extras.structured_output`` is ``tool``."""
_WRAP_KEY: Final = "answer"
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")

SchemaLike = type[BaseModel] | dict[str, Any]


@dataclass(frozen=True)
class OutputSchema:
    """A run's answer schema: the JSON schema, its name, and the model class if one was given."""

    json_schema: dict[str, Any]
    model: type[BaseModel] | None = None
    mode: StructuredOutput = DEFAULT_STRUCTURED_OUTPUT

    @classmethod
    def of(cls, schema: SchemaLike | OutputSchema) -> OutputSchema:
        """From a pydantic model class or a JSON schema dict (checked; ConfigError if invalid)."""
        if isinstance(schema, OutputSchema):
            return schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            return cls(schema.model_json_schema(), schema)
        if isinstance(schema, dict):
            check_json_schema(schema)
            return cls(dict(schema))
        raise ConfigError(
            f"output_schema must be a pydantic model class or a JSON schema dict, got "
            f"{type(schema).__name__}"
        )

    @property
    def name(self) -> str:
        """The schema's name for the API (its ``title``, else ``output``), 1-64 safe chars."""
        title = str(self.json_schema.get("title") or "output")
        return _NAME_CHARS.sub("_", title)[:64] or "output"

    @property
    def _wrapped(self) -> bool:
        """Tool parameters must be an object: any other schema goes under ``answer``."""
        return self.json_schema.get("type") != "object"

    # -- asking ---------------------------------------------------------------------------------

    def response_format(self) -> dict[str, Any]:
        """The ``response_format`` of a chat-completions request asking for this schema."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.json_schema, "strict": False},
        }

    def final_answer_tool(self) -> dict[str, Any]:
        """The ``final_answer`` tool definition whose parameters are this schema."""
        parameters = self.json_schema
        if self._wrapped:
            parameters = {
                "type": "object",
                "properties": {_WRAP_KEY: self.json_schema},
                "required": [_WRAP_KEY],
            }
        return {
            "type": "function",
            "function": {
                "name": FINAL_ANSWER_TOOL,
                "description": (
                    "Give your final answer. Call this exactly once, when you are done; its "
                    "arguments are the answer."
                ),
                "parameters": parameters,
            },
        }

    def answer_from_tool(self, arguments: str) -> str:
        """The answer's JSON text from ``final_answer``'s arguments (unwrapped if needed)."""
        if not self._wrapped:
            return arguments
        try:
            data = json.loads(arguments)
        except ValueError:
            return arguments  # validation reports it
        if isinstance(data, dict) and _WRAP_KEY in data:
            return json.dumps(data[_WRAP_KEY], ensure_ascii=False)
        return arguments

    # -- checking -------------------------------------------------------------------------------

    def parse(self, text: str) -> Any:
        """The answer as a model instance (model given) or JSON data; OutputInvalid says why not."""
        try:
            data = json.loads(_strip_fence(text))
        except ValueError as exc:
            raise OutputInvalid(
                f"the answer is not valid JSON ({exc}); got {text[:200]!r}"
            ) from None
        return self.from_data(data)

    def from_data(self, data: Any) -> Any:
        """Validate JSON data: a model instance when a model was given, else the data itself."""
        if self.model is not None:
            try:
                return TypeAdapter(self.model).validate_python(data)
            except ValidationError as exc:
                raise OutputInvalid(_pydantic_problems(exc)) from None
        problems = validation_problems(self.json_schema, data)
        if problems:
            raise OutputInvalid("; ".join(problems))
        return data

    def to_data(self, value: Any) -> Any:
        """JSON data of a parsed answer (what traces, Redis and result files hold)."""
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return value

    def correction(self, problem: str) -> str:
        """The corrective user message after an invalid answer."""
        how = (
            f"Call the {FINAL_ANSWER_TOOL} tool again"
            if self.mode == "tool"
            else "Answer again with only the JSON"
        )
        return (
            f"Your answer does not match the required JSON schema: {problem}. {how}, "
            f"matching this schema exactly:\n{json.dumps(self.json_schema, ensure_ascii=False)}"
        )

    def asked_by(self, mode: StructuredOutput) -> OutputSchema:
        """This schema, asked for with ``mode`` (``extras.structured_output``)."""
        return replace(self, mode=mode)


def load_schema_file(path: Path) -> dict[str, Any]:
    """A JSON schema file's content: it travels in the jobs, never its path."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read output schema {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"output schema {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"output schema {path} is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"output schema {path} must hold a JSON object")
    return data


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ConfigError naming the problem if ``schema`` is not a valid JSON schema.

    Checking a schema costs about a millisecond, fifty times building a JobSpec, and a fan-out
    sends the same schema with every job: schemas already found valid are remembered.
    """
    try:
        # NaN and infinity are not JSON: a request carrying one would be refused or changed.
        text = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"output_schema must be JSON data: {exc}") from None
    _check_schema_text(text)


@functools.lru_cache(maxsize=256)
def _check_schema_text(text: str) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(json.loads(text))
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(top level)"
        raise ConfigError(
            f"output_schema is not a valid JSON schema at {where}: {exc.message}; give a JSON "
            "schema (draft 2020-12) or a pydantic model class"
        ) from None


def validation_problems(schema: dict[str, Any], data: Any) -> list[str]:
    """One line per way ``data`` breaks ``schema`` (empty when it matches), at most five."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.path))[:5]:
        where = "".join(f"[{part!r}]" for part in error.path) or "(top level)"
        problems.append(f"at {where}: {error.message}")
    return problems


def structured_output_mode(extras: dict[str, Any]) -> StructuredOutput:
    """``extras.structured_output``: how a schema is asked for (ConfigError if unknown)."""
    mode = extras.get("structured_output", DEFAULT_STRUCTURED_OUTPUT)
    if mode not in STRUCTURED_OUTPUT_MODES:
        raise ConfigError(
            f"AgentConfig.extras.structured_output={mode!r} is not a mode; use "
            f"{' or '.join(repr(m) for m in STRUCTURED_OUTPUT_MODES)} (tool: for servers "
            "without response_format json_schema support)"
        )
    return mode  # type: ignore[no-any-return]


def _pydantic_problems(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"at {where}: {error['msg']}")
    return "; ".join(problems)


def _strip_fence(text: str) -> str:
    """Models sometimes wrap JSON in a Markdown code fence; the JSON inside is the answer."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        stripped = stripped.removeprefix("```json").removeprefix("```")
        return stripped.removesuffix("```").strip()
    return stripped
