"""The confined launcher: confine this process once, then fork a confined bash per request.

Run as ``python -I -S _launcher_server.py [--write DIR]... --network none|inet|all
[--no-metadata] --control FD`` by ``rho_agent.sandbox.session_launcher``. It confines itself at
the broad level of its policy (writes beneath its scratch root, the devices and, for
``developer``, the working directory; the network and metadata rules of the profile), says
``ready`` on the control socket, and then serves requests. It is a fresh single-threaded process
started by exec, so forking it is safe, unlike forking the threaded worker.

Protocol (``SOCK_SEQPACKET``, one message per datagram):

- worker -> launcher, on the control socket: a JSON request ``{"argv", "env", "cwd",
  "write"}`` with two descriptors: the write end of the output pipe and the call's own socket.
- launcher -> worker, on the call's socket: ``pid N`` once the child has exec'd (it leads its
  own session, so process group N), or ``fail MESSAGE``; later ``exit CODE`` (negative: killed
  by that signal), as ``asyncio.subprocess.Process.returncode`` would say.

Each child adds a Landlock layer of its own before ``execve``: writes only beneath the call's
``write`` paths (its scratch directory, the working directory under ``developer``) and the
devices, and Landlock scopes, so a command cannot signal or trace the launcher or another
call's processes. Layers only narrow what the launcher's own layer allows.

The launcher never outlives its sessions: when the worker closes the control socket (the last
backend using it closed, or the worker died and the kernel closed it) it kills the process group
of every command still running, and every process a command detached from its group (the
launcher is a child subreaper, so those become its children), and exits. When the worker closes
a call's socket (the call was cancelled), it kills that call's group.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import sys

if __package__:
    from rho_agent.sandbox import _confine
else:  # run as a script with -I -S: only this directory is importable, not the package
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _confine  # type: ignore[import-not-found, no-redef]

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty")
"""Devices every confined command may open for writing."""

_MAX_REQUEST = 1 << 20


class _Request:
    """One command to start, as the worker sent it."""

    def __init__(self, data: bytes) -> None:
        fields = json.loads(data)
        self.argv = [str(arg) for arg in fields["argv"]]
        self.env = {str(name): str(value) for name, value in fields["env"].items()}
        self.cwd = str(fields["cwd"])
        self.write = [str(path) for path in fields["write"]]


class _Call:
    """A running command: its pid (and process group), pidfd and the worker's socket for it."""

    def __init__(self, pid: int, pidfd: int, reply: socket.socket) -> None:
        self.pid, self.pidfd, self.reply = pid, pidfd, reply
        self.abandoned = False


def _send(reply: socket.socket, message: str) -> bool:
    try:
        reply.send(message.encode())
    except OSError:
        return False
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _receive(control: socket.socket) -> tuple[bytes, list[int]]:
    """One request and its descriptors, close-on-exec from the start (``socket.recv_fds``
    before Python 3.12 drops its flags), so that no command inherits another call's socket."""
    size = socket.CMSG_LEN(2 * array.array("i").itemsize)
    data, ancillary, _, _ = control.recvmsg(_MAX_REQUEST, size, socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _exec_child(request: _Request, output: int, status: int, abi: int) -> None:
    """In the forked child: own session, output on the pipe, its own Landlock layer, exec.

    Every descriptor but 0-2 and the status pipe (close-on-exec) is closed first: the
    launcher holds other calls' sockets, which a command must never reach.
    """
    try:
        os.setsid()
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.closerange(3, status)
        os.closerange(status + 1, os.sysconf("SC_OPEN_MAX"))
        for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(number, signal.SIG_DFL)
        os.chdir(request.cwd)
        _confine.apply_landlock(abi, [*request.write, *DEVICES], no_tcp=False)
        os.execve(request.argv[0], request.argv, request.env)
    except BaseException as exc:
        os.write(status, f"{type(exc).__name__}: {exc}".encode()[:4000])
    finally:
        os._exit(127)


class _Server:
    """The launcher's single-threaded loop over the control socket, call sockets and pidfds."""

    def __init__(self, control: socket.socket, abi: int) -> None:
        self.control, self.abi = control, abi
        self.selector = selectors.DefaultSelector()
        self.calls: dict[int, _Call] = {}
        self.selector.register(control, selectors.EVENT_READ, "control")

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.data == "control":
                    if not self._accept():
                        self._shutdown()
                        return
                else:
                    kind, call = key.data
                    self._exited(call) if kind == "pidfd" else self._abandoned(call)

    def _accept(self) -> bool:
        self._reap_orphans()
        try:
            data, fds = _receive(self.control)
        except OSError:
            return False
        if not data:
            return False
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        output, reply_fd = fds
        reply = socket.socket(fileno=reply_fd)
        try:
            self._start(_Request(data), output, reply)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _send(reply, f"fail bad launcher request: {exc!r}")
            reply.close()
        finally:
            os.close(output)
        return True

    def _start(self, request: _Request, output: int, reply: socket.socket) -> None:
        status_read, status_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(status_read)
            _exec_child(request, output, status_write, self.abi)
        os.close(status_write)
        with os.fdopen(status_read, "rb") as status:
            failure = status.read()  # EOF at the child's exec (close-on-exec) or exit
        if failure:
            os.waitpid(pid, 0)
            _send(reply, "fail " + failure.decode(errors="replace"))
            reply.close()
            return
        call = _Call(pid, os.pidfd_open(pid), reply)
        self.calls[pid] = call
        self.selector.register(call.pidfd, selectors.EVENT_READ, ("pidfd", call))
        self.selector.register(reply, selectors.EVENT_READ, ("reply", call))
        if not _send(reply, f"pid {pid}"):
            _kill_group(pid)

    def _exited(self, call: _Call) -> None:
        _, code = os.waitpid(call.pid, 0)
        _send(call.reply, f"exit {os.waitstatus_to_exitcode(code)}")
        self.selector.unregister(call.pidfd)
        os.close(call.pidfd)
        if not call.abandoned:
            self.selector.unregister(call.reply)
            call.reply.close()
        del self.calls[call.pid]

    def _abandoned(self, call: _Call) -> None:
        """The worker closed the call's socket (cancelled): kill the group, reap it later."""
        _kill_group(call.pid)
        call.abandoned = True
        self.selector.unregister(call.reply)
        call.reply.close()

    def _orphans(self) -> list[int]:
        """Our children that are not calls: processes a command detached from its group, which
        the kernel gave to this launcher (a subreaper) when their parent exited."""
        with open(f"/proc/self/task/{os.getpid()}/children", encoding="ascii") as children:
            return [pid for pid in map(int, children.read().split()) if pid not in self.calls]

    def _reap_orphans(self) -> None:
        for pid in self._orphans():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def _shutdown(self) -> None:
        for pid in self.calls:
            _kill_group(pid)
        for pid in self.calls:
            os.waitpid(pid, 0)
        self.calls.clear()
        while orphans := self._orphans():  # killing one hands its own children to us
            for pid in orphans:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for pid in orphans:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def main(argv: list[str]) -> None:
    """Parse the arguments, confine this process, say ``ready``, serve until the worker goes."""
    writable: list[str] = []
    options = {"--network": "", "--control": "-1"}
    no_metadata = False
    index = 0
    while index < len(argv):
        if argv[index] == "--write" and index + 1 < len(argv):
            writable.append(argv[index + 1])
        elif argv[index] in options and index + 1 < len(argv):
            options[argv[index]] = argv[index + 1]
        elif argv[index] == "--no-metadata":
            no_metadata = True
            index -= 1
        else:
            break
        index += 2
    if index < len(argv) or not options["--control"].isdigit():
        sys.stderr.write(f"rho-agent launcher: bad arguments {argv!r}\n")
        sys.exit(2)
    control = socket.socket(fileno=int(options["--control"]))
    control.set_inheritable(False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    try:
        _confine.become_subreaper()
        _confine.confine(
            [*writable, *DEVICES], network=options["--network"], no_metadata=no_metadata
        )
    except (_confine.ConfineError, OSError) as exc:
        _send(control, f"fail {exc}")
        sys.exit(126)
    _send(control, f"ready {_confine.landlock_abi()}")
    _Server(control, _confine.landlock_abi()).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
