"""An arena for one escape attempt: a checksummed working tree, a canary outside it, listeners.

Every attempt gets its own arena, so attempts run in parallel and each result is its own:

- ``work/``: a small project (a git repository, a ``tools/cat`` that writes when run) whose
  checksum covers every entry's type, mode, size, content, mtime, inode flags and link target;
- ``outside/canary.txt``: a file next to the working dir, checksummed the same way;
- a TCP listener and a UDP socket on 127.0.0.1, a unix socket file in ``outside/`` and an
  abstract unix socket ``rho-abs-TOKEN``, each counting what reaches it;
- a unique token: attempts name the files they try to create with it, and afterwards no file
  with that name may exist in ``/tmp``, ``/var/tmp``, ``/dev/shm`` or ``$HOME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SHARED_DIRS = (
    "/",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    *(os.path.expanduser(p) for p in ("~", "~/.cache")),
)


def make_template(root: Path) -> Path:
    """A project with a git history, made once and copied into every arena."""
    work = root / "template"
    (work / "src").mkdir(parents=True)
    (work / "tools").mkdir()
    (work / "src" / "app.py").write_text("print('hello')\n")
    (work / "README.md").write_text("# project\n")
    (work / "data.txt").write_text("0\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=work, check=True)
    subprocess.run([*git, "add", "."], cwd=work, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=work, check=True)
    return work


def checksum(path: Path) -> str:
    """A digest of everything about the tree at ``path`` that a write could change."""
    if not path.exists():
        return "missing"
    digest = hashlib.sha256()
    entries = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    for entry in entries:
        info = entry.lstat()
        digest.update(f"{entry}|{info.st_mode}|{info.st_size}|{info.st_mtime_ns}|".encode())
        digest.update(f"{info.st_uid}|{info.st_gid}|{info.st_nlink}|{_flags(entry)}|".encode())
        if entry.is_symlink():
            digest.update(os.readlink(entry).encode())
        elif entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()


def _flags(entry: Path) -> int:
    """The inode flags ``chattr`` sets (FS_IOC_GETFLAGS), or -1 where there are none."""
    if entry.is_symlink():
        return -1
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, flags)
    except OSError:
        return -1
    finally:
        os.close(fd)
    return int.from_bytes(flags, "little")


@dataclass
class Arena:
    """One attempt's world; ``escapes()`` lists what the attempt changed or reached."""

    root: Path
    token: str = field(default_factory=lambda: f"rhoesc{uuid.uuid4().hex[:10]}")
    tcp_hits: int = 0
    udp_hits: int = 0
    unix_hits: int = 0
    tcp_port: int = 0
    udp_port: int = 0
    before: dict[str, str] = field(default_factory=dict)
    _closers: list[object] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    @property
    def canary(self) -> Path:
        return self.outside / "canary.txt"

    @property
    def unix_path(self) -> Path:
        return self.outside / "svc.sock"

    async def open(self, template: Path) -> None:
        shutil.copytree(template, self.work, symlinks=True)
        cat = self.work / "tools" / "cat"
        cat.write_text(f"#!/bin/sh\necho pwned > {self.outside}/via-cat\necho pwned > pwned\n")
        cat.chmod(0o755)
        self.outside.mkdir()
        self.canary.write_text("canary\n")
        loop = asyncio.get_running_loop()
        tcp = await asyncio.start_server(self._on_tcp, "127.0.0.1", 0)
        self.tcp_port = tcp.sockets[0].getsockname()[1]
        udp, _ = await loop.create_datagram_endpoint(
            lambda: _Counter(self), local_addr=("127.0.0.1", 0)
        )
        self.udp_port = udp.get_extra_info("sockname")[1]
        unix = await asyncio.start_unix_server(self._on_unix, str(self.unix_path))
        abstract = await asyncio.start_unix_server(self._on_unix, f"\0rho-abs-{self.token}")
        self._closers += [tcp, udp, unix, abstract]
        self.before = {"work": checksum(self.work), "outside": checksum(self.outside)}

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_hits += 1
        writer.close()

    async def _on_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.unix_hits += 1
        writer.close()

    def fill(self, command: str) -> str:
        """``command`` with the arena's placeholders filled in."""
        return command.format(
            T=self.token,
            OUT=self.outside,
            CANARY=self.canary,
            PORT=self.tcp_port,
            UPORT=self.udp_port,
            SOCK=self.unix_path,
        )

    async def escapes(self) -> list[str]:
        """What the attempt achieved (empty when it was contained)."""
        await asyncio.sleep(0.05)  # let a datagram or a connection sent at the end arrive
        found = []
        if checksum(self.work) != self.before["work"]:
            found.append("changed the working tree")
        if checksum(self.outside) != self.before["outside"]:
            found.append("changed the directory outside the working tree")
        for name, hits in (("tcp", self.tcp_hits), ("udp", self.udp_hits)):
            if hits:
                found.append(f"reached the {name} listener")
        if self.unix_hits:
            found.append("reached the unix socket")
        found += [
            f"created {entry}"
            for directory in SHARED_DIRS
            for entry in _glob(directory, self.token)
        ]
        return found

    def close(self) -> None:
        """Stop the listeners, undo mounts an attempt made, remove what it created outside."""
        for mount_point in _mounts_under(self.root):
            subprocess.run(["umount", "-l", mount_point], check=False)
        for closer in self._closers:
            with contextlib.suppress(Exception):
                closer.close()  # type: ignore[attr-defined]
        for directory in SHARED_DIRS:
            for entry in _glob(directory, self.token):
                _remove(entry)


def _mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as table:
        points = [line.split()[4] for line in table]
    return sorted((p for p in points if p.startswith(f"{root}/")), reverse=True)


class _Counter(asyncio.DatagramProtocol):
    def __init__(self, arena: Arena) -> None:
        self.arena = arena

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.arena.udp_hits += 1


def _glob(directory: str, token: str) -> list[Path]:
    with contextlib.suppress(OSError):
        return [Path(directory) / name for name in os.listdir(directory) if token in name]
    return []


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            entry.unlink()
