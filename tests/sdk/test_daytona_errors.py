"""Daytona failures become BackendErrors that say what to fix, and never leave a sandbox behind."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.errors import BackendError
from rho_agent.testing.fake_daytona import FakeDaytonaServer


async def test_a_rejected_api_key_says_which_variable_to_fix(
    fake_daytona: FakeDaytonaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAYTONA_API_KEY", "wrong-key")
    with pytest.raises(BackendError, match=r"DAYTONA_API_KEY rejected \(401\): set a valid key"):
        await DaytonaBackend().for_session().start()
    assert fake_daytona.created == []


async def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAYTONA_API_KEY", "DAYTONA_JWT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BackendError, match="no Daytona credentials: set DAYTONA_API_KEY"):
        await DaytonaBackend().for_session().start()


async def test_a_daytona_config_object_supplies_credentials(
    fake_daytona: FakeDaytonaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daytona import DaytonaConfig

    monkeypatch.delenv("DAYTONA_API_KEY")
    monkeypatch.delenv("DAYTONA_API_URL")
    config = DaytonaConfig(api_key=fake_daytona.api_key, api_url=fake_daytona.api_url)
    template = DaytonaBackend(daytona_config=config)
    async with template.for_session() as backend:
        assert (await backend.run_command("echo ok", timeout=5)).output == "ok\n"
    assert fake_daytona.api_key not in repr(template) + str(template.to_dict())


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (403, "Total CPU quota exceeded. Maximum allowed: 4", "quota exceeded"),
        (429, "Too many requests", r"rate limited \(429\)"),
        (403, "Forbidden resource", r"access denied \(403\)"),
        (400, "Invalid build info", "Invalid build info"),
        (404, "Snapshot nope not found", r"not found \(.*Snapshot nope.*Check the snapshot"),
    ],
)
async def test_create_failures_explain_themselves(
    fake_daytona: FakeDaytonaServer, status: int, message: str, expected: str
) -> None:
    fake_daytona.fail("create", status, message)
    with pytest.raises(BackendError, match=expected) as caught:
        await DaytonaBackend().for_session().start()
    assert "creating a sandbox" in str(caught.value)
    assert fake_daytona.created == []


async def test_a_sandbox_that_fails_to_start_is_deleted(fake_daytona: FakeDaytonaServer) -> None:
    fake_daytona.start_error = "image pull failed: manifest unknown"
    with pytest.raises(BackendError, match=r"failed to start and was deleted.*manifest unknown"):
        await DaytonaBackend(image="no/such:image").for_session().start()
    assert len(fake_daytona.created) == 1 and fake_daytona.running == []


async def test_a_slow_start_is_waited_for(fake_daytona: FakeDaytonaServer) -> None:
    fake_daytona.start_delay = 0.3
    async with DaytonaBackend().for_session() as backend:
        assert (await backend.run_command("echo up", timeout=5)).output == "up\n"


async def test_a_start_past_create_timeout_fails_and_deletes_the_sandbox(
    fake_daytona: FakeDaytonaServer,
) -> None:
    fake_daytona.start_delay = 30
    with pytest.raises(BackendError, match=r"did not start within create_timeout=0\.5s"):
        await DaytonaBackend(create_timeout=0.5).for_session().start()
    assert len(fake_daytona.created) == 1 and fake_daytona.running == []


async def test_cancelling_a_start_deletes_the_half_created_sandbox(
    fake_daytona: FakeDaytonaServer,
) -> None:
    fake_daytona.start_delay = 30
    backend = DaytonaBackend().for_session()
    task = asyncio.create_task(backend.start())
    for _ in range(200):
        if fake_daytona.created:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake_daytona.created) == 1 and fake_daytona.running == []


async def test_a_sandbox_deleted_behind_our_back_is_a_clear_error(
    fake_daytona: FakeDaytonaServer,
) -> None:
    backend = DaytonaBackend().for_session()
    await backend.start()
    assert backend.sandbox_id is not None
    fake_daytona.forget(backend.sandbox_id)
    with pytest.raises(BackendError, match="no longer exists"):
        await backend.run_command("true", timeout=5)
    with pytest.raises(BackendError, match="no longer exists"):
        await backend.read_file(f"{backend.working_dir}/x")
    await backend.close()


async def test_daemon_errors_during_commands_are_backend_errors(
    fake_daytona: FakeDaytonaServer,
) -> None:
    async with DaytonaBackend().for_session() as backend:
        fake_daytona.fail("session_exec", 500, "daemon exploded")
        with pytest.raises(BackendError, match="daemon exploded"):
            await backend.run_command("true", timeout=5)
        fake_daytona.fail("upload", 500, "disk full")
        with pytest.raises(BackendError, match="writing"):
            await backend.write_file(f"{backend.working_dir}/x", b"data")
        assert (await backend.run_command("echo fine", timeout=5)).output == "fine\n"


async def test_without_the_daytona_package_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "daytona", None)
    with pytest.raises(BackendError, match=r"pip install 'rho-agent\[daytona\]'"):
        await DaytonaBackend().for_session().start()


def test_importing_the_backend_does_not_import_daytona() -> None:
    code = (
        "import sys; from rho_agent.backends.daytona.backend import DaytonaBackend; "
        "b = DaytonaBackend(image='python:3.12', uploads=['src:src']).for_session(); "
        "b.to_dict(); assert 'daytona' not in sys.modules, 'daytona imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


async def test_a_failed_delete_on_close_is_reported(fake_daytona: FakeDaytonaServer) -> None:
    backend = DaytonaBackend().for_session()
    await backend.start()
    sandbox_id = backend.sandbox_id
    assert sandbox_id is not None
    fake_daytona.fail("delete", 500, "storage backend unavailable")
    expected = r"deleting the sandbox.*storage backend unavailable.*may still exist"
    with pytest.raises(BackendError, match=expected):
        await backend.close()
    assert fake_daytona.running == [sandbox_id]
    await backend.close()  # closed is closed: no second attempt, no error
    fake_daytona.forget(sandbox_id)


async def test_a_sandbox_already_gone_at_close_is_fine(fake_daytona: FakeDaytonaServer) -> None:
    backend = DaytonaBackend().for_session()
    await backend.start()
    assert backend.sandbox_id is not None
    fake_daytona.forget(backend.sandbox_id)
    await backend.close()
