"""The file tools open what they checked: a symlink swapped in between cannot send them outside.

The race is real: a thread flips a directory of the path between a real directory and a symlink to
a directory outside the working dir while the ``write`` tool writes through it, 1,000 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import ToolError
from rho_agent.permissions.profile import load_profile
from rho_agent.tools.base import ToolInvocation, ToolOutput
from rho_agent.tools.builtin import build_registry

ROUNDS = 1000


async def call(backend: LocalBackend, tool: str, profile: str, **arguments: object) -> ToolOutput:
    handler = build_registry(profile).get(tool)
    assert handler is not None
    invocation = ToolInvocation("c", tool, dict(arguments), backend, load_profile(profile))
    return await handler.handle(invocation)


class Flipper(threading.Thread):
    """Swaps ``work/sub`` between a real directory and a symlink to ``outside``, non-stop."""

    def __init__(self, work: Path, outside: Path) -> None:
        super().__init__(daemon=True)
        self.sub, self.parked, self.outside = work / "sub", work / ".parked", outside
        self.stop = threading.Event()
        self.flips = 0

    def run(self) -> None:
        while not self.stop.is_set():
            os.rename(self.sub, self.parked)
            try:
                os.symlink(self.outside, self.sub)
            except FileExistsError:  # the tool made a fresh ``sub`` while it was missing
                self._restore()
                continue
            time.sleep(0)
            os.unlink(self.sub)
            self._restore()
            self.flips += 1

    def _restore(self) -> None:
        """Put the real directory back (dropping a fresh one the tool made meanwhile)."""
        while True:
            try:
                os.rename(self.parked, self.sub)
                return
            except OSError:
                shutil.rmtree(self.sub, ignore_errors=True)


@pytest.mark.parametrize("tool", ["write", "edit"])
async def test_a_swapped_symlink_never_sends_a_write_outside(tmp_path: Path, tool: str) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "sub").mkdir(parents=True)
    outside.mkdir()
    canary = outside / "f.txt"
    canary.write_text("canary: unchanged\n")
    (work / "sub" / "f.txt").write_text("canary: unchanged\n")
    backend = LocalBackend(str(work))
    flipper = Flipper(work, outside)
    flipper.start()
    written = refused = 0
    started = time.monotonic()
    try:
        for number in range(ROUNDS):
            try:
                if tool == "write":
                    await call(
                        backend, "write", "developer", path="sub/f.txt", content=f"{number}\n"
                    )
                else:
                    await call(
                        backend, "edit", "developer", path="sub/f.txt",
                        old_string="canary", new_string="CANARY", replace_all=True,
                    )  # fmt: skip
                written += 1
            except ToolError:
                refused += 1
    finally:
        flipper.stop.set()
        flipper.join(5)
    assert canary.read_text() == "canary: unchanged\n", "a write went through the symlink"
    assert sorted(p.name for p in outside.iterdir()) == ["f.txt"]
    assert flipper.flips > 10, "the race never ran"
    assert written + refused == ROUNDS
    assert time.monotonic() - started < 120


async def test_the_swap_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "sub").mkdir(parents=True)
    outside.mkdir()
    backend = LocalBackend(str(work))
    real = str(work / "sub" / "f.txt")
    os.rename(work / "sub", work / "parked")
    os.symlink(outside, work / "sub")
    with pytest.raises(OSError, match="became a symbolic link after it was checked"):
        await backend.write_file_beneath(str(work), real, b"x", single_link=True)
    with pytest.raises(OSError, match="became a symbolic link"):
        await backend.read_file_beneath(str(work), real)
    assert list(outside.iterdir()) == []


async def test_developer_refuses_to_write_through_a_hard_link(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    target = outside / "precious.txt"
    target.write_text("keep me\n")
    os.link(target, work / "link.txt")
    backend = LocalBackend(str(work))
    for tool, arguments in (
        ("write", {"content": "changed\n"}),
        ("edit", {"old_string": "keep", "new_string": "lose"}),
    ):
        with pytest.raises(ToolError, match="2 hard links"):
            await call(backend, tool, "developer", path="link.txt", **arguments)
    assert target.read_text() == "keep me\n"
    await call(backend, "write", "unrestricted", path="link.txt", content="mine\n")
    assert target.read_text() == "mine\n", "unrestricted writes where it is told"


async def test_symlinks_inside_the_working_dir_still_work(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    os.symlink(work / "real", work / "alias")
    backend = LocalBackend(str(work))
    await call(backend, "write", "developer", path="alias/new/deep.txt", content="hello\n")
    assert (work / "real" / "new" / "deep.txt").read_text() == "hello\n"
    output = await call(backend, "read", "developer", path="alias/new/deep.txt")
    assert "hello" in output.content


async def test_a_fifo_does_not_hang_the_tools(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "pipe")
    backend = LocalBackend(str(work))
    with pytest.raises(ToolError, match=r"^pipe: "):  # no reader: ENXIO at once, never a hang
        await call(backend, "write", "developer", path="pipe", content="x")


@pytest.mark.parametrize("profile", ["readonly", "developer"])
async def test_a_fifo_does_not_hang_the_read_tool(tmp_path: Path, profile: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / "pipe")  # profiles that read anywhere: the backend's plain read_file
    backend = LocalBackend(str(work))
    try:
        with pytest.raises(ToolError, match=r"^pipe: "):
            await asyncio.wait_for(call(backend, "read", profile, path="pipe"), 5)
    finally:  # release a reader stuck in open(), so that a failure does not hang the tests
        with contextlib.suppress(OSError):
            os.close(os.open(work / "pipe", os.O_WRONLY | os.O_NONBLOCK))
