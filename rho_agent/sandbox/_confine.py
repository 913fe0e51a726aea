"""Confine this process with Landlock, seccomp and a reduced capability set.

Used by the launcher (``_launcher_server.py``, run as ``python -I -S``), which confines itself
with ``confine`` and adds a narrower Landlock layer in each command's child with
``apply_landlock``. It imports only the standard library, so that the launcher can start without
site-packages; the package imports it too, for the ABI probe.

What each layer stops:

- Landlock (filesystem): every write-type access (write, truncate, create, remove, link, rename,
  device ioctl) except beneath the ``--write`` paths. Reads and execution stay open.
- Landlock (network, ABI 4+): TCP bind and connect, with network ``none``.
- Landlock (scopes, ABI 6+): signals to, and abstract unix sockets of, processes outside.
- seccomp: with network ``none``, ``socket()`` of every family (so UDP, raw, netlink and
  pathname unix sockets such as a Redis or docker socket file); with ``inet``, of every family
  but IPv4 and IPv6; with ``--no-metadata``, chmod, chown, utime and xattr calls and the
  ``ioctl`` requests that set inode flags (``chattr``), which Landlock does not control, and
  SysV IPC and keyring calls (state shared with other processes outside any file);
  always ``io_uring_setup`` (it could open sockets past the filter), ``prlimit`` of another
  process (the worker's limits) and system calls of another architecture.
- capabilities: all but reading and writing past file modes (DAC_OVERRIDE, DAC_READ_SEARCH,
  FOWNER) are dropped, so root in a tool process cannot reboot, load modules, change the
  network or mount.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

_FS_WRITE_FILE = 1 << 1
_FS_DIR_WRITES = sum(1 << bit for bit in range(4, 13))  # REMOVE_DIR .. MAKE_SYM
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1
_NET_CONNECT_TCP = 2
_SCOPE_ABSTRACT_UNIX_SOCKET = 1
_SCOPE_SIGNAL = 2

MIN_ABI = 3
"""Below ABI 3 Landlock cannot stop ``truncate``, so a confined profile refuses to run."""

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_CHILD_SUBREAPER = 36
_SECCOMP_MODE_FILTER = 2
_KEPT_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
_CAPABILITY_VERSION_3 = 0x20080522


class _Arch:
    """System call numbers seccomp needs, per architecture."""

    def __init__(
        self,
        audit: int,
        capset: int,
        socket: int,
        ioctl: int,
        prlimit: int,
        metadata: tuple[int, ...],
        shared_state: tuple[int, ...],
        x32: bool,
    ) -> None:
        self.audit, self.capget, self.capset, self.socket = audit, capset - 1, capset, socket
        self.ioctl, self.prlimit, self.metadata, self.x32 = ioctl, prlimit, metadata, x32
        self.shared_state = shared_state


_IO_URING_SETUP = 425
_METADATA_IOCTLS = (0x40086602, 0x40046602, 0x40087602, 0x40047602, 0x401C5820, 0x40806685)
"""FS_IOC_SETFLAGS and SETVERSION (64- and 32-bit), FSSETXATTR, ENABLE_VERITY: ``chattr`` and
kin change a file through a read-only descriptor, which Landlock only checks on devices."""
_INET_FAMILIES = (2, 10)  # AF_INET, AF_INET6
NETWORKS = ("none", "inet", "all")
_ARCHES = {
    "x86_64": _Arch(
        0xC000003E,
        capset=126,
        socket=41,
        ioctl=16,
        prlimit=302,
        # chmod fchmod chown fchown lchown utime utimes futimesat fchownat fchmodat utimensat
        # setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr fchmodat2
        # setxattrat removexattrat file_setattr
        metadata=(
            *(90, 91, 92, 93, 94, 132, 235, 261, 260, 268, 280),
            *(188, 189, 190, 197, 198, 199, 452, 463, 466, 469),
        ),
        # shmget shmat shmctl semget semop semctl shmdt msgget msgsnd msgrcv msgctl semtimedop
        # add_key request_key keyctl
        shared_state=(29, 30, 31, 64, 65, 66, 67, 68, 69, 70, 71, 220, 248, 249, 250),
        x32=True,
    ),
    "aarch64": _Arch(
        0xC00000B7,
        capset=91,
        socket=198,
        ioctl=29,
        prlimit=261,
        # fchmod fchmodat fchownat fchown utimensat setxattr lsetxattr fsetxattr removexattr
        # lremovexattr fremovexattr fchmodat2 setxattrat removexattrat file_setattr
        metadata=(52, 53, 54, 55, 88, 5, 6, 7, 14, 15, 16, 452, 463, 466, 469),
        # msgget msgctl msgrcv msgsnd semget semctl semtimedop semop shmget shmctl shmat shmdt
        # add_key request_key keyctl
        shared_state=(*range(186, 198), 217, 218, 219),
        x32=False,
    ),
}


class ConfineError(Exception):
    """A confinement step failed; the command must not run."""


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        _LIBC.append(libc)
    return _LIBC[0]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise ConfineError(f"{what} failed: {os.strerror(code)} (errno {code})")
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    if sys.platform != "linux":
        return 0
    result = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(result), 0)


def machine_supported() -> bool:
    """Whether seccomp numbers are known for this CPU architecture."""
    return os.uname().machine in _ARCHES


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


def _write_access(abi: int) -> int:
    access = _FS_WRITE_FILE | _FS_DIR_WRITES
    access |= _FS_REFER if abi >= 2 else 0
    access |= _FS_TRUNCATE if abi >= 3 else 0
    return access | (_FS_IOCTL_DEV if abi >= 5 else 0)


def apply_landlock(abi: int, writable: list[str], *, no_tcp: bool) -> None:
    """Allow write-type access only beneath ``writable``; no TCP bind or connect if ``no_tcp``
    (else TCP is left as the layers below say)."""
    libc = _libc()
    handled = _write_access(abi)
    attr = _RulesetAttr(
        handled_access_fs=handled,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if no_tcp and abi >= 4 else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _check(
        libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    try:
        for path in writable:
            _allow_beneath(libc, ruleset, path, handled)
        _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _check(libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _allow_beneath(libc: ctypes.CDLL, ruleset: int, path: str, handled: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # an optional device such as /dev/tty
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        access = handled if is_dir else handled & (_FS_WRITE_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV)
        rule = _PathBeneath(allowed_access=access, parent_fd=fd)
        _check(
            libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0),
            f"landlock_add_rule({path})",
        )
    finally:
        os.close(fd)


def drop_capabilities() -> None:
    """Keep only the file-access capabilities, in the bounding set and the current sets."""
    libc = _libc()
    for capability in range(64):
        if capability in _KEPT_CAPABILITIES:
            continue
        # EINVAL: past the kernel's last capability. EPERM (no CAP_SETPCAP) means this process
        # holds no capability it could raise anyway; capset below still clears what it holds.
        if libc.prctl(_PR_CAPBSET_DROP, capability) < 0 and ctypes.get_errno() == 22:
            break
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    current = (ctypes.c_uint32 * 6)()
    _check(libc.syscall(_ARCHES[os.uname().machine].capget, header, current), "capget")
    kept = sum(1 << capability for capability in _KEPT_CAPABILITIES)
    # data[0] = (effective, permitted, inheritable) of capabilities 0-31, data[1] of 32-63.
    wanted = (ctypes.c_uint32 * 6)(current[0] & kept, current[1] & kept, 0, 0, 0, 0)
    _check(libc.syscall(_ARCHES[os.uname().machine].capset, header, wanted), "capset")


_Instruction = tuple[int, int, int, int]  # classic BPF: code, jump if true, if false, k
_ALLOW, _ERRNO, _KILL = 0x7FFF0000, 0x00050000 | 1, 0x80000000  # RET_ALLOW, ERRNO(EPERM), KILL


def _load_arg(index: int) -> _Instruction:
    """Load the low 32 bits of ``seccomp_data.args[index]`` (little-endian)."""
    return (0x20, 0, 0, 16 + 8 * index)  # BPF_LD|BPF_W|BPF_ABS


def _refuse_if(index: int, values: tuple[int, ...]) -> list[_Instruction]:
    """EPERM when argument ``index`` is one of ``values``, else allow."""
    jumps = [(0x15, len(values) - i, 0, value) for i, value in enumerate(values)]
    return [_load_arg(index), *jumps, (0x06, 0, 0, _ALLOW), (0x06, 0, 0, _ERRNO)]


def _refuse_unless(index: int, values: tuple[int, ...]) -> list[_Instruction]:
    """Allow only when argument ``index`` is one of ``values``, else EPERM."""
    jumps = [(0x15, len(values) - i, 0, value) for i, value in enumerate(values)]
    return [_load_arg(index), *jumps, (0x06, 0, 0, _ERRNO), (0x06, 0, 0, _ALLOW)]


def _filter(
    arch: _Arch, blocked: list[int], branches: list[tuple[int, list[_Instruction]]]
) -> bytes:
    """A classic BPF program: kill other architectures, EPERM for ``blocked``, the argument
    check of ``branches`` (system call number, instructions that end in returns) for theirs;
    allow the rest."""
    checks: list[tuple[int, int]] = [(0x35, 0x40000000)] if arch.x32 else []  # JGE: x32 calls
    checks += [(0x15, number) for number in blocked]  # BPF_JMP|BPF_JEQ|BPF_K
    ld_arch, ld_nr = (0x20, 0, 0, 4), (0x20, 0, 0, 0)  # seccomp_data.arch, .nr
    program = [ld_arch, (0x15, 1, 0, arch.audit), (0x06, 0, 0, _KILL), ld_nr]
    for index, (op, value) in enumerate(checks):
        # true: jump over the remaining checks, the branch jumps and the allow return
        program.append((op, len(checks) - index + len(branches), 0, value))
    before = 0  # instructions of the branches laid out before this one
    for index, (number, block) in enumerate(branches):
        # true: over the remaining branch jumps, both returns and the earlier branches
        program.append((0x15, len(branches) - 1 - index + 2 + before, 0, number))
        before += len(block)
    program += [(0x06, 0, 0, _ALLOW), (0x06, 0, 0, _ERRNO)]
    for _, block in branches:
        program += block
    return b"".join(
        code.to_bytes(2, "little") + bytes((jt, jf)) + k.to_bytes(4, "little")
        for code, jt, jf, k in program
    )


def apply_seccomp(*, network: str, no_metadata: bool) -> None:
    """Install the seccomp filter (after Landlock, whose calls it would not block anyway)."""
    arch = _ARCHES[os.uname().machine]
    blocked = [_IO_URING_SETUP]
    blocked += [arch.socket] if network == "none" else []
    blocked += [*arch.metadata, *arch.shared_state] if no_metadata else []
    # prlimit() of another process: Landlock does not scope it, and it could starve the worker
    branches = [(arch.prlimit, _refuse_unless(0, (0,)))]
    if network == "inet":
        branches.append((arch.socket, _refuse_unless(0, _INET_FAMILIES)))
    if no_metadata:
        branches.append((arch.ioctl, _refuse_if(1, _METADATA_IOCTLS)))
    code = _filter(arch, blocked, branches)
    buffer = ctypes.create_string_buffer(code, len(code))

    class _Program(ctypes.Structure):
        _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))

    program = _Program(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = _libc()
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(
        libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0),
        "seccomp",
    )


def become_subreaper() -> None:
    """Adopt the orphans of this process's descendants: a process a command detached
    (``setsid cmd &``) escapes its process group, and must still be this process's to kill."""
    _check(_libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")


def confine(writable: list[str], *, network: str, no_metadata: bool) -> None:
    """Apply every layer to this process, or raise ``ConfineError``.

    ``network``: ``none`` (no socket), ``inet`` (IPv4 and IPv6 sockets only) or ``all``.
    """
    if network not in NETWORKS:
        raise ConfineError(f"unknown network policy {network!r}")
    abi = landlock_abi()
    if abi < MIN_ABI:
        raise ConfineError(f"Landlock ABI {abi} is below {MIN_ABI}")
    if not machine_supported():
        raise ConfineError(f"no seccomp table for the {os.uname().machine} architecture")
    drop_capabilities()
    apply_landlock(abi, writable, no_tcp=network == "none")
    apply_seccomp(network=network, no_metadata=no_metadata)
