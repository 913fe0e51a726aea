"""DaytonaBackend against the fake Daytona server, through the real ``daytona`` SDK: sandbox
ownership per session, creation settings, uploads, setup commands, commands and cleanup."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from rho_agent.backends.daytona import commands
from rho_agent.backends.daytona.backend import DaytonaBackend
from rho_agent.errors import BackendError
from rho_agent.testing.fake_daytona import FakeDaytonaServer


async def test_each_session_owns_one_sandbox_and_close_deletes_only_its_own(
    fake_daytona: FakeDaytonaServer,
) -> None:
    template = DaytonaBackend()
    first, second = template.for_session(), template.for_session()
    await asyncio.gather(first.start(), second.start())
    assert first.sandbox_id != second.sandbox_id
    assert set(fake_daytona.running) == {first.sandbox_id, second.sandbox_id}

    await first.write_file(f"{first.working_dir}/mine.txt", b"first")
    assert first.working_dir != second.working_dir
    assert [e.name for e in await second.list_dir(second.working_dir)] == []

    await first.close()
    assert fake_daytona.running == [second.sandbox_id]
    assert (await second.run_command("echo still here", timeout=10)).output == "still here\n"
    await second.close()
    assert template.sandbox_id is None, "the template never owns a sandbox"


async def test_start_is_lazy_idempotent_and_safe_to_call_concurrently(
    fake_daytona: FakeDaytonaServer,
) -> None:
    backend = DaytonaBackend().for_session()
    assert fake_daytona.created == [], "nothing is created before the first use"
    await asyncio.gather(*(backend.start() for _ in range(5)))
    await backend.start()
    assert len(fake_daytona.created) == 1
    await backend.close()

    lazy = DaytonaBackend().for_session()
    result = await lazy.run_command("echo ran", timeout=10)
    assert result.output == "ran\n" and len(fake_daytona.created) == 2
    await lazy.close()


async def test_close_is_idempotent_and_final(fake_daytona: FakeDaytonaServer) -> None:
    never_started = DaytonaBackend().for_session()
    await never_started.close()
    assert fake_daytona.created == []

    backend = DaytonaBackend().for_session()
    await backend.start()
    await backend.close()
    await backend.close()
    assert fake_daytona.deleted == fake_daytona.created
    with pytest.raises(BackendError, match="closed"):
        await backend.start()
    with pytest.raises(BackendError, match="closed"):
        await backend.run_command("true", timeout=5)


async def test_async_context_manager_creates_and_deletes(fake_daytona: FakeDaytonaServer) -> None:
    async with DaytonaBackend().for_session() as backend:
        sandbox = await backend.get_sandbox()
        assert sandbox.id == backend.sandbox_id == backend.sandbox.id
        assert fake_daytona.running == [sandbox.id]
    assert fake_daytona.running == []
    assert backend.sandbox_id is None


async def test_sandbox_and_working_dir_before_start(fake_daytona: FakeDaytonaServer) -> None:
    backend = DaytonaBackend().for_session()
    with pytest.raises(BackendError, match="start"):
        _ = backend.sandbox
    with pytest.raises(BackendError, match="working dir"):
        _ = backend.working_dir
    assert DaytonaBackend(working_dir="/srv/app/").working_dir == "/srv/app"


async def test_the_create_request_carries_the_configuration(
    fake_daytona: FakeDaytonaServer,
) -> None:
    template = DaytonaBackend(
        image="python:3.12-slim",
        resources={"cpu": 2, "memory": 4, "disk": 10},
        env_vars={"MODE": "test"},
        auto_stop_interval=30,
        auto_delete_interval=5,
        labels={"team": "research"},
    )
    async with template.for_session(session_id="session-42") as backend:
        assert (await backend.run_command("echo $MODE", timeout=10)).output == "test\n"
    request = fake_daytona.sandboxes[0].request
    assert request["env"] == {"MODE": "test"}
    assert (request["autoStopInterval"], request["autoDeleteInterval"]) == (30, 5)
    assert (request["cpu"], request["memory"], request["disk"]) == (2, 4, 10)
    assert "FROM python:3.12-slim" in request["buildInfo"]["dockerfileContent"]
    assert request["labels"]["team"] == "research"
    assert request["labels"]["created-by"] == "rho-agent"
    assert request["labels"]["rho-agent-session"] == "session-42"
    assert request["name"].startswith("rho-agent-")


async def test_defaults_stop_and_delete_a_forgotten_sandbox(
    fake_daytona: FakeDaytonaServer,
) -> None:
    async with DaytonaBackend(snapshot="my-snapshot").for_session():
        pass
    request = fake_daytona.sandboxes[0].request
    assert request["snapshot"] == "my-snapshot"
    assert request["autoStopInterval"] == 15, "a crashed session's sandbox stops on its own"
    assert request["autoDeleteInterval"] == 0, "and is deleted as soon as it has stopped"


async def test_uploads_then_setup_commands_run_in_the_working_dir(
    fake_daytona: FakeDaytonaServer, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (source / "empty").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("read me\n")
    template = DaytonaBackend(
        working_dir="project",
        uploads=[f"{source}:code", (notes, "docs/notes.txt")],
        setup_commands=["cat docs/notes.txt > setup.log", "ls code/pkg >> setup.log"],
    )
    async with template.for_session() as backend:
        record = fake_daytona.sandboxes[0]
        assert backend.working_dir == f"{record.root}/project"
        log = await backend.read_file(f"{backend.working_dir}/setup.log")
        assert log == b"read me\nmod.py\n"
        listing = await backend.list_dir(f"{backend.working_dir}/code")
        assert [(e.name, e.is_dir) for e in listing] == [("empty", True), ("pkg", True)]


async def test_a_failing_setup_command_stops_the_start_and_deletes_the_sandbox(
    fake_daytona: FakeDaytonaServer,
) -> None:
    backend = DaytonaBackend(
        setup_commands=["echo ok", "echo 'no module named foo' >&2; exit 3", "echo never"]
    ).for_session()
    with pytest.raises(BackendError) as caught:
        await backend.start()
    message = str(caught.value)
    assert "setup command 2/3 exited with 3" in message
    assert "no module named foo" in message
    assert fake_daytona.running == [] and len(fake_daytona.deleted) == 1


async def test_a_setup_command_past_its_timeout_stops_the_start(
    fake_daytona: FakeDaytonaServer,
) -> None:
    backend = DaytonaBackend(setup_commands=["sleep 30"], setup_timeout=0.3).for_session()
    with pytest.raises(BackendError, match=r"timed out after 0\.3s"):
        await backend.start()
    assert fake_daytona.running == []


async def test_a_missing_upload_source_is_named(
    fake_daytona: FakeDaytonaServer, tmp_path: Path
) -> None:
    backend = DaytonaBackend(uploads={tmp_path / "absent": "x"}).for_session()
    with pytest.raises(BackendError, match="absent does not exist"):
        await backend.start()
    assert fake_daytona.running == []


async def test_forward_env_copies_variables_from_this_process(
    fake_daytona: FakeDaytonaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = DaytonaBackend(forward_env=["RHO_TEST_REGION"])
    assert "RHO_TEST_REGION" in template.to_dict()["forward_env"]
    with pytest.raises(BackendError, match="RHO_TEST_REGION"):
        await template.for_session().start()
    monkeypatch.setenv("RHO_TEST_REGION", "eu-north")
    async with template.for_session() as backend:
        result = await backend.run_command("echo $RHO_TEST_REGION", timeout=10)
    assert result.output == "eu-north\n"
    assert "eu-north" not in str(template.to_dict())


async def test_commands_get_only_allowlisted_variables(
    fake_daytona: FakeDaytonaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake sandbox's processes inherit this process's environment, as an image's would.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-openai-0123456789")
    monkeypatch.setenv("RHO_TEST_CANARY", "canary-7f3a")
    monkeypatch.setenv("RHO_TEST_TOKEN", "s3cret-forwarded")
    template = DaytonaBackend(
        forward_env=["RHO_TEST_TOKEN"], env_vars={"RHO_TEST_MODE": "fast", "X": "sk-abcdefghijkl"}
    )
    async with template.for_session() as backend:
        result = await backend.run_command("printenv", timeout=10)
    names = {line.split("=", 1)[0] for line in result.output.splitlines()}
    assert "RHO_TEST_MODE=fast" in result.output.splitlines()
    assert "PATH" in names
    for leaked in ("sk-canary", "canary-7f3a", "s3cret", "sk-abcdefghijkl", fake_daytona.api_key):
        assert leaked not in result.output
    assert not names & {"DAYTONA_API_KEY", "DAYTONA_API_URL", "OPENAI_API_KEY", "X"}


async def test_a_timed_out_command_is_killed_and_keeps_its_output(
    fake_daytona: FakeDaytonaServer,
) -> None:
    async with DaytonaBackend().for_session() as backend:
        result = await backend.run_command(
            "echo started; echo $$ > pid; sleep 30; touch survived", timeout=0.5
        )
        assert result.timed_out and result.output == "started\n"
        assert result.exit_code != 0
        pid = int((await backend.read_file(f"{backend.working_dir}/pid")).decode())
        await _wait_until_dead(pid)
        assert not await _exists(backend, "survived")


async def test_cancelling_a_command_kills_it_before_the_cancel_returns(
    fake_daytona: FakeDaytonaServer,
) -> None:
    async with DaytonaBackend().for_session() as backend:
        task = asyncio.create_task(backend.run_command("echo $$ > pid; sleep 30", timeout=60))
        pid_file = f"{backend.working_dir}/pid"
        for _ in range(100):
            if await _exists(backend, "pid"):
                break
            await asyncio.sleep(0.05)
        pid = int((await backend.read_file(pid_file)).decode())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not _alive(pid), "the sandbox command outlived the cancelled task"


async def test_long_commands_keep_the_sandbox_active(
    fake_daytona: FakeDaytonaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "keepalive_seconds", lambda minutes: 0.1)
    async with DaytonaBackend().for_session() as backend:
        result = await backend.run_command("sleep 0.6; echo done", timeout=10)
    assert result.output == "done\n"
    assert fake_daytona.sandboxes[0].activity_refreshes >= 3


async def test_command_details_match_the_local_backend(fake_daytona: FakeDaytonaServer) -> None:
    async with DaytonaBackend().for_session() as backend:
        closed_stdin = await backend.run_command("cat; echo after", timeout=5)
        assert closed_stdin.output == "after\n" and not closed_stdin.timed_out
        interleaved = await backend.run_command("echo a; echo b >&2; echo c", timeout=5)
        assert interleaved.output == "a\nb\nc\n"
        exits = await backend.run_command("cd /; exit 7", timeout=5)
        assert exits.exit_code == 7
        assert (await backend.run_command("pwd", timeout=5)).output.strip() == (
            backend.working_dir
        ), "exit/cd in one command do not leak into the next"
        elsewhere = await backend.run_command("pwd", timeout=5, cwd="/")
        assert elsewhere.output == "/\n"
        with pytest.raises(BackendError, match="does not exist"):
            await backend.run_command("true", timeout=5, cwd="/no/such/dir")


async def test_grep_without_python_in_the_image_falls_back_to_grep(
    fake_daytona: FakeDaytonaServer, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "grep", "head", "ls", "cat"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    template = DaytonaBackend(env_vars={"PATH": str(bin_dir)})
    async with template.for_session() as backend:
        assert (await backend.run_command("command -v python3 || echo none", timeout=5)).output
        await backend.write_file(f"{backend.working_dir}/a.txt", b"alpha\n-e beta\nwhere: x\n")
        matches = await backend.grep("-e b|where", backend.working_dir, include="*.txt", limit=10)
    assert [(m.line_number, m.line) for m in matches] == [(2, "-e beta"), (3, "where: x")]
    assert matches[0].path.endswith("/a.txt")


async def _exists(backend: DaytonaBackend, name: str) -> bool:
    return name in {entry.name for entry in await backend.list_dir(backend.working_dir)}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


async def _wait_until_dead(pid: int) -> None:
    for _ in range(50):
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")
