"""The fake Daytona server itself: auth, scripted failures, records, cleanup and wire details
the real SDK depends on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from rho_agent.testing._daytona_files import doublestar_regex
from rho_agent.testing.fake_daytona import OPERATIONS, FakeDaytonaServer


async def test_requests_without_the_key_are_rejected_like_the_api() -> None:
    async with FakeDaytonaServer(api_key="right") as server, aiohttp.ClientSession() as http:
        async with http.post(f"{server.api_url}/sandbox", json={}) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "Invalid credentials"
        headers = {"Authorization": "Bearer right"}
        async with http.get(f"{server.api_url}/sandbox/nope", headers=headers) as response:
            assert response.status == 404
    assert server.requests == [("POST", "/api/sandbox"), ("GET", "/api/sandbox/nope")]


def test_scripting_rejects_unknown_operations() -> None:
    server = FakeDaytonaServer()
    with pytest.raises(ValueError, match="unknown operation 'creat'"):
        server.fail("creat", 500, "x")
    assert {"create", "session_exec", "upload", "download"} <= OPERATIONS
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.api_url


async def test_the_sdk_sees_scripted_failures_once_then_normal_answers() -> None:
    from daytona import AsyncDaytona, DaytonaConfig, DaytonaRateLimitError

    async with FakeDaytonaServer() as server:
        config = DaytonaConfig(api_key=server.api_key, api_url=server.api_url)
        async with AsyncDaytona(config) as client:
            server.fail("create", 429, "slow down", times=2)
            for _ in range(2):
                with pytest.raises(DaytonaRateLimitError, match="slow down"):
                    await client.create()
            sandbox = await client.create()
            response = await sandbox.process.exec("echo $HOME; exit 2")
            assert (response.exit_code, response.result) == (2, f"{server.sandboxes[0].root}\n")
            await sandbox.fs.upload_file(b"needle here\nhay\n", "notes/a.txt")
            matches = await sandbox.fs.find_files(str(server.sandboxes[0].root), "needle")
            assert [(m.line, m.content) for m in matches] == [(1, "needle here")]
            await sandbox.delete()
        assert server.running == [] and server.deleted == [sandbox.id]


async def test_stop_kills_sandbox_processes_but_keeps_the_records(tmp_path: Path) -> None:
    from daytona import AsyncDaytona, DaytonaConfig, SessionExecuteRequest

    server = await asyncio.to_thread(FakeDaytonaServer(root=tmp_path).start)
    try:
        config = DaytonaConfig(api_key=server.api_key, api_url=server.api_url)
        async with AsyncDaytona(config) as client:
            sandbox = await client.create()
            await sandbox.process.create_session("s")
            request = SessionExecuteRequest(command="echo $$ > pid; sleep 60", run_async=True)
            await sandbox.process.execute_session_command("s", request)
            pid_file = server.sandboxes[0].root / "pid"
            for _ in range(100):
                if pid_file.exists() and pid_file.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            pid = int(pid_file.read_text())
    finally:
        await asyncio.to_thread(server.stop)
    assert _state(pid) in ("gone", "Z"), "stop() must kill what sandboxes still run"
    assert server.running == [sandbox.id], "a sandbox the client never deleted stays recorded"
    assert not server.sandboxes[0].root.exists()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("*.py", "a.py", True),
        ("*.py", "src/a.py", False),
        ("**/*.py", "a.py", True),
        ("**/*.py", "src/deep/a.py", True),
        ("src/**", "src/x/y", True),
        ("*.{py,md}", "notes.md", True),
        ("?.txt", "ab.txt", False),
        ("[!a]*.txt", "b.txt", True),
        ("[!a]*.txt", "a.txt", False),
        (".*", ".env", True),
    ],
)
def test_search_matches_like_the_daemons_doublestar(pattern: str, path: str, matches: bool) -> None:
    assert bool(doublestar_regex(pattern).fullmatch(path)) is matches
