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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dispatch.errors import JobSpecError
from rho_agent import jsoncodec
from rho_agent.budgets import Budget, label_scope
from rho_agent.config import AgentConfig
from rho_agent.errors import ConfigError
from rho_agent.output import check_json_schema
from rho_agent.permissions.profile import (
    BUILTIN_PROFILES,
    DEFAULT_PROFILE,
    load_profile,
    profile_to_dict,
)
from rho_agent.prompts import UNICODE_PROMPT_HELP, is_unicode_text, load_template, looks_like_path
from rho_agent.ratelimits import RateLimit, rate_limits_from_data
from rho_agent.redact import SECRET_NAME, default_redactor, redact

SPEC_VERSION: Final = 1
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_PATH_LIKE = re.compile(r"^\S*/\S*$|^~")
"""A one-line system prompt that names a file rather than saying something."""


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
    max_cost_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    batch_id: str | None = None
    batch_max_cost_usd: float | None = Field(default=None, ge=0)
    batch_max_tokens: int | None = Field(default=None, ge=0)
    rate_limits: list[dict[str, Any]] = Field(default_factory=list)
    depth: int = Field(default=0, ge=0)
    """How many ``fan_out`` parents this job has above it (0: submitted by a dispatcher); it
    travels with the job so the depth limit holds on whichever worker runs it."""
    parent_budgets: list[dict[str, Any]] = Field(default_factory=list)
    """The job budgets of the ``fan_out`` parents above this job (``scope``, ``max_cost_usd``,
    ``max_tokens``): its model calls count against them too, so a parent's budget covers its
    whole tree."""

    @field_validator("job_id", "session_id", "reply_to", "batch_id")
    @classmethod
    def _check_id(cls, value: str | None) -> str | None:
        if value is not None and not ID_PATTERN.match(value):
            raise ValueError("use 1-128 letters, digits, '-' or '_' (not starting with '-' or '_')")
        if value is not None and default_redactor().finds(value):
            raise ValueError("looks like a secret; ids become Redis key names")
        return value

    @field_validator("labels", "queue")
    @classmethod
    def _check_no_secret(cls, value: Any) -> Any:
        found = find_secrets(value, "")
        if found:
            raise ValueError("holds what looks like a secret; it would be stored in Redis")
        return value

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, value: list[str]) -> list[str]:
        if any(not prompt.strip() for prompt in value):
            raise ValueError("every prompt must be non-empty text")
        if not all(is_unicode_text(prompt) for prompt in value):
            raise ValueError(UNICODE_PROMPT_HELP)
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
        problem = find_worker_paths(value)
        if problem:
            raise ValueError(problem)
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

    @field_validator("parent_budgets")
    @classmethod
    def _check_parent_budgets(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for item in value:
            try:
                budget = Budget(**item)
            except (ConfigError, TypeError) as exc:
                raise ValueError(str(exc)) from None
            if not budget.scope.startswith("job:") or budget.window_s is not None:
                raise ValueError(f"{budget.scope!r} is not a parent job's budget")
        return value

    @field_validator("rate_limits")
    @classmethod
    def _check_rate_limits(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            rate_limits_from_data(value, source="rate_limits")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @classmethod
    def decode(cls, payload: Any) -> JobSpec:
        """Parse an untrusted payload (dict or JSON); raise JobSpecError saying what is wrong."""
        if isinstance(payload, str | bytes):
            try:
                payload = jsoncodec.loads(payload)
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
            config = AgentConfig.from_dict(dict(self.config), source=f"job {self.job_id}")
        except ConfigError as exc:
            raise JobSpecError(redact(str(exc))) from None
        config.prompt_is_text = True  # never a file on the machine that runs the job
        return config

    def budgets(self) -> list[Budget]:
        """The budgets that travel with this job: its own (here or in ``config.extras``), its
        batch's and its ``fan_out`` parents'. Label and fleet budgets are the fleet's, stored
        apart."""
        found = []
        extras = self.config.get("extras") or {}
        usd = self.max_cost_usd if self.max_cost_usd is not None else extras.get("max_cost_usd")
        tokens = self.max_tokens if self.max_tokens is not None else extras.get("max_tokens")
        try:
            if usd is not None or tokens is not None:
                found.append(Budget(f"job:{self.job_id}", max_cost_usd=usd, max_tokens=tokens))
            if self.batch_id and (
                self.batch_max_cost_usd is not None or self.batch_max_tokens is not None
            ):
                found.append(
                    Budget(
                        f"batch:{self.batch_id}",
                        max_cost_usd=self.batch_max_cost_usd,
                        max_tokens=self.batch_max_tokens,
                    )
                )
        except ConfigError as exc:
            raise JobSpecError(f"job {self.job_id}: {exc}") from None
        return found + [Budget(**item) for item in self.parent_budgets]

    def budget_scopes(self) -> list[str]:
        """Every scope whose budget this job's model calls count against (where one is set)."""
        scopes = [budget.scope for budget in self.budgets()]
        scopes += [label_scope(key, value) for key, value in sorted(self.labels.items())]
        return [*scopes, "fleet"]

    def batch_rate_limits(self) -> list[RateLimit]:
        return rate_limits_from_data(self.rate_limits, source=f"job {self.job_id} rate_limits")

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

    # Anything but text or a sequence of it is left for the validator to name.
    prompt_list = [prompts] if isinstance(prompts, str) else prompts
    if isinstance(prompt_list, Sequence):
        prompt_list = list(prompt_list)
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

    A worker cannot read this machine's prompt template, profile YAML or upload files (and must
    never read a path a job names), so their contents travel instead of their paths.
    """
    if not isinstance(config, AgentConfig):
        raise JobSpecError(f"config must be an AgentConfig, got {type(config).__name__}")
    data = config.to_dict()
    prompt = config.system_prompt
    if prompt is not None and not config.prompt_is_text:
        base_dir = Path(config.config_dir) if config.config_dir is not None else None
        data["system_prompt"] = load_template(prompt, base_dir)
    profile = data.get("profile")
    if isinstance(profile, str) and profile not in BUILTIN_PROFILES:
        data["profile"] = profile_to_dict(load_profile(profile))
    backend = data.get("backend")
    if isinstance(backend, dict) and backend.get("uploads"):
        from rho_agent.backends.daytona.inline import inline_uploads

        data["backend"] = {**backend, "uploads": inline_uploads(backend["uploads"])}
    return data


def find_secrets(data: Any, path: str = "config") -> list[str]:
    """Paths in ``data`` whose key names a secret or whose value holds one.

    A value holds a secret when it contains secret-shaped text (``sk-...``, ``Bearer ...``,
    ``?key=...``, ``user:pass@`` in a URL; see ``rho_agent.redact``) or one of this process's own
    secret values. Only the paths are returned, never the values.
    """
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}"
            if isinstance(key, str) and SECRET_NAME.search(key) and value:
                found.append(where)
            else:
                found.extend(find_secrets(value, where))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found.extend(find_secrets(item, f"{path}[{index}]"))
    elif isinstance(data, str) and default_redactor().finds(data):
        found.append(path)
    return found


def find_worker_paths(config: dict[str, Any]) -> str | None:
    """Why ``config`` would make the machine running the job read one of its own files, if so.

    Jobs carry content: ``portable_config`` inlines the sender's prompt template and profile
    YAML. A path left in a job would be read on the worker (``/proc/self/environ`` is a path).
    """
    prompt = config.get("system_prompt")
    if isinstance(prompt, str) and "\n" not in prompt.strip():
        line = prompt.strip()
        if looks_like_path(line) or _PATH_LIKE.match(line):
            return (
                "config.system_prompt names a file; jobs carry the prompt text itself, never a "
                "path on the worker (Dispatcher.submit inlines a template file it can read)"
            )
    profile = config.get("profile")
    if isinstance(profile, str) and profile not in BUILTIN_PROFILES:
        return (
            f"config.profile must be one of {', '.join(BUILTIN_PROFILES)} or the profile as data; "
            "a profile file is read by the dispatcher (Dispatcher.submit inlines it), never by "
            "the worker"
        )
    extras = config.get("extras")
    if isinstance(extras, dict) and any(str(key).startswith("_") for key in extras):
        return "config.extras names starting with '_' are private to one process; drop them"
    backend = config.get("backend")
    uploads = backend.get("uploads") if isinstance(backend, dict) else None
    if isinstance(uploads, list) and any(
        not isinstance(item, dict) or item.get("local") is not None for item in uploads
    ):
        return (
            "config.backend.uploads names files on the machine that runs the job; a job carries "
            "their content instead (Dispatcher.submit reads them where it runs)"
        )
    forwarded = backend.get("forward_env") if isinstance(backend, dict) else None
    if isinstance(forwarded, list) and any(_worker_secret_name(name) for name in forwarded):
        return (
            "config.backend.forward_env names a secret of the machine that runs the job (an API "
            "key, token or rho-agent setting); a job cannot copy the worker's secrets into its "
            "sandbox: give the sandbox what it needs in backend.env_vars instead"
        )
    return None


def _worker_secret_name(name: object) -> bool:
    return isinstance(name, str) and (bool(SECRET_NAME.search(name)) or name.startswith("RHO_"))


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
        elif location.split(".")[0] == "config":  # a config may hold a secret: never echo it
            problems.append(f"field {location!r}: {message}")
        else:
            given = redact(repr(error.get("input")))
            problems.append(f"field {location!r}: {message} (got {given[:80]})")
    return f"invalid {what}: " + "; ".join(problems)
