"""JobSpec: the one JSON payload that travels from a dispatcher to whoever runs the job.

It is validated on both sides: when built (so misuse fails at ``submit``) and when a worker decodes
it from the queue (untrusted data: a malformed payload becomes a clear error, never a crash).
It carries the agent config as plain data and never a secret: workers read API keys from their own
environment, and ``submit`` refuses a config that looks like it holds one.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dispatch.errors import JobSpecError
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError
from rho_agent.output import check_json_schema
from rho_agent.permissions.profile import (
    BUILTIN_PROFILES,
    DEFAULT_PROFILE,
    load_profile,
    profile_to_dict,
)
from rho_agent.prompts import load_template

SPEC_VERSION: Final = 1
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SECRET_NAME = re.compile(r"(^|_)(api_?key|secret|password|passwd|token|credentials?)$", re.I)
_SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_-]{16,}|dtn_[A-Za-z0-9]{16,})$")


def new_job_id() -> str:
    """``j-20261124-051502-3f9a1c2b4d5e``: sortable by time, unique by its random tail."""
    return f"j-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(6)}"


class JobSpec(BaseModel):
    """What to run: prompts (several make a multi-run), the agent config as data, the session.

    ``continue_session`` says the session must already exist (its history is loaded first);
    otherwise ``session_id`` names a new session. ``reply_to`` is the id of the dispatcher waiting
    for it; ``queue`` and ``priority`` route it (and its redeliveries).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = SPEC_VERSION
    job_id: str
    prompts: list[str] = Field(min_length=1)
    config: dict[str, Any]
    session_id: str
    continue_session: bool = False
    labels: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    queue: str | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    reply_to: str | None = None
    submitted_at: float = Field(default_factory=time.time)
    output_schema: dict[str, Any] | None = None
    """The JSON schema the last prompt's answer must match (content, never a path)."""

    @field_validator("job_id", "session_id", "reply_to")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not ID_PATTERN.match(value):
            raise ValueError("use 1-128 letters, digits, '-' or '_' (not starting with '-' or '_')")
        return value

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, value: list[str]) -> list[str]:
        if any(not prompt.strip() for prompt in value):
            raise ValueError("every prompt must be non-empty text")
        return value

    @field_validator("config")
    @classmethod
    def _check_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        found = find_secrets(value)
        if found:
            raise ValueError(
                f"the config holds what looks like a secret at {', '.join(found)}; secrets never "
                "travel in jobs: set API keys in the workers' environment instead"
            )
        return value

    @field_validator("output_schema")
    @classmethod
    def _check_output_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                check_json_schema(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @classmethod
    def decode(cls, payload: Any) -> JobSpec:
        """Parse an untrusted payload (dict or JSON); raise JobSpecError saying what is wrong."""
        if isinstance(payload, str | bytes):
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError as exc:
                raise JobSpecError(f"job payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise JobSpecError(f"job payload must be a JSON object, got {type(payload).__name__}")
        version = payload.get("v", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise JobSpecError(
                f"job spec version {version!r} is not supported here (this side reads version "
                f"{SPEC_VERSION}); run the same rho-agent version on dispatchers and workers"
            )
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise JobSpecError(describe(exc, "job payload")) from None

    def encode(self) -> dict[str, Any]:
        """JSON-ready data (what goes on the queue)."""
        return self.model_dump(mode="json")

    def agent_config(self) -> AgentConfig:
        """The AgentConfig this job runs with; a bad config raises JobSpecError."""
        try:
            return AgentConfig.from_dict(dict(self.config), source=f"job {self.job_id}")
        except ConfigError as exc:
            raise JobSpecError(str(exc)) from None

    @property
    def model(self) -> str:
        return str(self.config.get("model") or "gpt-5-mini")

    @property
    def profile_label(self) -> str:
        """The profile's name for display (``custom`` for an inline profile without one)."""
        profile = self.config.get("profile")
        if isinstance(profile, dict):
            return str(profile.get("name") or "custom")
        return str(profile or DEFAULT_PROFILE)


def build_spec(
    prompts: str | Sequence[str],
    config: AgentConfig,
    *,
    job_id: str | None = None,
    session_id: str | None = None,
    continue_session: bool = False,
    **options: Any,
) -> JobSpec:
    """A JobSpec from SDK values, with the config made portable (see ``portable_config``)."""
    from rho_agent.ids import new_session_id

    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    data = {
        "job_id": job_id or new_job_id(),
        "prompts": prompt_list,
        "config": portable_config(config),
        "session_id": session_id or new_session_id(),
        "continue_session": continue_session,
        **{key: value for key, value in options.items() if value is not None},
    }
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(describe(exc, "job")) from None


def portable_config(config: AgentConfig) -> dict[str, Any]:
    """``config.to_dict()`` with the files only this machine has inlined.

    A worker cannot read this machine's prompt template or profile YAML, so their contents travel
    instead of their paths.
    """
    if not isinstance(config, AgentConfig):
        raise JobSpecError(f"config must be an AgentConfig, got {type(config).__name__}")
    data = config.to_dict()
    prompt = config.system_prompt
    if prompt is not None:
        base_dir = config.extras.get("_config_dir")
        data["system_prompt"] = load_template(
            prompt, Path(base_dir) if isinstance(base_dir, str) else None
        )
    profile = data.get("profile")
    if isinstance(profile, str) and profile not in BUILTIN_PROFILES:
        data["profile"] = profile_to_dict(load_profile(profile))
    return data


def find_secrets(data: Any, path: str = "config") -> list[str]:
    """Paths in ``data`` whose key names a secret or whose value looks like an API key."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}"
            if isinstance(key, str) and _SECRET_NAME.search(key) and value:
                found.append(where)
            else:
                found.extend(find_secrets(value, where))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found.extend(find_secrets(item, f"{path}[{index}]"))
    elif isinstance(data, str) and (_SECRET_VALUE.match(data.strip()) or _url_password(data)):
        found.append(path)
    return found


def _url_password(text: str) -> bool:
    """A URL carrying a password (``https://user:pass@host``)."""
    if "://" not in text or "@" not in text:
        return False
    try:
        return bool(urlsplit(text.strip()).password)
    except ValueError:
        return False


def describe(exc: ValidationError, what: str) -> str:
    """One readable sentence per problem: which field, what is wrong, what was given."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            known = ", ".join(JobSpec.model_fields)
            problems.append(f"unknown field {location!r} (known fields: {known})")
        elif error["type"] == "missing":
            problems.append(f"missing field {location!r}")
        else:
            given = repr(error.get("input"))
            problems.append(f"field {location!r}: {message} (got {given[:80]})")
    return f"invalid {what}: " + "; ".join(problems)
