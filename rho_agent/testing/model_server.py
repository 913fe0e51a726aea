"""The scripted model server's command line, for running it in its own process.

``python -m rho_agent.testing.model_server --port 0 --behaviour echo [--delay 1.0]`` prints its
base URL as the first stdout line, then serves until SIGTERM or SIGINT. Benchmarks use it so the
server does not share a CPU or the GIL with the process being measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from rho_agent.testing._behaviours import BEHAVIOURS, behaviour
from rho_agent.testing._server import ScriptedModelServer
from rho_agent.testing._spawn import SpawnedModelServer

__all__ = ["ScriptedModelServer", "SpawnedModelServer", "main"]


def main(argv: list[str] | None = None) -> None:
    """Serve a built-in behaviour until told to stop."""
    parser = argparse.ArgumentParser(
        prog="python -m rho_agent.testing.model_server",
        description="Scripted OpenAI-compatible model server for tests and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--behaviour", required=True, help=f"one of: {', '.join(BEHAVIOURS)}")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (so the server dies with the process that spawned it)",
    )
    args = parser.parse_args(argv)
    try:
        responder = behaviour(args.behaviour, args.delay)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.stop_on_stdin_eof:
        threading.Thread(target=_set_on_stdin_eof, args=(stop,), daemon=True).start()
    server = ScriptedModelServer(responder, host=args.host, port=args.port, record=False)
    with server:
        print(server.base_url, flush=True)
        stop.wait()


def _set_on_stdin_eof(stop: threading.Event) -> None:
    # Raw reads: a daemon thread blocked inside sys.stdin's buffer would crash interpreter exit.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    stop.set()


if __name__ == "__main__":
    main()
