"""Worker settings from the environment, and the Celery app they configure."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.app.utils import find_app
from kombu.utils.imports import symbol_by_name

import workers
from dispatch import SettingsError
from dispatch.fleet.celery_broker import RUN_JOB_TASK
from rho_agent import Agent, AgentConfig, ModelPrice
from rho_agent.ratelimits import RateLimit
from workers.celery_app import create_app, worker_config
from workers.health import HealthSettings
from workers.parked_pool import POOL_PATH, ParkedPool
from workers.worker_settings import SETTINGS, WorkerSettings

BROKER = {"RHO_AGENT_BROKER_URL": "redis://127.0.0.1:6379/0"}
ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    settings = WorkerSettings.from_env(BROKER)
    assert (settings.concurrency, settings.max_profile, settings.lease_ttl_s) == (
        500,
        "developer",
        20,
    )
    assert settings.job_time_limit_s == 3600 and settings.worker_name
    assert settings.ceiling().name == "developer"


def test_every_variable_is_read() -> None:
    env = {
        **BROKER,
        "RHO_AGENT_REDIS_URL": "redis://127.0.0.1:6379/1",
        "RHO_AGENT_KEY_PREFIX": "p:",
        "RHO_AGENT_QUEUE": "jobs",
        "RHO_AGENT_SENTINEL_MASTER": "m1",
        "RHO_AGENT_RETENTION": "3600",
        "RHO_AGENT_EVENTS_MAXLEN": "500",
        "RHO_AGENT_WORKER_CONCURRENCY": "40",
        "RHO_AGENT_MAX_PROFILE": "readonly",
        "RHO_AGENT_JOB_TIME_LIMIT": "0",
        "RHO_AGENT_LEASE_TTL": "5",
        "RHO_AGENT_SWEEP_INTERVAL": "1.5",
        "RHO_AGENT_MAX_ATTEMPTS": "2",
        "RHO_AGENT_QUEUED_LEASE": "90",
        "RHO_AGENT_APPROVAL_TTL": "1800",
        "RHO_AGENT_VISIBILITY_TIMEOUT": "7200",
        "RHO_AGENT_WORKER_NAME": "w9",
        "RHO_AGENT_AGENT_FACTORY": "tests.integration.fleet:agent_with_mark_tool",
        "RHO_AGENT_EMBEDDED_CONCURRENCY": "3",
        "RHO_AGENT_EMBEDDED_KEEP": "250",
        "RHO_AGENT_REDIS_OUTAGE_LIMIT": "30",
        "RHO_AGENT_ALLOWED_BASE_URLS": "http://127.0.0.1:9/v1/, https://Models.Example/v1",
        "RHO_AGENT_PRICES": '{"my-llama": {"input": 1, "output": 2}}',
        "RHO_AGENT_RATE_LIMITS": '[{"model": "my-llama", "requests": 30, "window_s": 6}]',
        "RHO_AGENT_FAN_OUT_MAX_DEPTH": "0",
        "RHO_AGENT_FAN_OUT_MAX_CHILDREN": "7",
        "RHO_AGENT_SHUTDOWN_GRACE": "12.5",
        "RHO_AGENT_HEARTBEAT_INTERVAL": "0.5",
        "RHO_AGENT_HEALTH_DIR": "health-files",
        "RHO_AGENT_WORKER_RESTARTS": "2",
    }
    assert set(env) == {setting.name for setting in SETTINGS}, "the whole table"
    settings = WorkerSettings.from_env(env)
    assert settings.shutdown_grace_s == 12.5
    assert settings.health == HealthSettings(0.5, Path("health-files"), 2, "w9")
    fleet = settings.fleet
    assert (fleet.bus_url, fleet.key_prefix, fleet.queue) == (
        env["RHO_AGENT_REDIS_URL"],
        "p:",
        "jobs",
    )
    assert (fleet.retention_s, fleet.events_maxlen, fleet.embedded_concurrency) == (3600, 500, 3)
    assert fleet.redis_outage_s == 30
    assert fleet.embedded_keep == 250
    assert (fleet.queued_lease_s, fleet.approval_ttl_s, fleet.sentinel_master) == (90, 1800, "m1")
    assert (fleet.fan_out_max_depth, fleet.fan_out_max_children) == (0, 7)
    assert (settings.concurrency, settings.max_profile, settings.job_time_limit_s) == (
        40,
        "readonly",
        None,
    )
    assert (settings.lease_ttl_s, settings.sweep_interval_s, settings.max_attempts) == (5, 1.5, 2)
    assert (settings.visibility_timeout_s, settings.worker_name) == (7200, "w9")
    assert settings.allowed_base_urls == ("http://127.0.0.1:9/v1", "https://models.example/v1")
    agent = settings.build_agent()(AgentConfig(model="my-llama"))
    assert "mark" in agent.registry.names  # the factory built it
    assert agent.price_table.price("my-llama") == ModelPrice(1, 1, 2)
    assert settings.rate_limits == (RateLimit(model="my-llama", requests=30, window_s=6),)


def test_bad_rate_limits_name_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"RHO_AGENT_RATE_LIMITS\[0\] sets neither"):
        WorkerSettings.from_env({**BROKER, "RHO_AGENT_RATE_LIMITS": '[{"model": "m"}]'})
    with pytest.raises(SettingsError, match=r"RHO_AGENT_RATE_LIMITS='/nope\.yaml': no such file"):
        WorkerSettings.from_env({**BROKER, "RHO_AGENT_RATE_LIMITS": "/nope.yaml"})


def test_fleet_prices_win_over_the_catalogue_and_the_job_config(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpt-5-mini: {input: 9, cached_input: 1, output: 90}\n", encoding="utf-8")
    settings = WorkerSettings.from_env({**BROKER, "RHO_AGENT_PRICES": str(prices)})
    job_config = AgentConfig(extras={"prices": {"gpt-5-mini": {"input": 0, "output": 0}}})
    agent = settings.build_agent()(job_config)
    assert agent.price_table.price("gpt-5-mini") == ModelPrice(9, 1, 90)
    assert Agent(job_config).price_table.price("gpt-5-mini") == ModelPrice(0, 0, 0)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('{"my-llama": {"input": -1, "output": 2}}', "'my-llama'"),
        ('{"my-llama": {"in": 1}', "not valid JSON"),
        ("no-such-prices.yaml", "no such file"),
    ],
)
def test_bad_fleet_prices_fail_at_start_naming_the_variable(value: str, named: str) -> None:
    with pytest.raises(SettingsError, match="RHO_AGENT_PRICES") as caught:
        WorkerSettings.from_env({**BROKER, "RHO_AGENT_PRICES": value})
    assert named in str(caught.value)


def test_the_docs_table_is_the_settings_table() -> None:
    docs = (ROOT / "docs" / "fleet.md").read_text(encoding="utf-8")
    heading = "Every variable a worker reads (`workers.worker_settings.SETTINGS`"
    lines = docs.split(heading, 1)[1].split("\n\n", 2)[1].splitlines()
    rows = [f"| `{s.name}` | `{s.default_text}` | {s.doc} |" for s in SETTINGS]
    assert lines == ["| variable | default | meaning |", "|---|---|---|", *rows], (
        "docs/fleet.md's table must show workers.worker_settings.SETTINGS, row for row"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "a worker needs a broker"),
        ({**BROKER, "RHO_AGENT_MAX_PROFILE": "godmode"}, "RHO_AGENT_MAX_PROFILE='godmode'"),
        ({**BROKER, "RHO_AGENT_LEASE_TTL": "0.1"}, "RHO_AGENT_LEASE_TTL"),
        ({**BROKER, "RHO_AGENT_WORKER_CONCURRENCY": "lots"}, "not a whole number"),
        ({**BROKER, "RHO_AGENT_AGENT_FACTORY": "nowhere:thing"}, "cannot be imported"),
    ],
)
def test_bad_settings_fail_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        WorkerSettings.from_env(env)
    assert message in str(caught.value)


def test_celery_config_is_json_only_late_ack_and_the_parked_pool() -> None:
    config = worker_config(WorkerSettings.from_env({**BROKER, "RHO_AGENT_QUEUE": "jobs"}))
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert (config["worker_pool"], config["worker_concurrency"]) == (POOL_PATH, 500)
    assert symbol_by_name(POOL_PATH) is ParkedPool
    assert config["broker_transport_options"] == {"visibility_timeout": 3600}
    assert config["task_default_queue"] == "jobs"
    assert not config["worker_send_task_events"], "-E or Flower turn them on"


def test_celery_finds_the_app_by_package_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHO_AGENT_BROKER_URL", BROKER["RHO_AGENT_BROKER_URL"])
    workers.get_app.cache_clear()
    try:
        app = find_app("workers")
        assert app is workers.app
        assert RUN_JOB_TASK in app.tasks
    finally:
        workers.get_app.cache_clear()


def test_create_app_uses_given_settings() -> None:
    app = create_app(WorkerSettings.from_env({**BROKER, "RHO_AGENT_WORKER_CONCURRENCY": "7"}))
    other = create_app(WorkerSettings.from_env(BROKER))
    assert app.conf.worker_concurrency == 7
    assert app.tasks[RUN_JOB_TASK].name == "rho_agent.run_job"
    task, other_task = app.tasks[RUN_JOB_TASK], other.tasks[RUN_JOB_TASK]
    assert task._decorated_fun is not other_task._decorated_fun, "each app runs its own host"
