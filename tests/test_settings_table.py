"""One settings table that every reader uses: no module reads a ``RHO_AGENT_*`` variable itself.

The tables (``dispatch.settings.FLEET``, ``workers.worker_settings.WORKER``,
``workers.health.HEALTH``) are read by ``dispatch.settings_table.Table``; everything else reads
settings objects. The SDK cannot import ``dispatch``, so its own two variables are an explicit
allowlist.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch import FleetSettings, SettingsError
from workers.health import HealthSettings
from workers.worker_settings import SETTINGS, WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rho_agent", "dispatch", "workers")
PREFIX = "RHO_AGENT_"
SDK_READS = {
    ("rho_agent/sandbox/launcher.py", "RHO_AGENT_ALLOW_UNCONFINED"),
    ("rho_agent/store/directory.py", "RHO_AGENT_SESSIONS_DIR"),
}
"""SDK-level variables the SDK reads itself (docs: deploy/README.md's table)."""
BROKER = {"RHO_AGENT_BROKER_URL": "redis://127.0.0.1:6379/0"}


def env_reads(source: str) -> list[str]:
    """The ``RHO_AGENT_*`` variables ``source`` reads from a mapping by name: ``env.get(NAME)``,
    ``os.getenv(NAME)``, ``env[NAME]``, ``NAME in env``, where NAME is the string, a module
    constant holding it, or ``ROW.name`` of a settings row (reading past the table's parser)."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }

    def variable(key: ast.expr) -> str | None:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            value: str | None = key.value
        elif isinstance(key, ast.Name):
            value = constants.get(key.id)
        elif isinstance(key, ast.Attribute) and key.attr == "name" and _row(key.value):
            return f"{ast.unparse(key.value)}.name"
        else:
            return None
        return value if value and value.startswith(PREFIX) else None

    keys: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "getenv", "pop"):
                keys.append(node.args[0])
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            keys.append(node.slice)
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In):
            keys.append(node.left)
    return [name for name in map(variable, keys) if name is not None]


def _row(node: ast.expr) -> bool:
    """A settings row is an UPPER_CASE module constant (``QUEUE``, ``settings.QUEUE``)."""
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return bool(name) and name.isupper()


def test_the_detector_finds_each_way_of_reading() -> None:
    source = """
import os
GRACE_ENV = "RHO_AGENT_SHUTDOWN_GRACE"
a = env.get("RHO_AGENT_HEALTH_DIR")
b = os.environ[GRACE_ENV]
c = os.getenv("RHO_AGENT_QUEUE", "q")
d = "RHO_AGENT_LEASE_TTL" in env
e = env.get(QUEUE.name)
g = tools.get(param.name)  # not a settings row
env["RHO_AGENT_WORKER_NAME"] = "w"  # a write, for a child process: not a read
f = env.get("OPENAI_BASE_URL")
"""
    assert env_reads(source) == [
        "RHO_AGENT_HEALTH_DIR",
        "RHO_AGENT_SHUTDOWN_GRACE",
        "RHO_AGENT_QUEUE",
        "RHO_AGENT_LEASE_TTL",
        "QUEUE.name",
    ]


def test_only_the_settings_table_reads_rho_agent_variables() -> None:
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for name in env_reads(path.read_text(encoding="utf-8")):
                found.add((relative, name))
    assert found - SDK_READS == set(), (
        "read these through a settings table (dispatch.settings.FLEET, "
        "workers.worker_settings.WORKER, workers.health.HEALTH) and pass the settings object"
    )
    assert found >= SDK_READS, "an allowlisted SDK read is gone: drop it from SDK_READS"


def test_every_row_is_documented_once_with_its_field() -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    assert all(setting.name.startswith(PREFIX) and setting.doc for setting in SETTINGS)
    health = HealthSettings()
    worker = WorkerSettings.from_env(BROKER)
    for setting in SETTINGS:
        holders = [worker, worker.fleet, worker.health, health]
        assert any(hasattr(holder, setting.field) for holder in holders), setting.name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RHO_AGENT_QUEUED_LEASE": "ten"}, "RHO_AGENT_QUEUED_LEASE='ten' is not a whole number"),
        ({"RHO_AGENT_REDIS_OUTAGE_LIMIT": "0"}, "RHO_AGENT_REDIS_OUTAGE_LIMIT must be > 0 s"),
        ({"RHO_AGENT_QUEUE": " "}, "RHO_AGENT_QUEUE must be a queue name, not empty"),
        (
            {"RHO_AGENT_FAN_OUT_MAX_CHILDREN": "0"},
            "got 0; set RHO_AGENT_FAN_OUT_MAX_DEPTH=0 to forbid fan-out",
        ),
        ({"RHO_AGENT_SWEEP_INTERVAL": "0"}, "RHO_AGENT_SWEEP_INTERVAL must be > 0 s, got 0.0"),
        ({"RHO_AGENT_SHUTDOWN_GRACE": "-5"}, "must be >= 0 seconds, got -5.0; 0 hands running"),
        ({"RHO_AGENT_HEARTBEAT_INTERVAL": "900"}, "must be between 0.1 and 300 s, got 900.0"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env({**BROKER, **env})
    assert message in str(caught.value)


def test_a_value_given_in_code_is_checked_by_the_same_rows() -> None:
    with pytest.raises(SettingsError, match="RHO_AGENT_RETENTION must be at least 60 s, got 5"):
        FleetSettings(retention_s=5)
    with pytest.raises(SettingsError, match="RHO_AGENT_HEARTBEAT_INTERVAL must be between"):
        HealthSettings(interval_s=0)


def test_parsing_through_the_table() -> None:
    settings = WorkerSettings.from_env(
        {
            **BROKER,
            "RHO_AGENT_JOB_TIME_LIMIT": "0",  # no limit
            "RHO_AGENT_WORKER_RESTARTS": "many",  # written by fleet up: ignored, not refused
            "RHO_AGENT_RETENTION": "",  # empty is unset
        }
    )
    assert settings.job_time_limit_s is None and settings.health.restarts == 0
    assert settings.fleet.retention_s == 7 * 24 * 3600
    overridden = FleetSettings.from_env({"RHO_AGENT_QUEUE": "a"}, queue="b", key_prefix=None)
    assert (overridden.queue, overridden.key_prefix) == ("b", "rho:")


def test_the_health_probe_loads_neither_the_sdk_nor_celery(tmp_path: Path) -> None:
    """The probe runs every few seconds: reading its settings must stay cheap."""
    code = f"""
import sys
from workers.health import main
assert main(["--dir", {str(tmp_path)!r}]) == 1  # no worker here: unhealthy, but it ran
light = {{"dispatch", "dispatch.settings_table"}}  # the package is lazy, the table stdlib-only
heavy = sorted(
    name for name in set(sys.modules) - light
    if name.split(".")[0] in ("dispatch", "rho_agent", "celery", "kombu", "redis", "pydantic")
)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=ROOT)
