"""Profile one fleet worker during a fan-out: ``python -m tests.bench.profile_worker [--jobs N]``.

Starts one worker (as benchmark 4 does, the model answering at once), records it with py-spy
(``pip install py-spy``) while N one-turn jobs fan out through it, and prints where its time
went: the share of samples whose stack passes through each library (inclusive, so shares add up
to more than 100 %), and the functions with the most samples at the top of the stack (self). The
collapsed stacks are kept (``--out``) for a flame graph (``flamegraph.pl`` or speedscope).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.fleet_support import running_fleet
from tests.bench.harness import DEFAULT_REDIS

LIBRARIES = (
    ("celery", "(celery/"),
    ("kombu", "(kombu/"),
    ("billiard", "(billiard/"),
    ("redis-py", "(redis/"),
    ("json (stdlib)", "(json/"),
    ("openai", "(openai/"),
    ("httpx2", "(httpx2/"),
    ("aiohttp", "(aiohttp/"),
    ("asyncio", "(asyncio/"),
    ("rho_agent", "(rho_agent/"),
    ("dispatch", "(dispatch/"),
    ("workers", "(workers/"),
)
TOP = 15
STARTUP = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("worker-profile.txt"))
    parser.add_argument("--redis", default=DEFAULT_REDIS)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="rho-profile-") as workdir:
        with running_fleet(workdir, 1, "echo", redis=args.redis) as fleet:
            warm = fleet.dispatcher.map([f"warm {i}" for i in range(50)], fleet.config)
            fleet.dispatcher.gather(warm, timeout=120)
            command = [
                "py-spy", "record", "--pid", str(fleet.worker_pids()[0]), "--format", "raw",
                "--rate", str(args.rate), "--output", str(args.out), "--nonblocking", "--gil",
            ]  # fmt: skip
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(STARTUP)  # py-spy attached before the first job goes out
            try:
                jobs = fleet.dispatcher.map([f"job {i}" for i in range(args.jobs)], fleet.config)
                fleet.dispatcher.gather(jobs, timeout=600)
            finally:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                _, errors = spy.communicate(timeout=60)
        said = errors.decode(errors="replace")[-1000:]
        if not args.out.exists():
            raise SystemExit(f"py-spy wrote no profile: {said}")
    print(f"py-spy said: {said}")
    print(report(args.out.read_text(encoding="utf-8")))


def report(collapsed: str) -> str:
    """Inclusive shares by library and the top self-time functions of py-spy's raw output."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    top: collections.Counter[str] = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for library, marker in LIBRARIES:
            if any(marker in frame for frame in frames):
                inclusive[library] += samples
        top[frames[-1]] += samples
    if not total:
        return "no samples"
    lines = [f"{total} samples", "inclusive share by library:"]
    lines += [f"  {share / total:6.1%}  {library}" for library, share in inclusive.most_common()]
    lines.append(f"top {TOP} functions by self samples:")
    lines += [f"  {share / total:6.1%}  {frame}" for frame, share in top.most_common(TOP)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
