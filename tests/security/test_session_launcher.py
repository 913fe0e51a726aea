"""The confined launcher: each command narrows its own writes and signals, and the launcher is
shared only by sessions with the same policy and working directory, dying with the last of them
(or with the worker)."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import BackendError
from rho_agent.permissions import PermissionProfile, load_profile
from rho_agent.sandbox import LauncherPool, probe

pytestmark = pytest.mark.skipif(
    probe().problem is not None, reason=f"no OS confinement here: {probe().problem}"
)

READONLY = load_profile("readonly")
DEVELOPER = load_profile("developer")


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(str(tmp_path / "work"), launchers=LauncherPool())
    await local.start()
    try:
        yield local
    finally:
        await local.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _dead_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


async def _eventually(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not hold within 10 s")


def _launcher_pids(backend: LocalBackend) -> list[int]:
    return [launcher.pid for launcher in backend._pool._launchers.values()]


async def test_a_command_cannot_write_beside_its_scratch_dir(backend: LocalBackend) -> None:
    """The launcher may write anywhere in the session's scratch root; each command only in its
    own directory there, so one call cannot plant files for (or read-modify) another."""
    result = await backend.run_command(
        'echo ok > "$TMPDIR/mine" && cat "$TMPDIR/mine"; echo x > "$(dirname "$TMPDIR")/other"',
        timeout=10,
        profile=READONLY,
    )
    assert result.output.startswith("ok\n")
    assert "Permission denied" in result.output and result.exit_code != 0


async def test_developer_writes_the_working_dir_and_not_the_scratch_root(
    backend: LocalBackend,
) -> None:
    result = await backend.run_command(
        'echo hi > made && echo x > "$(dirname "$TMPDIR")/other"',
        timeout=10,
        profile=DEVELOPER,
    )
    assert (Path(backend.working_dir) / "made").read_text() == "hi\n"
    assert "Permission denied" in result.output


async def test_a_command_cannot_signal_another_commands_processes(backend: LocalBackend) -> None:
    first = await backend.run_command("sleep 60 & echo $!", timeout=10, profile=READONLY)
    pid = int(first.output)
    second = await backend.run_command(f"kill -9 {pid}; echo $?", timeout=10, profile=READONLY)
    assert "Operation not permitted" in second.output
    assert _alive(pid)


@pytest.mark.parametrize("profile", [READONLY, DEVELOPER], ids=["readonly", "developer"])
async def test_a_command_cannot_change_the_limits_of_a_process_outside(
    tmp_path: Path, profile: PermissionProfile
) -> None:
    local = LocalBackend(str(tmp_path), launchers=LauncherPool())
    # stands for the worker: same user, outside the sandbox
    worker = await asyncio.create_subprocess_exec("sleep", "60")
    before = _limits(worker.pid)
    try:
        result = await local.run_command(
            f"prlimit --pid {worker.pid} --nofile=7:7 --cpu=1:1; echo rc=$?; "
            "ulimit -n 64; echo own=$?; ulimit -n",  # its own limits: allowed
            timeout=10,
            profile=profile,
        )
        assert _limits(worker.pid) == before, result.output
        assert "rc=1" in result.output and "own=0\n64" in result.output
    finally:
        worker.kill()
        await worker.wait()
        await local.close()


def _limits(pid: int) -> str:
    return Path(f"/proc/{pid}/limits").read_text()


async def test_readonly_leaves_no_sysv_ipc_object_or_kernel_key(backend: LocalBackend) -> None:
    add_key_nr, keyctl_nr = {"x86_64": (248, 250), "aarch64": (217, 219)}[os.uname().machine]
    add_key = (
        'python3 -c "import ctypes; libc = ctypes.CDLL(None); '
        f"print('key', libc.syscall({add_key_nr}, b'user', b'rho-test', b'x', 1, -4))\""
    )
    result = await backend.run_command(
        f"ipcmk -Q; echo ipc=$?; {add_key}", timeout=10, profile=READONLY
    )
    made = dict(line.rsplit(maxsplit=1) for line in result.output.splitlines() if " " in line)
    try:
        assert "ipc=1" in result.output and made.get("key") == "-1", result.output
    finally:  # what a failing run made: the queue, and the key in the user keyring (-4)
        if made.get("Message queue id:", "").isdigit():
            await (
                await asyncio.create_subprocess_exec("ipcrm", "-q", made["Message queue id:"])
            ).wait()
        if made.get("key", "-1") != "-1":
            ctypes.CDLL(None).syscall(keyctl_nr, 9, int(made["key"]), -4)  # KEYCTL_UNLINK


async def test_a_command_cannot_signal_or_read_the_launcher(backend: LocalBackend) -> None:
    result = await backend.run_command(
        "kill -STOP $PPID; echo kill=$?; cat /proc/$PPID/environ; echo read=$?; "
        "readlink /proc/$PPID/fd/0 /proc/$PPID/cwd; echo fds=$?",
        timeout=10,
        profile=READONLY,
    )
    assert "kill=1" in result.output and "read=1" in result.output
    assert "fds=1" in result.output
    assert _launcher_pids(backend) and all(_alive(pid) for pid in _launcher_pids(backend))


async def test_timeout_kills_the_whole_group(backend: LocalBackend) -> None:
    result = await backend.run_command(
        "sleep 60 & echo $! > bg; sleep 60", timeout=0.5, profile=DEVELOPER
    )
    assert result.timed_out and result.exit_code == -signal.SIGKILL
    background = int((Path(backend.working_dir) / "bg").read_text())
    assert await asyncio.to_thread(_dead_within, background, 3.0)


async def test_cancelling_kills_the_command(backend: LocalBackend) -> None:
    marker = Path(backend.working_dir) / "pid"
    task = asyncio.create_task(
        backend.run_command("echo $$ > pid; exec sleep 60", timeout=60, profile=DEVELOPER)
    )
    await _eventually(lambda: marker.exists() and bool(marker.read_text().strip()))
    pid = int(marker.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(_dead_within, pid, 3.0)


async def test_shared_only_by_the_same_policy_and_working_dir(tmp_path: Path) -> None:
    pool = LauncherPool()
    first, same_dir, other_dir = (
        LocalBackend(str(tmp_path / name), launchers=pool) for name in ("a", "a", "b")
    )
    for backend in (first, same_dir, other_dir):
        await backend.start()
        for profile in (READONLY, DEVELOPER, READONLY):
            result = await backend.run_command("true", timeout=10, profile=profile)
            assert result.exit_code == 0
    launchers = {key: launcher.pid for key, launcher in pool._launchers.items()}
    assert len(launchers) == len(set(launchers.values())) == 4
    in_a = [pid for (_, directory), pid in launchers.items() if directory.endswith("a")]
    in_b = [pid for (_, directory), pid in launchers.items() if directory.endswith("b")]
    await first.close()
    assert all(_alive(pid) for pid in launchers.values())
    assert (await same_dir.run_command("echo still", timeout=10, profile=READONLY)).exit_code == 0
    await same_dir.close()
    assert await asyncio.to_thread(lambda: all(_dead_within(pid, 5.0) for pid in in_a))
    assert all(_alive(pid) for pid in in_b)
    await other_dir.close()
    assert await asyncio.to_thread(lambda: all(_dead_within(pid, 5.0) for pid in in_b))


async def test_close_kills_the_launcher_and_its_running_commands(
    backend: LocalBackend,
) -> None:
    task = asyncio.create_task(
        backend.run_command("echo $$ > $TMPDIR/p; sleep 60", timeout=60, profile=READONLY)
    )
    await _eventually(lambda: bool(_launcher_pids(backend)))
    launcher = _launcher_pids(backend)[0]
    await asyncio.sleep(0.3)
    await backend.close()
    assert not _alive(launcher)
    with pytest.raises(BackendError, match="launcher stopped"):
        await asyncio.wait_for(task, 5)


async def test_a_dead_launcher_is_replaced(backend: LocalBackend) -> None:
    await backend.run_command("true", timeout=10, profile=READONLY)
    (launcher,) = _launcher_pids(backend)
    os.kill(launcher, signal.SIGKILL)
    assert await asyncio.to_thread(_dead_within, launcher, 3.0)
    result = await backend.run_command("echo again", timeout=10, profile=READONLY)
    assert result.output == "again\n"
    assert _launcher_pids(backend) != [launcher]


_OWNER = textwrap.dedent(
    """
    import asyncio, sys
    from rho_agent.backends.local import LocalBackend
    from rho_agent.permissions import load_profile

    async def main():
        backend = LocalBackend(sys.argv[1])
        pool = backend._pool
        asyncio.create_task(
            backend.run_command("sleep 300; true", timeout=600,
                                profile=load_profile("readonly"))
        )
        while not pool._launchers:
            await asyncio.sleep(0.02)
        print(next(iter(pool._launchers.values())).pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_the_launcher_and_its_commands_die_with_the_worker(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert owner.stdout is not None
        launcher = int(owner.stdout.readline())
        children = Path(f"/proc/{launcher}/task/{launcher}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.05)
        (command,) = map(int, children.read_text().split())
        assert _alive(command)
    finally:
        owner.kill()
        owner.wait()
    assert _dead_within(launcher, 5.0)
    assert _dead_within(command, 5.0)


_FORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from rho_agent.backends.local import LocalBackend
    from rho_agent.permissions import load_profile
    from rho_agent.sandbox import LauncherPool

    async def main():
        backend = LocalBackend(sys.argv[1])
        await backend.run_command("true", timeout=10, profile=load_profile("readonly"))
        (launcher,) = LauncherPool.shared()._launchers.values()
        child = os.fork()
        if child == 0:
            empty = not LauncherPool.shared()._launchers and launcher._control.fileno() == -1
            os._exit(0 if empty else 1)
        _, status = os.waitpid(child, 0)
        print(os.waitstatus_to_exitcode(status), launcher.alive, flush=True)
        await backend.close()
        print(launcher.alive, flush=True)

    asyncio.run(main())
    """
)


def test_a_forked_child_lets_go_of_the_parents_launchers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FORKER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.stdout.split() == ["0", "True", "False"], done.stderr


async def test_a_launcher_that_stops_reading_does_not_block_the_loop(
    backend: LocalBackend,
) -> None:
    """Requests that fill the launcher's socket buffer wait in a thread, not in the loop."""
    await backend.run_command("true", timeout=10, profile=READONLY)
    (launcher,) = _launcher_pids(backend)
    os.kill(launcher, signal.SIGSTOP)
    resume = threading.Timer(3.0, os.kill, (launcher, signal.SIGCONT))
    resume.start()
    try:
        large = "echo x; : " + "y" * 20000
        tasks = [
            asyncio.create_task(backend.run_command(large, timeout=60, profile=READONLY))
            for _ in range(40)
        ]
        started = time.monotonic()
        await asyncio.sleep(0.2)
        assert time.monotonic() - started < 2.0, "the event loop was blocked"
        results = await asyncio.gather(*tasks)
    finally:
        resume.join()
    assert [result.output for result in results] == ["x\n"] * 40


async def test_a_command_holds_no_descriptor_of_the_launcher_or_another_call(
    backend: LocalBackend,
) -> None:
    """Another call's socket would let a command forge that call's exit code, and another
    call's output pipe would let it write into that call's output."""
    running = asyncio.create_task(backend.run_command("sleep 2", timeout=10, profile=READONLY))
    await asyncio.sleep(0.5)
    result = await backend.run_command("ls /proc/$$/fd; true", timeout=10, profile=READONLY)
    await running
    assert result.output.split() == ["0", "1", "2"]


async def test_a_launcher_that_cannot_start_is_a_backend_error(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with pytest.raises(BackendError, match="cannot start the confined launcher"):
        await backend.run_command("true", timeout=10, profile=READONLY)
    monkeypatch.undo()
    assert (await backend.run_command("echo ok", timeout=10, profile=READONLY)).output == "ok\n"


async def test_close_kills_a_confined_background_process(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path), launchers=LauncherPool())
    result = await local.run_command("sleep 60 & echo $!", timeout=10, profile=READONLY)
    pid = int(result.output)
    assert result.exit_code == 0 and _alive(pid)
    await local.close()
    assert await asyncio.to_thread(_dead_within, pid, 3.0)


async def test_close_kills_a_process_a_command_detached_from_its_group(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path), launchers=LauncherPool())
    detach = "setsid sh -c 'sleep 60 & echo $!; wait' > $TMPDIR/pid & sleep 0.3; cat $TMPDIR/pid"
    result = await local.run_command(detach, timeout=10, profile=DEVELOPER)
    pid = int(result.output)
    assert result.exit_code == 0 and _alive(pid)
    await local.close()
    assert await asyncio.to_thread(_dead_within, pid, 3.0)
