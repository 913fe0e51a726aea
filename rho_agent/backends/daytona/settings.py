"""What a DaytonaBackend is configured with, as validated, JSON-safe data (no credentials, ever).

``DaytonaSettings`` is both the constructor's normal form and the wire format of
``DaytonaBackend.to_dict()`` / ``from_dict()``, so a fleet job carries exactly what a user wrote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from rho_agent._data_option import validation_problems
from rho_agent.errors import ConfigError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

UploadsArg = Mapping[Any, str] | Iterable[str | tuple[str | os.PathLike[str], str]]
"""Uploads as ``{local: sandbox}`` (local a str or path), ``[(local, sandbox)]`` or
``["LOCAL:SANDBOX", "LOCAL"]``."""


class Upload(BaseModel):
    """A local file or directory copied into the sandbox before setup commands run.

    ``remote`` is absolute, or relative to the sandbox working dir. A directory's contents land
    under ``remote`` (``./src`` -> ``/home/daytona/src`` gives ``/home/daytona/src/a.py``).
    ``content`` (base64) replaces ``local`` for one file whose bytes travel with the config: a
    fleet job's uploads arrive that way, read where the job was submitted (``inline_uploads``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    local: str | None = Field(default=None, min_length=1)
    content: str | None = None
    remote: str = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.local is None) == (self.content is None):
            raise ValueError("an upload has either local (a path) or content (base64), not both")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_source(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Data with only the source it has (``to_dict()`` stays as the user wrote it)."""
        return {key: value for key, value in handler(self).items() if value is not None}


class Resources(BaseModel):
    """Sandbox size: CPU cores, memory and disk in GiB, GPUs. Unset means Daytona's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: int | None = Field(default=None, gt=0)
    memory: int | None = Field(default=None, gt=0)
    disk: int | None = Field(default=None, gt=0)
    gpu: int | None = Field(default=None, ge=0)


class DaytonaSettings(BaseModel):
    """The validated configuration of a DaytonaBackend (see its docstring for each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    image: str | None = Field(default=None, min_length=1)
    dockerfile: str | None = Field(default=None, min_length=1)
    snapshot: str | None = Field(default=None, min_length=1)
    resources: Resources | None = None
    env_vars: dict[str, str] = Field(default_factory=dict)
    forward_env: tuple[str, ...] = ()
    uploads: tuple[Upload, ...] = ()
    setup_commands: tuple[str, ...] = ()
    working_dir: str | None = Field(default=None, min_length=1)
    auto_stop_interval: int = Field(default=15, ge=0)
    auto_delete_interval: int = Field(default=0, ge=-1)
    labels: dict[str, str] = Field(default_factory=dict)
    create_timeout: float = Field(default=300.0, gt=0)
    setup_timeout: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        sources = [name for name in ("image", "dockerfile", "snapshot") if getattr(self, name)]
        if len(sources) > 1:
            raise ValueError(f"give one of image or snapshot, not {' and '.join(sources)}")
        if self.resources and not (self.image or self.dockerfile):
            raise ValueError(
                "resources need an image (a snapshot, or the default one, fixes its own size): "
                "set image=... or drop resources"
            )
        for name in [*self.env_vars, *self.forward_env]:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        if any(not command.strip() for command in self.setup_commands):
            raise ValueError("setup_commands must not contain empty commands")
        return self

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str) -> DaytonaSettings:
        """Validate ``data``; a bad field becomes a ConfigError naming it and ``source``."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems = validation_problems(exc, "backend")
            raise ConfigError(f"invalid Daytona backend in {source}: {problems}") from None


def parse_uploads(uploads: UploadsArg | None) -> list[dict[str, str]]:
    """Every accepted uploads form as ``{"local", "remote"}`` data (see ``UploadsArg``)."""
    if uploads is None:
        return []
    if isinstance(uploads, str):
        raise ConfigError(f"uploads must be a list of 'LOCAL:SANDBOX' strings, got {uploads!r}")
    pairs: list[tuple[Any, str]] = []
    if isinstance(uploads, Mapping):
        pairs.extend(uploads.items())
    else:
        pairs.extend(parse_upload(item) if isinstance(item, str) else item for item in uploads)
    return [{"local": os.fspath(local), "remote": remote} for local, remote in pairs]


def parse_upload(spec: str) -> tuple[str, str]:
    """``"LOCAL:SANDBOX"``, or ``"LOCAL"`` for the working dir under the same name."""
    local, separator, remote = spec.rpartition(":")
    if not separator:
        local, remote = spec, PurePosixPath(spec.rstrip("/")).name
    if not local or not remote or remote in (".", ".."):
        raise ConfigError(
            f"upload {spec!r} must look like LOCAL:SANDBOX_PATH (e.g. ./src:/home/daytona/src) "
            "or LOCAL (copied into the working dir under its own name)"
        )
    return local, remote


def parse_env(items: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``["K=V", "NAME"]`` -> env vars ``{K: V}`` and names forwarded from this environment."""
    values: dict[str, str] = {}
    forwarded: list[str] = []
    for item in items:
        name, separator, value = item.partition("=")
        if separator:
            values[name] = value
        else:
            forwarded.append(name)
    return values, forwarded
