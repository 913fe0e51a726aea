"""The escape suite: the OS boundary holds on its own, and with the command checker in front.

Each attempt runs in its own arena (see ``_arena``). The readonly attempts run three ways:
through the bash tool (checker, then the OS), straight on the confined backend (the OS alone),
and unconfined as a control, where most of them must get through: that is what shows the
attempts and the checks are real, and that the suite would fail without confinement.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.errors import PermissionDenied
from rho_agent.permissions import PermissionProfile, load_profile
from rho_agent.sandbox import Sandbox, Support, probe
from rho_agent.tools.base import ToolInvocation
from rho_agent.tools.builtin.shell import BashTool
from tests.security._arena import Arena, make_template
from tests.security.attempts import (
    DEVELOPER_ATTEMPTS,
    DEVELOPER_MUST_WORK,
    READONLY_ATTEMPTS,
    READONLY_MUST_WORK,
)

pytestmark = pytest.mark.skipif(
    probe().problem is not None, reason=f"no OS confinement here: {probe().problem}"
)

Runner = Callable[[Arena, str], Awaitable[object]]
_PARALLEL = 8
_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("template"))


async def _attempt(
    root: Path, template: Path, command: str, run: Runner, *, network: bool = True
) -> tuple[str, object, list[str]]:
    arena = Arena(root)
    await arena.open(template)
    try:
        outcome = await run(arena, arena.fill(command))
        escapes = await arena.escapes()
    finally:
        arena.close()
    if not network:  # developer: connections and the working tree are allowed
        escapes = [e for e in escapes if "outside" in e or e.startswith("created")]
    return command, outcome, escapes


async def _suite(
    tmp_path: Path, template: Path, commands: list[str], run: Runner, *, network: bool = True
) -> list[tuple[str, object, list[str]]]:
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(index: int, command: str) -> tuple[str, object, list[str]]:
        async with gate:
            return await _attempt(tmp_path / str(index), template, command, run, network=network)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(commands))))


def _on_backend(profile: str, sandbox: Sandbox | None = None) -> Runner:
    async def run(arena: Arena, command: str) -> object:
        backend = LocalBackend(str(arena.work), sandbox=sandbox)
        if sandbox is not None:  # a control run: keep "$TMPDIR/..." inside the arena
            command = f'export TMPDIR="{arena.root}/scratch"; mkdir "$TMPDIR"; {command}'

        try:
            return await backend.run_command(
                command, timeout=_TIMEOUT, profile=load_profile(profile)
            )
        finally:
            await backend.close()

    return run


async def _through_tool(arena: Arena, command: str) -> object:
    backend = LocalBackend(str(arena.work))
    invocation = ToolInvocation(
        "call", "bash", {"command": command, "timeout": _TIMEOUT}, backend, load_profile(None)
    )
    try:
        return await BashTool("readonly").handle(invocation)
    except PermissionDenied as refusal:
        return refusal
    finally:
        await backend.close()


def _report(results: list[tuple[str, object, list[str]]]) -> str:
    return "\n".join(f"{command!r}: {', '.join(escapes)}" for command, _, escapes in results)


def test_the_suite_is_large_enough() -> None:
    assert len(READONLY_ATTEMPTS) >= 150
    assert len(set(READONLY_ATTEMPTS)) == len(READONLY_ATTEMPTS)


async def test_readonly_os_boundary_alone_holds(tmp_path: Path, template: Path) -> None:
    results = await _suite(tmp_path, template, READONLY_ATTEMPTS, _on_backend("readonly"))
    escaped = [result for result in results if result[2]]
    assert not escaped, f"{len(escaped)} of {len(results)} escaped:\n{_report(escaped)}"


async def test_readonly_bash_tool_holds(tmp_path: Path, template: Path) -> None:
    results = await _suite(tmp_path, template, READONLY_ATTEMPTS, _through_tool)
    escaped = [result for result in results if result[2]]
    refused = sum(isinstance(outcome, PermissionDenied) for _, outcome, _ in results)
    print(f"bash tool: {refused} refused by the checker, {len(results) - refused} ran confined")
    assert not escaped, f"{len(escaped)} of {len(results)} escaped:\n{_report(escaped)}"


async def test_the_attempts_escape_without_confinement(tmp_path: Path, template: Path) -> None:
    unconfined = Sandbox(Support(0, "control run"), allow_unconfined=True)
    results = await _suite(
        tmp_path, template, READONLY_ATTEMPTS, _on_backend("readonly", unconfined)
    )
    escaped = sum(bool(escapes) for _, _, escapes in results)
    inert = [command for command, _, escapes in results if not escapes]
    print(f"unconfined control: {escaped} of {len(results)} escaped; inert: {inert}")
    assert escaped >= 0.9 * len(results), f"attempts that do nothing unconfined: {inert}"


async def test_developer_writes_stay_in_the_working_dir(tmp_path: Path, template: Path) -> None:
    results = await _suite(
        tmp_path, template, DEVELOPER_ATTEMPTS, _on_backend("developer"), network=False
    )
    escaped = [result for result in results if result[2]]
    assert not escaped, f"{len(escaped)} of {len(results)} escaped:\n{_report(escaped)}"


async def test_developer_attempts_escape_without_confinement(
    tmp_path: Path, template: Path
) -> None:
    unconfined = Sandbox(Support(0, "control run"), allow_unconfined=True)
    results = await _suite(
        tmp_path,
        template,
        DEVELOPER_ATTEMPTS,
        _on_backend("developer", unconfined),
        network=False,
    )
    inert = [command for command, _, escapes in results if not escapes]
    assert len(inert) <= 0.1 * len(results), f"attempts that do nothing unconfined: {inert}"


@pytest.mark.parametrize(
    ("profile", "commands"),
    [("readonly", READONLY_MUST_WORK), ("developer", DEVELOPER_MUST_WORK)],
)
async def test_ordinary_commands_still_work(
    tmp_path: Path, template: Path, profile: str, commands: list[str]
) -> None:
    results = await _suite(tmp_path, template, commands, _on_backend(profile))
    failed = [(command, outcome) for command, outcome, _ in results]
    failed = [(c, o) for c, o in failed if getattr(o, "exit_code", 1) != 0]
    assert not failed


async def test_developer_network_is_open(tmp_path: Path, template: Path) -> None:
    results = await _suite(
        tmp_path, template, ["cat < /dev/tcp/127.0.0.1/{PORT}"], _on_backend("developer")
    )
    assert results[0][2] == ["reached the tcp listener"]


def test_profiles_map_to_policies() -> None:
    from rho_agent.sandbox import SandboxPolicy

    yaml_like = PermissionProfile("custom", shell="allowed", write="none")
    assert SandboxPolicy.for_profile(yaml_like) == SandboxPolicy("scratch", "none")
    assert not SandboxPolicy.for_profile(load_profile("unrestricted")).confined
    assert sys.platform == "linux"
