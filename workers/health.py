"""The worker health probe: ``python -m workers.health [--ready]`` exits 0 when healthy, else 1.

Each worker's heartbeat (``workers.heartbeat``) rewrites ``{RHO_AGENT_HEALTH_DIR}/{worker}.json``
from the session host's event loop, so a fresh file proves that loop is not stuck; it also records
when Celery's consumer (the loop that polls the broker) last ticked. The probe only reads these
files: no Redis round trip, so a Redis outage does not get every worker restarted, and it imports
nothing heavy, so it is cheap to run every few seconds (Kubernetes exec probe, Compose health
check). *Live*: every worker here beat recently. *Ready*: also taking jobs (not draining, and its
consumer ticking).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.settings_table import Setting, Table, count, file_path, seconds, text


def _settings_error(message: str) -> Exception:
    from dispatch.errors import SettingsError  # only on error: keeps the probe light

    return SettingsError(message)


# fmt: off
HEARTBEAT_INTERVAL = Setting(
    "RHO_AGENT_HEARTBEAT_INTERVAL", "interval_s", 5.0,
    "seconds between the worker's heartbeats (health file, Redis, systemd watchdog)",
    seconds, ok=lambda value: 0.1 <= value <= 300, must="between 0.1 and 300 s",
)
HEALTH_DIR = Setting[Path | None](
    "RHO_AGENT_HEALTH_DIR", "health_dir", None,
    "where the worker's health file is written (and the probe reads it)",
    file_path, shown="$TMPDIR/rho-agent-health",
)
WORKER_RESTARTS = Setting(
    "RHO_AGENT_WORKER_RESTARTS", "restarts", 0,
    "(set by `rho-agent fleet up`) times this worker was restarted after it exited",
    count, lenient=True,
)
WORKER_NAME = Setting(
    "RHO_AGENT_WORKER_NAME", "worker_name", "",
    "name recorded on the jobs this worker runs (and the one whose health the probe reads)",
    text, shown="host-pid",
)
# fmt: on

HEALTH = Table((HEARTBEAT_INTERVAL, HEALTH_DIR, WORKER_RESTARTS, WORKER_NAME), _settings_error)
"""The variables the heartbeat and the probe read (``WorkerSettings`` reads the name too)."""

CONSUMER_BEAT_S = 2.0
"""How often Celery's consumer sends its own heartbeat (Celery's default event heartbeat)."""


def default_health_dir() -> Path:
    return Path(tempfile.gettempdir()) / "rho-agent-health"


@dataclass(frozen=True)
class HealthSettings:
    """How often a worker beats and where it writes its health file (``HEALTH``).

    ``worker_name`` is the worker the probe checks by default (empty: every worker here).
    """

    interval_s: float = HEARTBEAT_INTERVAL.default
    health_dir: Path = field(default_factory=default_health_dir)
    restarts: int = WORKER_RESTARTS.default
    worker_name: str = WORKER_NAME.default

    def __post_init__(self) -> None:
        HEALTH.check(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthSettings:
        return cls(**HEALTH.read(os.environ if env is None else env))

    def path(self, worker: str) -> Path:
        return self.health_dir / f"{worker}.json"


@dataclass(frozen=True)
class Beat:
    """One heartbeat, as written to the health file (wall-clock times of this machine)."""

    worker: str
    pid: int
    host: str
    state: str  # "running", or "draining" once the worker was told to stop
    loop_at: float
    consumer_at: float | None
    running: int
    interval_s: float
    version: int = 1
    restarts: int = 0
    """Times ``rho-agent fleet up`` restarted this worker after it exited unexpectedly."""

    @property
    def max_age_s(self) -> float:
        """Older than this, the worker's loop is stuck or the worker is gone."""
        return 3 * self.interval_s + 5


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str


def check(beats: Sequence[Beat], *, ready: bool, max_age_s: float | None, now: float) -> Verdict:
    """Healthy when at least one worker beats and every worker's loop beat recently.

    ``ready`` also needs each worker to be taking jobs: not draining, and its consumer ticking.
    """
    if not beats:
        return Verdict(False, "no running worker has written a health file")
    problems, lines = [], []
    for beat in beats:
        limit = beat.max_age_s if max_age_s is None else max_age_s
        age = now - beat.loop_at
        if age > limit:
            problems.append(f"{beat.worker}: no heartbeat for {age:.0f} s (event loop stuck?)")
        elif ready and beat.state != "running":
            problems.append(f"{beat.worker}: {beat.state}, not taking jobs")
        elif ready and not _consumer_fresh(beat, limit, now):
            problems.append(f"{beat.worker}: its consumer is not polling the broker")
        else:
            lines.append(f"{beat.worker}: {beat.state}, beat {age:.1f} s ago, {beat.running} jobs")
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, "; ".join(lines))


def _consumer_fresh(beat: Beat, limit: float, now: float) -> bool:
    return beat.consumer_at is not None and now - beat.consumer_at <= max(
        limit, 3 * CONSUMER_BEAT_S
    )


def read_beats(health_dir: Path, worker: str | None = None) -> list[Beat]:
    """The health file of ``worker``, or of every worker here whose process still exists."""
    paths = [health_dir / f"{worker}.json"] if worker else sorted(health_dir.glob("*.json"))
    beats = []
    for path in paths:
        try:
            beat = Beat(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if worker or _alive(beat.pid):
            beats.append(beat)
    return beats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line and return 0 if the worker(s) here are alive (or ready), else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.health",
        description="Liveness (default) or readiness probe of the rho-agent workers here.",
    )
    parser.add_argument("--ready", action="store_true", help="also require taking jobs")
    parser.add_argument("--name", help="worker name (default: $RHO_AGENT_WORKER_NAME, else all)")
    parser.add_argument("--dir", type=Path, help="health directory ($RHO_AGENT_HEALTH_DIR)")
    parser.add_argument("--max-age", type=float, help="seconds a beat stays fresh")
    args = parser.parse_args(argv)
    try:
        settings = HealthSettings.from_env()
    except ValueError as exc:  # SettingsError is a ValueError too
        print(f"unhealthy: {exc}")
        return 1
    name = args.name or settings.worker_name or None
    beats = read_beats(args.dir or settings.health_dir, name)
    verdict = check(beats, ready=args.ready, max_age_s=args.max_age, now=time.time())
    print(("ok: " if verdict.ok else "unhealthy: ") + verdict.message)
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
