"""Permission profiles: which tools exist and what they may do.

Enforced inside the tool handlers (paths, shell policy), not only in the prompt. Three profiles are
built in, and a YAML file can define others::

    readonly      no file changes: no write/edit; bash only runs read-only commands (the default)
    developer     write/edit only inside the working dir; bash runs there without a command check
    unrestricted  every tool, anywhere

A profile file holds the ``PermissionProfile`` fields (all optional; ``name`` defaults to the
file's stem)::

    shell: readonly          # none | readonly | allowed
    write: working_dir       # none | working_dir | anywhere
    read: anywhere           # working_dir | anywhere
    approval: [bash, write]  # tools that need a human decision when auto_approve is off
    shell_timeout: 60        # seconds (default and maximum for one bash command)
    tools: [read, grep]      # optional: only these built-in tools exist
    network: inet            # none | inet | all (default: none when bash cannot write, else all)
    env: [DEBUG, PGHOST]     # variable names passed on to tool processes (never secret-looking)
    grants: [fan_out]        # optional: tools no profile has unless it names them here

``network`` and ``env`` are enforced by the operating system and the backend, not by a tool
handler: docs/security.md says how.

``fan_out`` (sub-jobs on the queue, see ``rho_agent.tools.builtin.fan_out``) is such a grant: it
lets an agent start more agents, so no built-in profile has it. A grant is not a permission on
the machine, so a worker's ceiling does not weigh it (the worker's fan-out limits do); a fan-out
child never gets a grant or a policy its parent lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rho_agent.errors import ConfigError, ProfileError
from rho_agent.sandbox.environment import check_extra_names

if TYPE_CHECKING:
    from rho_agent.tools.base import ToolHandler

ShellPolicy = Literal["none", "readonly", "allowed"]
WritePolicy = Literal["none", "working_dir", "anywhere"]
ReadPolicy = Literal["working_dir", "anywhere"]
NetworkPolicy = Literal["none", "inet", "all"]
"""What bash may reach: ``none`` (no socket of any kind), ``inet`` (IPv4 and IPv6 sockets only,
so no unix-socket services), ``all``."""

BUILTIN_TOOL_NAMES = ("bash", "read", "write", "edit", "glob", "grep", "list")
GRANTABLE_TOOL_NAMES = ("fan_out",)
"""Tools a profile has only when its ``grants`` name them."""
DEFAULT_PROFILE = "readonly"
"""What ``load_profile(None)`` gives: the profile that cannot change anything."""

_SHELL_ORDER: tuple[str, ...] = ("none", "readonly", "allowed")
_WRITE_ORDER: tuple[str, ...] = ("none", "working_dir", "anywhere")
_READ_ORDER: tuple[str, ...] = ("working_dir", "anywhere")
_NETWORK_ORDER: tuple[str, ...] = ("none", "inet", "all")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _ProfileData(BaseModel):
    """The validated shape of a profile read from untrusted data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    shell: ShellPolicy = "readonly"
    write: WritePolicy = "none"
    read: ReadPolicy = "anywhere"
    approval: list[str] = Field(default_factory=list)
    shell_timeout: float = Field(default=120.0, gt=0)
    tools: list[str] | None = None
    network: NetworkPolicy | None = None
    env: list[Annotated[str, Field(pattern=_ENV_NAME)]] = Field(default_factory=list)

    @field_validator("env")
    @classmethod
    def _no_secret_names(cls, names: list[str]) -> list[str]:
        try:
            check_extra_names(names)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return names

    grants: list[str] = Field(default_factory=list)

    @field_validator("grants")
    @classmethod
    def _known_grants(cls, grants: list[str]) -> list[str]:
        unknown = sorted(set(grants) - set(GRANTABLE_TOOL_NAMES))
        if unknown:
            raise ValueError(
                f"unknown grant(s) {', '.join(unknown)}; choose from "
                f"{', '.join(GRANTABLE_TOOL_NAMES)}"
            )
        return grants

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, tools: list[str] | None) -> list[str] | None:
        unknown = sorted(set(tools or ()) - set(BUILTIN_TOOL_NAMES))
        if unknown:
            raise ValueError(
                f"unknown built-in tool(s) {', '.join(unknown)}; "
                f"choose from {', '.join(BUILTIN_TOOL_NAMES)}"
            )
        return tools

    @classmethod
    def check(cls, data: Mapping[str, Any], *, source: str) -> _ProfileData:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise ProfileError(f"invalid permission profile in {source}: {problems}") from None


def _problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "profile"
    if error.get("type") == "extra_forbidden":
        return f"unknown field {where!r} (fields: {', '.join(_ProfileData.model_fields)})"
    return f"field {where!r}: {error.get('msg')}"


@dataclass(frozen=True)
class PermissionProfile:
    """What an agent's tools may do.

    ``shell``: ``none`` (no bash tool), ``readonly`` (only commands that cannot change anything,
    checked on every part of pipelines, substitutions and redirections), ``allowed``.
    ``write``: where write/edit may touch files. ``read``: where read/glob/grep/list may look.
    ``approval``: tool names that need a human decision when ``auto_approve`` is off.
    ``shell_timeout``: default and maximum seconds one bash command may run.
    ``network``: what bash may connect to (``None``: ``none`` when bash cannot write, as under
    ``shell="readonly"`` or ``write="none"``, else ``all``; see ``bash_network``).
    ``env``: names of variables passed on from the worker's environment to tool processes, on
    top of the base allowlist; names that look secret are refused.
    ``grants``: tools beyond the built-ins that only a profile naming them has (``fan_out``).
    """

    name: str
    shell: ShellPolicy = "readonly"
    write: WritePolicy = "none"
    read: ReadPolicy = "anywhere"
    approval: frozenset[str] = field(default_factory=frozenset)
    shell_timeout: float = 120.0
    tools: frozenset[str] | None = None
    """If set, only these built-in tools exist; ``None`` means every tool the policies allow."""
    network: NetworkPolicy | None = None
    env: tuple[str, ...] = ()
    grants: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # Accept any iterable of names, and fail here (not mid-run) on a bad value.
        object.__setattr__(self, "approval", _name_set(self.approval, "approval"))
        object.__setattr__(self, "grants", _name_set(self.grants, "grants"))
        if self.tools is not None:
            object.__setattr__(self, "tools", _name_set(self.tools, "tools"))
        if isinstance(self.env, str):
            raise ProfileError(
                f"PermissionProfile.env must be a collection of variable names, not the string "
                f"{self.env!r}; write ({self.env!r},)"
            )
        object.__setattr__(self, "env", tuple(sorted(set(self.env))))
        _ProfileData.check(profile_to_dict(self), source=f"PermissionProfile({self.name!r})")

    @property
    def bash_network(self) -> NetworkPolicy:
        """``network``, or its default: ``none`` when bash cannot write (readonly shell or no
        write policy), since a connection is a way to change things, else ``all``."""
        if self.network is not None:
            return self.network
        return "none" if self.shell == "readonly" or self.write == "none" else "all"

    def builtin_tools(self) -> list[str]:
        """The built-in tools this profile offers, in order: no bash without a shell policy, no
        write/edit without a write policy, and only ``tools`` when it is set."""
        hidden = {"bash"} if self.shell == "none" else set()
        if self.write == "none":
            hidden |= {"write", "edit"}
        return [
            name
            for name in BUILTIN_TOOL_NAMES
            if name not in hidden and (self.tools is None or name in self.tools)
        ]

    def tool_names(self) -> list[str]:
        """Every tool this profile offers: its built-in tools, then its grants."""
        return [*self.builtin_tools(), *sorted(self.grants)]

    def needs_approval(self, handler: ToolHandler) -> bool:
        """Whether a call of ``handler`` waits for a human decision (when auto_approve is off)."""
        return handler.name in self.approval or bool(getattr(handler, "requires_approval", False))

    def exceeds(self, ceiling: PermissionProfile) -> list[str]:
        """How this profile allows more than ``ceiling`` (empty when it stays within it)."""
        excess = []
        for label, order, mine, theirs in (
            ("shell", _SHELL_ORDER, self.shell, ceiling.shell),
            ("write", _WRITE_ORDER, self.write, ceiling.write),
            ("read", _READ_ORDER, self.read, ceiling.read),
            ("network", _NETWORK_ORDER, self.bash_network, ceiling.bash_network),
        ):
            if order.index(mine) > order.index(theirs):
                excess.append(f"{label}: {mine!r} is more than {theirs!r}")
        if self.shell_timeout > ceiling.shell_timeout:
            excess.append(
                f"shell_timeout: {self.shell_timeout:g} s is more than {ceiling.shell_timeout:g} s"
            )
        more_env = sorted(set(self.env) - set(ceiling.env))
        if more_env:
            excess.append(f"env: {', '.join(more_env)} not passed to tools by this worker")
        extra = [name for name in self.builtin_tools() if name not in ceiling.builtin_tools()]
        if ceiling.tools is not None and extra:  # policy differences are reported above
            excess.append(f"tools: {', '.join(extra)} not allowed")
        return excess


def _name_set(values: Iterable[str], field_name: str) -> frozenset[str]:
    if isinstance(values, str):
        raise ProfileError(
            f"PermissionProfile.{field_name} must be a collection of tool names, "
            f"not the string {values!r}; write [{values!r}]"
        )
    return frozenset(values)


def load_profile(spec: str | PermissionProfile | None) -> PermissionProfile:
    """The profile ``spec`` names: ``None`` (-> ``readonly``), a built-in name, a YAML path or a
    ready ``PermissionProfile``. Raise ``ProfileError`` saying what is valid."""
    if spec is None:
        return BUILTIN_PROFILES[DEFAULT_PROFILE]
    if isinstance(spec, PermissionProfile):
        return spec
    if not isinstance(spec, str):
        raise ProfileError(
            f"profile must be a profile name, a path to a YAML file or a PermissionProfile, "
            f"got {type(spec).__name__}"
        )
    if spec in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[spec]
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        return load_profile_file(spec)
    raise ProfileError(
        f"unknown permission profile {spec!r}; valid profiles: {', '.join(BUILTIN_PROFILES)}, "
        "or a path to a .yaml profile file"
    )


def load_profile_file(path: str | Path) -> PermissionProfile:
    """Read a profile from a YAML file (see the module docstring for its fields)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot read permission profile file {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"permission profile file {file} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"permission profile file {file} is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"permission profile file {file} must hold a mapping of fields")
    data.setdefault("name", file.stem)
    return profile_from_dict(data, source=str(file))


def profile_from_dict(data: Mapping[str, Any], *, source: str = "profile") -> PermissionProfile:
    """Build a profile from plain data (a YAML file, a job spec); errors name the field and
    ``source``."""
    checked = _ProfileData.check(data, source=source)
    return PermissionProfile(
        name=checked.name,
        shell=checked.shell,
        write=checked.write,
        read=checked.read,
        approval=frozenset(checked.approval),
        shell_timeout=checked.shell_timeout,
        tools=None if checked.tools is None else frozenset(checked.tools),
        network=checked.network,
        env=tuple(checked.env),
        grants=frozenset(checked.grants),
    )


def profile_to_dict(profile: PermissionProfile) -> dict[str, Any]:
    """The profile as JSON/YAML-ready data; ``profile_from_dict`` reads it back.

    ``network``, ``env`` and ``grants`` appear only when set, so that a job a new dispatcher
    sends without them still runs on a worker that predates them.
    """
    data: dict[str, Any] = {
        "name": profile.name,
        "shell": profile.shell,
        "write": profile.write,
        "read": profile.read,
        "approval": sorted(profile.approval),
        "shell_timeout": profile.shell_timeout,
        "tools": None if profile.tools is None else sorted(profile.tools),
    }
    if profile.network is not None:
        data["network"] = profile.network
    if profile.env:
        data["env"] = list(profile.env)
    if profile.grants:
        data["grants"] = sorted(profile.grants)
    return data


BUILTIN_PROFILES: Mapping[str, PermissionProfile] = MappingProxyType(
    {
        "readonly": PermissionProfile("readonly", shell="readonly", write="none"),
        "developer": PermissionProfile(
            "developer",
            shell="allowed",
            write="working_dir",
            approval=frozenset({"bash", "write", "edit"}),
        ),
        "unrestricted": PermissionProfile(
            "unrestricted",
            shell="allowed",
            write="anywhere",
            approval=frozenset({"bash", "write", "edit"}),
        ),
    }
)
