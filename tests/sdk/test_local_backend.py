"""LocalBackend specifics beyond the shared contract (tests/contract): defaults, limits, cleanup."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rho_agent.backends._local_search import expand_braces, glob_regex
from rho_agent.backends.base import ExecutionBackend
from rho_agent.backends.local import LocalBackend, _in_thread_stoppable
from rho_agent.errors import BackendError


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(str(tmp_path))
    await local.start()
    try:
        yield local
    finally:
        await local.close()


def _dead_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_implements_the_protocol(backend: LocalBackend) -> None:
    assert isinstance(backend, ExecutionBackend)


async def test_working_dir_defaults_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = LocalBackend()
    assert local.working_dir == str(tmp_path)
    assert repr(local) == f"LocalBackend(working_dir={str(tmp_path)!r})"


async def test_relative_working_dir_becomes_absolute_and_start_creates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    local = LocalBackend("new/work")
    assert local.working_dir == str(tmp_path / "new" / "work")
    await local.start()
    await local.start()
    assert (tmp_path / "new" / "work").is_dir()


async def test_missing_cwd_is_a_backend_error(backend: LocalBackend, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="does not exist"):
        await backend.run_command("true", timeout=5, cwd=str(tmp_path / "absent"))


async def test_close_kills_background_processes(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path))
    result = await local.run_command("sleep 60 & echo $!", timeout=10)
    pid = int(result.output)
    assert _alive(pid)
    await local.close()
    assert await asyncio.to_thread(_dead_within, pid, 3.0)


async def test_output_keeps_head_and_tail_within_the_limit(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path), max_output_bytes=1000)
    result = await local.run_command("seq 1 100000", timeout=10)
    assert result.output.startswith("1\n2\n3\n")
    assert result.output.endswith("99999\n100000\n")
    assert "bytes of output omitted" in result.output
    assert len(result.output) < 1100


async def test_read_file_refuses_huge_files_and_directories(tmp_path: Path) -> None:
    local = LocalBackend(str(tmp_path), max_file_bytes=10)
    (tmp_path / "big.txt").write_text("x" * 11)
    with pytest.raises(OSError) as raised:
        await local.read_file(str(tmp_path / "big.txt"))
    assert raised.value.errno == errno.EFBIG
    with pytest.raises(IsADirectoryError):
        await local.read_file(str(tmp_path))


async def test_realpath_resolves_symlinks(backend: LocalBackend, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    resolved = await backend.realpath(str(tmp_path / "link" / "new.txt"))
    real_tmp = await asyncio.to_thread(tmp_path.resolve)
    assert resolved == str(real_tmp / "real" / "new.txt")


async def test_grep_rejects_an_invalid_regex(backend: LocalBackend) -> None:
    with pytest.raises(ValueError, match="invalid regular expression"):
        await backend.grep("(", backend.working_dir, include=None, limit=10)


async def test_list_dir_reports_broken_symlinks(backend: LocalBackend, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    entries = await backend.list_dir(str(tmp_path))
    assert [(entry.name, entry.is_dir) for entry in entries] == [("dangling", False)]


async def test_cancelled_search_tells_its_thread_to_stop() -> None:
    started = threading.Event()
    stopped = threading.Event()

    def search(stop: threading.Event) -> None:
        started.set()
        if stop.wait(5):
            stopped.set()

    task = asyncio.create_task(_in_thread_stoppable(search))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(stopped.wait, 5)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.py", ["*.py"]),
        ("*.{py,md}", ["*.py", "*.md"]),
        ("{a,b}/{c,d}", ["a/c", "a/d", "b/c", "b/d"]),
        ("{a,{b,c}}x", ["ax", "bx", "cx"]),
        ("{single}", ["{single}"]),
    ],
)
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("*.py", ["a.py", ".hidden.py"], ["src/a.py", "a.pyc"]),
        ("**/*.py", ["a.py", "src/a.py", "src/deep/a.py"], ["a.txt"]),
        ("src/**", ["src/a", "src/deep/b"], ["other/a"]),
        ("src/**/test_*.py", ["src/test_a.py", "src/x/y/test_b.py"], ["src/a.py"]),
        ("file?.txt", ["file1.txt"], ["file10.txt", "file/.txt"]),
        ("[ab]*.txt", ["a1.txt", "b.txt"], ["c.txt"]),
        ("[!ab]*.txt", ["c.txt"], ["a.txt"]),
        ("a+b(1).txt", ["a+b(1).txt"], ["aab1.txt"]),
    ],
)
def test_glob_regex(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    regex = glob_regex(pattern)
    for path in matching:
        assert regex.fullmatch(path), path
    for path in not_matching:
        assert not regex.fullmatch(path), path
