"""``rho-agent worker`` and ``flower`` pass their flags as settings, never through os.environ."""

from __future__ import annotations

import os
from typing import Any

import pytest
from typer.testing import CliRunner

import workers.celery_app
from rho_agent.cli import app
from workers.worker_settings import WorkerSettings


class _App:
    def __init__(
        self, settings: WorkerSettings, calls: list[tuple[WorkerSettings, list[str]]]
    ) -> None:
        self._settings = settings
        self._calls = calls

    def worker_main(self, argv: list[str]) -> None:
        self._calls.append((self._settings, argv))

    def start(self, argv: list[str]) -> None:
        self._calls.append((self._settings, argv))


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[WorkerSettings, list[str]]]:
    calls: list[tuple[WorkerSettings, list[str]]] = []

    def create_app(settings: WorkerSettings | None = None) -> Any:
        assert settings is not None
        return _App(settings, calls)

    monkeypatch.setattr(workers.celery_app, "create_app", create_app)
    for name in ("RHO_AGENT_BROKER_URL", "RHO_AGENT_QUEUE", "RHO_AGENT_MAX_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_worker_flags_become_settings_and_leave_the_environment_alone(
    started: list[tuple[WorkerSettings, list[str]]],
) -> None:
    before = dict(os.environ)
    result = CliRunner().invoke(
        app,
        [
            "worker",
            "--broker",
            "redis://127.0.0.1:6379/9",
            "--queue",
            "q-flags",
            "--concurrency",
            "7",
            "--max-profile",
            "readonly",
        ],
    )
    assert result.exit_code == 0, result.output
    [(settings, argv)] = started
    assert settings.fleet.broker_url == "redis://127.0.0.1:6379/9"
    assert settings.fleet.queue == "q-flags" and settings.concurrency == 7
    assert settings.max_profile == "readonly"
    assert argv[0] == "worker"
    assert dict(os.environ) == before


def test_flower_broker_flag_becomes_a_setting(
    started: list[tuple[WorkerSettings, list[str]]],
) -> None:
    before = dict(os.environ)
    result = CliRunner().invoke(app, ["flower", "--broker", "redis://127.0.0.1:6379/8"])
    assert result.exit_code == 0, result.output
    [(settings, argv)] = started
    assert settings.fleet.broker_url == "redis://127.0.0.1:6379/8" and argv[0] == "flower"
    assert dict(os.environ) == before


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_a_flower_port_out_of_range_is_a_usage_error(
    started: list[tuple[WorkerSettings, list[str]]], port: str
) -> None:
    result = CliRunner().invoke(
        app, ["flower", "--broker", "redis://127.0.0.1:6379/8", "--port", port]
    )
    assert result.exit_code == 2, result.output
    assert "--port" in result.output
    assert started == [], "70000 would have wrapped round to port 4464"


def test_an_unknown_worker_log_level_is_a_usage_error(
    started: list[tuple[WorkerSettings, list[str]]],
) -> None:
    result = CliRunner().invoke(
        app, ["worker", "--broker", "redis://127.0.0.1:6379/8", "--loglevel", "LOUD"]
    )
    assert result.exit_code == 2, result.output
    assert "LOUD" in result.output and "INFO" in result.output
    assert started == []
