"""What a fan-out costs Redis, by command: ``python -m tests.bench.profile_redis [--jobs N]``.

Starts a redis-server of its own (its SLOWLOG is set to record every command, which the shared
server must not be), one fleet worker on it (as benchmark 4 does, the model answering at once),
and fans out N one-turn jobs twice: the first time for Redis's CPU per job (``INFO cpu``), the
second with every command logged, for how many of each a job sends and the microseconds they
take; ``EVALSHA`` is split by the fleet's script
(``dispatch/fleet/lua.py``). A script's time includes the commands it calls, which are also
counted on their own rows too.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from dispatch.fleet import lua
from tests.bench.fleet_support import running_fleet
from tests.chaos.redis_server import redis_server

WARM_JOBS = 50
SLOWLOG_PER_JOB = 200
"""Room in the SLOWLOG per job: a one-turn job sends about 80 commands (scripts' included)."""


@dataclass(frozen=True)
class CommandCost:
    name: str
    per_job: float
    us_per_job: float
    median_us: float


def script_names() -> dict[str, str]:
    """SHA1 of each of the fleet's Lua scripts -> its name in ``dispatch.fleet.lua``."""
    return {
        hashlib.sha1(value.encode()).hexdigest(): name
        for name, value in vars(lua).items()
        if name.isupper() and isinstance(value, str)
    }


def costs(
    entries: Iterable[dict[str, Any]], jobs: int, scripts: dict[str, str]
) -> list[CommandCost]:
    """SLOWLOG entries (redis-py's dicts) summed per command, dearest first."""
    durations: dict[str, list[int]] = collections.defaultdict(list)
    for entry in entries:
        command = entry["command"]
        words = (command.decode() if isinstance(command, bytes) else command).split()
        name = words[0].upper()
        if name == "EVALSHA" and len(words) > 1:
            name = f"EVALSHA {scripts.get(words[1], words[1][:8])}"
        if name != "SLOWLOG":
            durations[name].append(int(entry["duration"]))
    rows = [
        CommandCost(name, len(spent) / jobs, sum(spent) / jobs, sorted(spent)[len(spent) // 2])
        for name, spent in durations.items()
    ]
    return sorted(rows, key=lambda row: -row.us_per_job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="rho-redis-profile-") as workdir,
        redis_server(Path(workdir) / "redis") as server,
    ):
        url = f"redis://127.0.0.1:{server.port}"
        client = redis.Redis(port=server.port)
        with running_fleet(workdir, 1, "echo", redis=url) as fleet:
            warm = fleet.dispatcher.map([f"warm {i}" for i in range(WARM_JOBS)], fleet.config)
            fleet.dispatcher.gather(warm, timeout=120)
            cpu_before = _cpu_seconds(client)
            _fan_out(fleet, args.jobs, "cpu")  # first without the SLOWLOG, which costs CPU too
            cpu = _cpu_seconds(client) - cpu_before
            client.config_set("slowlog-max-len", args.jobs * SLOWLOG_PER_JOB)
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            _fan_out(fleet, args.jobs, "logged")
            entries = client.slowlog_get(args.jobs * SLOWLOG_PER_JOB)
            if len(entries) >= args.jobs * SLOWLOG_PER_JOB:
                raise SystemExit("the SLOWLOG overflowed: raise SLOWLOG_PER_JOB")
        client.close()
    print(f"Redis CPU: {cpu / args.jobs * 1e6:.0f} us a job ({args.jobs} jobs)")
    print("per command (a script's time includes the commands it calls, also counted below):")
    for row in costs(entries, args.jobs, script_names()):
        print(
            f"  {row.name:28s} {row.per_job:6.2f} a job  {row.us_per_job:7.1f} us a job  "
            f"median {row.median_us:g} us"
        )


def _fan_out(fleet: Any, jobs: int, name: str) -> None:
    submitted = fleet.dispatcher.map([f"{name} {i}" for i in range(jobs)], fleet.config)
    fleet.dispatcher.gather(submitted, timeout=600)


def _cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


if __name__ == "__main__":
    sys.exit(main())
