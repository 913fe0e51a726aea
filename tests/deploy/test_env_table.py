"""deploy/README.md's table of environment variables matches the code, both ways."""

from __future__ import annotations

from tests.deploy._deploy import documented, read_by_code, settings_tables


def test_every_variable_the_code_reads_is_documented() -> None:
    missing = read_by_code() - set(documented())
    assert not missing, f"add these to the table in deploy/README.md: {sorted(missing)}"


def test_every_documented_variable_is_read_by_the_code_or_by_flower() -> None:
    from flower.options import options

    for name in documented():
        if name.startswith("FLOWER_"):
            option = name.removeprefix("FLOWER_").lower()
            assert {option, option.replace("_", "-")} & set(options._options), name
        else:
            assert name in read_by_code(), f"{name} is documented but nothing reads it"


def test_documented_defaults_are_the_settings_defaults() -> None:
    table = documented()
    for name, default, _meaning in settings_tables():
        assert name in table, f"{name} is missing from deploy/README.md"
        assert table[name] == default.strip("`"), f"{name}: README says {table[name]!r}"


def test_the_settings_tables_state_the_real_defaults() -> None:
    from workers.health import HealthSettings
    from workers.worker_settings import SETTINGS, WorkerSettings

    defaults = {setting.name: setting.default_text for setting in SETTINGS}
    assert float(defaults["RHO_AGENT_HEARTBEAT_INTERVAL"]) == HealthSettings().interval_s
    broker = {"RHO_AGENT_BROKER_URL": "redis://127.0.0.1:6379/0"}
    grace = WorkerSettings.from_env(broker).shutdown_grace_s
    assert float(defaults["RHO_AGENT_SHUTDOWN_GRACE"]) == grace
    assert HealthSettings().health_dir.name == "rho-agent-health"
