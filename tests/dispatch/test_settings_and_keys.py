"""FleetSettings from the environment, and key names from one place."""

from __future__ import annotations

import pytest

from dispatch import FleetSettings, SettingsError
from dispatch.keys import Keys


def test_defaults_are_embedded() -> None:
    settings = FleetSettings.from_env({})
    assert settings.broker_url is None and settings.bus_url is None
    assert settings.key_prefix == "rho:"


def test_environment_and_overrides() -> None:
    env = {
        "RHO_AGENT_BROKER_URL": "redis://h:1/2",
        "RHO_AGENT_KEY_PREFIX": "x:",
        "RHO_AGENT_RETENTION": "120",
        "RHO_AGENT_QUEUE": "q",
    }
    settings = FleetSettings.from_env(env, queue="other", broker_url=None)
    assert settings.broker_url == "redis://h:1/2"
    assert settings.queue == "other"
    assert settings.retention_s == 120
    assert settings.keys.job("j") == "x:job:j"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RHO_AGENT_RETENTION": "soon"}, "RHO_AGENT_RETENTION='soon'"),
        ({"RHO_AGENT_RETENTION": "5"}, "RHO_AGENT_RETENTION must be at least 60 s, got 5"),
        ({"RHO_AGENT_KEY_PREFIX": "bad prefix"}, "prefix"),
        (
            {"RHO_AGENT_EMBEDDED_CONCURRENCY": "0"},
            "RHO_AGENT_EMBEDDED_CONCURRENCY must be at least 1",
        ),
    ],
)
def test_bad_settings_name_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        FleetSettings.from_env(env)


def test_lua_prefixes_agree_with_key_builders() -> None:
    keys = Keys("p:")
    assert keys.job_prefix() + "j1" == keys.job("j1")
    assert keys.session_prefix() + "s1" + ":owner" == keys.session_owner("s1")
    assert keys.dispatcher_prefix() + "d1" + ":done" == keys.done("d1")
    every_key = [
        keys.job("j"), keys.events("j"), keys.cancel("j"), keys.trace("s"), keys.session("s"),
        keys.sessions(), keys.jobs(), keys.leases(), keys.cancels(), keys.done("d"),
        keys.sweeper_lock(), keys.session_owner("s"),
    ]  # fmt: skip
    assert all(key.startswith("p:") for key in every_key)
    assert len(set(every_key)) == len(every_key)
