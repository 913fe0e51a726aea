"""The worker health probe the manifests use, and the shutdown grace setting (no processes)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from dispatch.errors import SettingsError
from workers.health import Beat, HealthSettings, check, main, read_beats
from workers.worker_settings import SHUTDOWN_GRACE, WORKER

NOW = 1_000_000.0


def _beat(**changes: object) -> Beat:
    beat = Beat(
        worker="w1",
        pid=os.getpid(),
        host="h",
        state="running",
        loop_at=NOW - 1,
        consumer_at=NOW - 1,
        running=2,
        interval_s=5.0,
    )
    return dataclasses.replace(beat, **changes)  # type: ignore[arg-type]


def test_a_recent_beat_is_live_and_ready() -> None:
    assert check([_beat()], ready=True, max_age_s=None, now=NOW).ok


def test_no_beat_is_unhealthy() -> None:
    verdict = check([], ready=False, max_age_s=None, now=NOW)
    assert not verdict.ok and "no running worker" in verdict.message


def test_an_old_beat_means_a_stuck_loop() -> None:
    stuck = _beat(loop_at=NOW - 21)  # three 5 s intervals plus 5 s
    verdict = check([_beat(worker="w0"), stuck], ready=False, max_age_s=None, now=NOW)
    assert not verdict.ok and "w1: no heartbeat for 21 s" in verdict.message
    assert check([_beat(loop_at=NOW - 19)], ready=False, max_age_s=None, now=NOW).ok
    assert not check([_beat(loop_at=NOW - 3)], ready=False, max_age_s=2, now=NOW).ok


def test_draining_or_a_silent_consumer_is_live_but_not_ready() -> None:
    for beat in (_beat(state="draining"), _beat(consumer_at=None), _beat(consumer_at=NOW - 30)):
        assert check([beat], ready=False, max_age_s=None, now=NOW).ok
        assert not check([beat], ready=True, max_age_s=None, now=NOW).ok


def _write(directory: Path, beat: Beat) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{beat.worker}.json").write_text(json.dumps(dataclasses.asdict(beat)))


def test_files_of_exited_workers_are_ignored_unless_named(tmp_path: Path) -> None:
    _write(tmp_path, _beat(worker="alive"))
    _write(tmp_path, _beat(worker="gone", pid=2**22 + 12345))
    (tmp_path / "broken.json").write_text("{not json")
    assert [beat.worker for beat in read_beats(tmp_path)] == ["alive"]
    assert [beat.worker for beat in read_beats(tmp_path, "gone")] == ["gone"]


def test_the_probe_exits_0_or_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(tmp_path)]) == 1
    _write(tmp_path, _beat(loop_at=time.time()))
    assert main(["--dir", str(tmp_path), "--name", "w1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok: w1: running")


def test_health_settings_come_from_the_environment(tmp_path: Path) -> None:
    settings = HealthSettings.from_env(
        {"RHO_AGENT_HEARTBEAT_INTERVAL": "0.5", "RHO_AGENT_HEALTH_DIR": str(tmp_path)}
    )
    assert (settings.interval_s, settings.path("w")) == (0.5, tmp_path / "w.json")
    with pytest.raises(SettingsError, match="RHO_AGENT_HEARTBEAT_INTERVAL"):
        HealthSettings.from_env({"RHO_AGENT_HEARTBEAT_INTERVAL": "often"})
    with pytest.raises(SettingsError, match=r"between 0\.1 and 300"):
        HealthSettings.from_env({"RHO_AGENT_HEARTBEAT_INTERVAL": "0"})


def test_the_shutdown_grace_comes_from_the_environment() -> None:
    assert WORKER.value(SHUTDOWN_GRACE, {}) == 30
    assert WORKER.value(SHUTDOWN_GRACE, {"RHO_AGENT_SHUTDOWN_GRACE": "0"}) == 0
    with pytest.raises(SettingsError, match="RHO_AGENT_SHUTDOWN_GRACE"):
        WORKER.value(SHUTDOWN_GRACE, {"RHO_AGENT_SHUTDOWN_GRACE": "soon"})
    with pytest.raises(SettingsError, match=">= 0"):
        WORKER.value(SHUTDOWN_GRACE, {"RHO_AGENT_SHUTDOWN_GRACE": "-1"})
