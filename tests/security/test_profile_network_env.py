"""A profile's ``network`` and ``env`` fields, as the OS and the backend enforce them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rho_agent.backends.local import LocalBackend
from rho_agent.permissions import PermissionProfile, load_profile
from rho_agent.sandbox import SandboxPolicy, probe

pytestmark = pytest.mark.skipif(
    probe().problem is not None, reason=f"no OS confinement here: {probe().problem}"
)

_CONNECT = (
    'python3 -c "import socket, sys; s = socket.socket(socket.{family}, socket.SOCK_STREAM); '
    "s.connect({address!r}); print('connected')\""
)


def _profile(write: str, network: str | None, shell: str = "allowed") -> PermissionProfile:
    return PermissionProfile("p", shell=shell, write=write, network=network)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("profile", "policy"),
    [
        (load_profile("readonly"), SandboxPolicy("scratch", "none", metadata=False)),
        (load_profile("developer"), SandboxPolicy("working_dir", "all", metadata=True)),
        (load_profile("unrestricted"), SandboxPolicy("anywhere", "all", metadata=True)),
        (_profile("none", None), SandboxPolicy("scratch", "none", metadata=False)),
        (_profile("working_dir", "inet"), SandboxPolicy("working_dir", "inet", metadata=True)),
        (_profile("working_dir", "none"), SandboxPolicy("working_dir", "none", metadata=True)),
        (_profile("anywhere", "none"), SandboxPolicy("anywhere", "none", metadata=True)),
        (_profile("none", "all", "readonly"), SandboxPolicy("scratch", "all", metadata=False)),
    ],
)
def test_profiles_map_to_policies(profile: PermissionProfile, policy: SandboxPolicy) -> None:
    assert SandboxPolicy.for_profile(profile) == policy
    assert policy.confined == (profile.name != "unrestricted")


class _Listeners:
    """A TCP listener on 127.0.0.1 and a unix socket file, counting connections."""

    def __init__(self) -> None:
        self.hits = 0

    def count(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        writer.close()


@pytest.fixture
async def listeners(tmp_path: Path) -> AsyncIterator[tuple[_Listeners, int, str]]:
    counter = _Listeners()
    tcp = await asyncio.start_server(counter.count, "127.0.0.1", 0)
    path = str(tmp_path / "service.sock")
    unix = await asyncio.start_unix_server(counter.count, path)
    try:
        yield counter, tcp.sockets[0].getsockname()[1], path
    finally:
        tcp.close()
        unix.close()


async def _run(tmp_path: Path, profile: PermissionProfile, command: str) -> str:
    backend = LocalBackend(str(tmp_path / "work"))
    await backend.start()
    try:
        result = await backend.run_command(command, timeout=20, profile=profile)
    finally:
        await backend.close()
    return result.output


async def test_inet_reaches_tcp_but_no_unix_socket(
    tmp_path: Path, listeners: tuple[_Listeners, int, str]
) -> None:
    counter, port, path = listeners
    profile = _profile("working_dir", "inet")
    tcp = await _run(
        tmp_path, profile, _CONNECT.format(family="AF_INET", address=("127.0.0.1", port))
    )
    assert "connected" in tcp and counter.hits == 1
    unix = await _run(tmp_path, profile, _CONNECT.format(family="AF_UNIX", address=path))
    assert "PermissionError" in unix and counter.hits == 1
    netlink = await _run(
        tmp_path,
        profile,
        "python3 -c 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)'",
    )
    assert "PermissionError" in netlink


async def test_network_none_on_a_developer_profile(
    tmp_path: Path, listeners: tuple[_Listeners, int, str]
) -> None:
    counter, port, _ = listeners
    output = await _run(
        tmp_path,
        _profile("working_dir", "none"),
        f"echo ok > made && cat made; cat < /dev/tcp/127.0.0.1/{port}",
    )
    assert output.startswith("ok\n") and counter.hits == 0


async def test_write_anywhere_with_no_network_confines_only_the_network(
    tmp_path: Path, listeners: tuple[_Listeners, int, str]
) -> None:
    counter, port, _ = listeners
    outside = tmp_path / "outside.txt"
    output = await _run(
        tmp_path,
        _profile("anywhere", "none"),
        f"echo x > {outside}; cat < /dev/tcp/127.0.0.1/{port}",
    )
    assert outside.read_text() == "x\n"
    assert "Operation not permitted" in output and counter.hits == 0


async def test_profile_env_names_reach_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RHO_TEST_PGHOST", "db.internal")
    monkeypatch.setenv("RHO_TEST_OTHER", "not-passed")
    profile = PermissionProfile("p", env=("RHO_TEST_PGHOST",))
    output = await _run(tmp_path, profile, "printenv")
    assert "RHO_TEST_PGHOST=db.internal" in output and "RHO_TEST_OTHER" not in output
    plain = await _run(tmp_path, load_profile("readonly"), "printenv")
    assert "RHO_TEST_PGHOST" not in plain
