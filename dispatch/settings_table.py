"""Settings as one declarative table: each ``Setting`` is a variable, the field it fills, how its
text is parsed, its default, its bounds and its one-line meaning.

A ``Table`` of them is the only code that reads ``RHO_AGENT_*`` variables from an environment
mapping: it parses them and checks the bounds (with a message that names the variable and the fix,
never the value of a URL or secret); its rows are what the docs' variable tables show. The fleet's
table is ``dispatch.settings.FLEET``; the worker's are in ``workers.worker_settings`` and
``workers.health``.

This module imports nothing but the standard library (and ``dispatch``'s package is lazy): the
health probe reads its settings through it and stays cheap enough to run every few seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["Setting", "Table", "at_least", "count", "file_path", "seconds", "text", "whole"]

T = TypeVar("T")


def at_least(low: float) -> Callable[[float], bool]:
    """A bound for ``Setting.ok``: the value is ``low`` or more."""
    return lambda value: value >= low


def whole(raw: str, name: str) -> int:
    """``raw`` as an int (ValueError naming the variable if it is not one)."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


def count(raw: str, name: str) -> int:
    """``raw`` as a count: digits only, no sign."""
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} is not a count (0, 1, 2...)")
    return int(raw)


def seconds(raw: str, name: str) -> float:
    """``raw`` as a float of seconds (ValueError naming the variable if it is not one)."""
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None


def text(raw: str, name: str) -> str:
    """``raw`` unchanged (it is never echoed in an error: it may be a URL with a password)."""
    return raw


def file_path(raw: str, name: str) -> Path:
    return Path(raw)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One variable: ``name`` fills the field ``field`` with ``parse(text, name)``.

    ``default`` is the field's default (the dataclass fields use it); ``shown`` is how the docs
    show it when ``str(default)`` would not say it (a computed or required value). ``ok`` checks
    a value (from the variable or given in code); a value it refuses fails with
    ``"{name} must be {must}, got {value}"`` and then ``fix``. ``lenient`` settings are written
    by our own tools, not people: text that does not parse is ignored rather than refused.
    """

    name: str
    field: str
    default: T
    doc: str
    parse: Callable[[str, str], T]
    shown: str = ""
    ok: Callable[[T], bool] | None = None
    must: str = ""
    fix: str = ""
    lenient: bool = False

    @property
    def default_text(self) -> str:
        """The default as the docs' tables show it."""
        if self.shown:
            return self.shown
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def value(self, env: Mapping[str, str]) -> T:
        """The variable in ``env`` parsed (ValueError if it does not parse), else the default."""
        raw = env.get(self.name)
        return self.parse(raw, self.name) if raw else self.default

    def problem(self, value: T) -> str | None:
        """Why ``value`` is refused, naming the variable and the fix; None if it is fine."""
        if self.ok is None or self.ok(value):
            return None
        return f"{self.name} must be {self.must}, got {value}" + (
            f"; {self.fix}" if self.fix else ""
        )


@dataclass(frozen=True)
class Table:
    """The settings of one dataclass, and the exception its errors raise.

    ``error`` builds that exception from a message: ``dispatch.SettingsError`` for the fleet's and
    the worker's tables (the health table imports it only when it fails, to stay light).
    """

    settings: tuple[Setting[Any], ...]
    error: Callable[[str], Exception]

    def __iter__(self) -> Iterator[Setting[Any]]:
        return iter(self.settings)

    def read(self, env: Mapping[str, str]) -> dict[str, Any]:
        """The fields of the variables set (non-empty) in ``env``, parsed; unset ones are left
        out so the dataclass's defaults apply. A value that does not parse raises ``error``."""
        values: dict[str, Any] = {}
        for setting in self.settings:
            if not env.get(setting.name):
                continue
            try:
                values[setting.field] = setting.value(env)
            except ValueError as exc:
                if not setting.lenient:
                    raise self.error(str(exc)) from None
        return values

    def value(self, setting: Setting[T], env: Mapping[str, str]) -> T:
        """One of this table's settings from ``env`` (else its default), parsed and checked."""
        value: T = Table((setting,), self.error).read(env).get(setting.field, setting.default)
        problem = setting.problem(value)
        if problem is not None:
            raise self.error(problem)
        return value

    def check(self, settings: object) -> None:
        """Raise ``error`` for the first field of ``settings`` its setting refuses."""
        for setting in self.settings:
            problem = setting.problem(getattr(settings, setting.field))
            if problem is not None:
                raise self.error(problem)
