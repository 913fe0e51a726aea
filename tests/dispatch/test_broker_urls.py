"""Broker and bus URLs: which kinds the settings accept, what Celery is told for each, and how a
``sentinel://`` URL is read (as kombu reads it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.errors import SettingsError
from dispatch.fleet.celery_broker import celery_config, transport_options
from dispatch.fleet.transport import TRANSPORT_PATH
from dispatch.settings import FleetSettings
from dispatch.urls import parse_sentinel_url, redact_url, url_kind
from workers.celery_app import worker_config
from workers.ops.local_fleet import LocalFleet, LocalFleetError, LocalFleetOptions
from workers.worker_settings import WorkerSettings

AMQP = "amqp://guest:guest@127.0.0.1:5672/jobs"
BUS = "redis://127.0.0.1:6379/3"
SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2;sentinel://10.0.0.3:26380"


def test_an_amqp_broker_without_a_redis_bus_is_refused_with_the_fix() -> None:
    with pytest.raises(SettingsError) as raised:
        FleetSettings(broker_url=AMQP)
    assert "RHO_AGENT_REDIS_URL" in str(raised.value)
    assert "guest" not in str(raised.value)
    with pytest.raises(SettingsError, match="amqp:// broker carries jobs only"):
        FleetSettings.from_env({"RHO_AGENT_BROKER_URL": AMQP})


def test_an_amqp_url_as_the_bus_is_refused() -> None:
    with pytest.raises(SettingsError, match="RHO_AGENT_REDIS_URL must name a Redis"):
        FleetSettings(broker_url=AMQP, redis_url="amqp://127.0.0.1/x")


def test_an_unknown_scheme_is_named_without_echoing_the_password() -> None:
    with pytest.raises(SettingsError) as raised:
        FleetSettings(broker_url="kafka://user:hunter2@host:9092")
    message = str(raised.value)
    assert "RHO_AGENT_BROKER_URL" in message and "'kafka'" in message
    assert "hunter2" not in message


def test_an_amqp_broker_with_a_redis_bus_reads_from_the_environment() -> None:
    settings = FleetSettings.from_env(
        {
            "RHO_AGENT_BROKER_URL": AMQP,
            "RHO_AGENT_REDIS_URL": BUS,
            "RHO_AGENT_SENTINEL_MASTER": "jobs",
        }
    )
    assert (settings.broker_kind, settings.bus_url, settings.sentinel_master) == (
        "amqp",
        BUS,
        "jobs",
    )


def test_amqp_uses_quorum_queues_and_publisher_confirms_and_kombus_own_transport() -> None:
    config = celery_config(FleetSettings(broker_url=AMQP, redis_url=BUS))
    assert "broker_transport" not in config, "our Redis transport subclass is for redis:// only"
    assert config["task_default_queue_type"] == "quorum"
    assert config["task_create_missing_queue_type"] == "quorum"
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_transport_options"] == {"confirm_publish": True}


def test_a_worker_on_amqp_acks_late_with_prefetch_one_and_no_visibility_timeout() -> None:
    settings = WorkerSettings(fleet=FleetSettings(broker_url=AMQP, redis_url=BUS))
    config = worker_config(settings)
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"] == {"confirm_publish": True}


def test_redis_brokers_keep_our_transport_and_the_visibility_timeout() -> None:
    settings = FleetSettings(broker_url=BUS)
    assert celery_config(settings)["broker_transport"] == TRANSPORT_PATH
    assert "task_default_queue_type" not in celery_config(settings)
    assert transport_options(settings, visibility_timeout_s=60) == {"visibility_timeout": 60}
    assert "broker_transport" not in celery_config(FleetSettings(broker_url="rediss://h:6380/0"))


def test_sentinel_brokers_get_the_master_name_and_kombus_sentinel_transport() -> None:
    settings = FleetSettings(broker_url=SENTINELS, sentinel_master="fleet")
    config = celery_config(settings)
    assert "broker_transport" not in config
    assert config["broker_transport_options"] == {"master_name": "fleet"}
    worker = worker_config(WorkerSettings(fleet=settings, visibility_timeout_s=90))
    assert worker["broker_transport_options"] == {"master_name": "fleet", "visibility_timeout": 90}
    assert settings.bus_url == SENTINELS, "one Sentinel URL serves the broker and the bus"


def test_a_sentinel_url_is_read_as_kombu_reads_it() -> None:
    parsed = parse_sentinel_url(SENTINELS, "RHO_AGENT_BROKER_URL")
    assert parsed.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert (parsed.db, parsed.username, parsed.password) == (2, None, "s3cret")
    assert url_kind(SENTINELS, "x") == "sentinel"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sentinel://h:1;redis://h:2", "must start with sentinel://"),
        ("sentinel://:26379", "has no host"),
        ("sentinel://h:port", "not a number"),
        ("sentinel://h:1/zero", "database after the first address"),
    ],
)
def test_a_bad_sentinel_url_names_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(SettingsError, match=complaint):
        FleetSettings(broker_url="redis://127.0.0.1:6379/0", redis_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hun/ter2@127.0.0.1:6379/0",  # an unencoded '/' ends the address early
        "redis://user:hun#ter2@127.0.0.1:6379/0",
        "redis://user:hunter2@127.0.0.1:99999/0",
        "redis://user:hunter2@[::1/0",
        "amqp://user:hun?ter2@127.0.0.1:5672/jobs",
    ],
)
def test_a_malformed_address_is_refused_without_echoing_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as raised:
        FleetSettings(broker_url=url, redis_url=BUS)
    message = str(raised.value)
    assert "RHO_AGENT_BROKER_URL" in message and "percent-encode" in message
    assert "hun" not in message


def test_fleet_up_on_amqp_checks_the_redis_bus_and_never_prints_a_password(tmp_path: Path) -> None:
    options = LocalFleetOptions(
        broker_url="amqp://rho:s3cret@127.0.0.1:5672/jobs",
        flower_port=None,
        run_dir=tmp_path,
        env={"RHO_AGENT_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"},
    )
    with pytest.raises(LocalFleetError) as raised:
        LocalFleet(options).start()
    assert str(raised.value) == "no Redis answers at redis://:***@127.0.0.1:1/0"
    without_bus = LocalFleetOptions(broker_url=AMQP, flower_port=None, run_dir=tmp_path, env={})
    with pytest.raises(SettingsError, match="RHO_AGENT_REDIS_URL"):
        LocalFleet(without_bus).start()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:p@ss@h:6379/0", "redis://u:***@h:6379/0"),  # redis-py reads password p@ss
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        (
            "sentinel://:pw@h1:26379;sentinel://h2:26379",
            "sentinel://:***@h1:26379;sentinel://h2:26379",
        ),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_redact_url_masks_the_whole_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
