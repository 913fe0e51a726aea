"""AgentConfig: everything that defines an agent, as a dataclass that round-trips through YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from rho_agent.errors import ConfigError
from rho_agent.output import structured_output_mode
from rho_agent.permissions import PermissionProfile
from rho_agent.pricing import ModelPrice, prices_from_data
from rho_agent.prompts import DEFAULT_SYSTEM_PROMPT, load_template, render
from rho_agent.redact import redact

if TYPE_CHECKING:
    from rho_agent.backends.daytona.backend import DaytonaBackend

BACKEND_NAMES = ("local", "daytona")


@dataclass
class AgentConfig:
    """All configuration for an agent. Construct it directly or load it with ``from_file``.

    Secrets never live here: API keys come from the environment of the process that runs the agent.
    """

    system_prompt: str | None = None
    vars: dict[str, str] = field(default_factory=dict)
    model: str = "gpt-5-mini"
    profile: str | PermissionProfile | None = None
    backend: str | DaytonaBackend = "local"
    working_dir: str | None = None
    base_url: str | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    auto_approve: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Where this process found the config: attributes, not fields (the documented API pins
        # the fields), never serialised and never compared.
        self.config_dir: str | None = None
        """The folder a relative prompt-template path resolves against (``from_file`` sets it)."""
        self.prompt_is_text = False
        """``system_prompt`` is the text itself, never a file to read: a fleet job's prompt
        arrives inline, and reading a path a job names would read the worker's own files."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("AgentConfig.model must be a non-empty model name, e.g. 'gpt-5-mini'")
        if isinstance(self.backend, str) and self.backend not in BACKEND_NAMES:
            raise ConfigError(
                f"AgentConfig.backend={self.backend!r} is not a backend; "
                f"use one of {', '.join(BACKEND_NAMES)} or a DaytonaBackend instance"
            )
        if not isinstance(self.backend, str) and not hasattr(self.backend, "for_session"):
            raise ConfigError(
                f"AgentConfig.backend must be 'local', 'daytona' or a DaytonaBackend, "
                f"got {type(self.backend).__name__}"
            )
        if not isinstance(self.vars, dict) or not all(isinstance(key, str) for key in self.vars):
            raise ConfigError("AgentConfig.vars must be a dict of variable name -> value")
        self.context_window()
        self.prices()
        structured_output_mode(self.extras)

    # -- prompt ---------------------------------------------------------------------------------

    def resolve_system_prompt(self) -> str:
        """The system prompt with its template file loaded and ``{{ vars }}`` filled in.

        ``working_dir`` and ``model`` are always available as variables.
        """
        template = DEFAULT_SYSTEM_PROMPT if self.system_prompt is None else self.system_prompt
        if self.prompt_is_text:
            text = template
        else:
            base_dir = Path(self.config_dir) if self.config_dir is not None else None
            text = load_template(template, base_dir)
        variables = {
            "working_dir": self.working_dir or os.getcwd(),
            "model": self.model,
            **{key: str(value) for key, value in self.vars.items()},
        }
        return render(text, variables)

    # -- model limits and prices -----------------------------------------------------------------

    def context_window(self) -> int | None:
        """``extras.context_window``: the window of a model the price catalogue does not know
        (a self-hosted one), in tokens; None leaves it to the catalogue."""
        window = self.extras.get("context_window")
        if window is not None and (
            not isinstance(window, int) or isinstance(window, bool) or window < 1
        ):
            raise ConfigError(
                f"AgentConfig.extras.context_window must be a whole number of tokens >= 1, "
                f"got {window!r}; e.g. extras: {{context_window: 32768}}"
            )
        return window

    def prices(self) -> dict[str, ModelPrice]:
        """``extras.prices``: USD per million tokens for models the catalogue lacks or misprices,
        ``{model: {input, output, cached_input?}}``."""
        data = self.extras.get("prices")
        if data is None:
            return {}
        return prices_from_data(data, source="AgentConfig.extras.prices")

    # -- data -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (JSON/YAML safe); profiles and backends become data too."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "profile" and isinstance(value, PermissionProfile):
                from rho_agent.permissions.profile import profile_to_dict

                value = profile_to_dict(value)
            elif item.name == "backend" and not isinstance(value, str):
                value = value.to_dict()
            elif item.name == "extras":
                value = {key: val for key, val in value.items() if not key.startswith("_")}
            elif isinstance(value, dict):
                value = dict(value)
            data[item.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> AgentConfig:
        """Build a config from plain data; an unknown or mistyped field is named with ``source``."""
        try:
            parsed = _ConfigData.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(exc, source)) from None
        values = parsed.model_dump(exclude_unset=True)
        if isinstance(values.get("profile"), dict):
            from rho_agent.permissions.profile import profile_from_dict

            values["profile"] = profile_from_dict(values["profile"], source=source)
        if isinstance(values.get("backend"), dict):
            from rho_agent.backends.daytona.backend import DaytonaBackend

            values["backend"] = DaytonaBackend.from_dict(values["backend"])
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> AgentConfig:
        """Load a YAML config. Relative prompt-template paths resolve against the file's folder."""
        file_path = Path(path).expanduser()
        try:
            loaded = yaml.safe_load(file_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping of AgentConfig fields"
            )
        config = cls.from_dict(loaded, source=str(path))
        config.config_dir = str(file_path.resolve().parent)
        return config

    def to_file(self, path: str | os.PathLike[str]) -> None:
        """Write the config as YAML (``from_file`` reads it back to an equal config)."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        Path(path).expanduser().write_text(text, encoding="utf-8")


class _ConfigData(BaseModel):
    """The shape of a config file, validated strictly (typos fail instead of being ignored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    system_prompt: str | None = None
    vars: dict[str, str] = {}
    model: str = "gpt-5-mini"
    profile: str | dict[str, Any] | None = None
    backend: str | dict[str, Any] = "local"
    working_dir: str | None = None
    base_url: str | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    auto_approve: bool = True
    extras: dict[str, Any] = {}


def _describe_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            known = ", ".join(_ConfigData.model_fields)
            problems.append(f"unknown field {location!r} (known fields: {known})")
        else:
            given = redact(repr(error.get("input")))
            problems.append(f"field {location!r}: {error['msg']} (got {given})")
    return f"invalid AgentConfig in {source}: " + "; ".join(problems)
