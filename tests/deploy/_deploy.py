"""What the deploy tests check manifests against: the code's settings, the CLI, the docs."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import typer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PACKAGES = ("rho_agent", "dispatch", "workers")
_ENV_NAME = re.compile(r"[\"']((?:RHO_AGENT|OPENAI|DAYTONA|FLOWER)_[A-Z0-9_]+)[\"']")
_TABLE_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]+) \|", re.MULTILINE)

SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|AUTH)")


@cache
def documented() -> dict[str, str]:
    """deploy/README.md's variable table: name -> default (backticks removed)."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    return {name: default.strip().strip("`") for name, default in _TABLE_ROW.findall(text)}


@cache
def read_by_code() -> frozenset[str]:
    """Every environment variable name the packages spell out (the test doubles excluded)."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "testing" not in path.relative_to(REPO).parts:
                names.update(_ENV_NAME.findall(path.read_text(encoding="utf-8")))
    return frozenset(names)


def settings_tables() -> list[tuple[str, str, str]]:
    """(name, default, meaning) of every variable in the worker's settings table."""
    from workers.worker_settings import SETTINGS

    return [(setting.name, setting.default_text, setting.doc) for setting in SETTINGS]


def console_scripts() -> set[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(pyproject["project"]["scripts"])


def cli_accepts(args: list[str]) -> None:
    """Parse ``rho-agent ARGS`` as the real CLI would (without running it); fail if it cannot."""
    from rho_agent.cli.app import app

    command: Any = typer.main.get_command(app)
    path = "rho-agent"
    rest = list(args)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, (
            f"`{path} {rest[0]}` is not a command of the CLI (it has {sorted(command.commands)}); "
            "is its module imported at the bottom of rho_agent/cli/app.py?"
        )
        path, rest, command = f"{path} {rest[0]}", rest[1:], sub
    try:
        command.make_context(path, list(rest))
    except Exception as exc:  # typer's own click raises its UsageError subclasses
        raise AssertionError(f"`{path} {' '.join(rest)}` is rejected: {exc}") from None


def check_worker_env(env: Mapping[str, str]) -> None:
    """The settings a worker builds from ``env`` (raises SettingsError naming a bad value)."""
    from workers.worker_settings import WorkerSettings

    WorkerSettings.from_env(env)


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines (comments and blanks skipped), as systemd and Compose read them."""
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def seconds(value: str | int) -> float:
    """``90``, ``"90"``, ``"90s"``, ``"1m30s"`` in seconds."""
    text = str(value).strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?", text)
    assert parts and text, f"not a duration: {value!r}"
    hours, minutes, secs = (int(part or 0) for part in parts.groups())
    return hours * 3600 + minutes * 60 + secs
