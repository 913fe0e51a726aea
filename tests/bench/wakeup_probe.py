"""The machine's wake-up delay, for benchmark 6: ``python -m tests.bench.wakeup_probe COUNT``.

Sleeps 1 ms COUNT times in its own process and prints, as a JSON list, by how many milliseconds
each sleep overshot. An idle core wakes a sleeper within a fraction of a millisecond; when every
core is busy the sleeper waits for a time slice. Measured beside the event latencies, in the same
state, it tells a tail the machine sets from one the fleet adds.
"""

from __future__ import annotations

import json
import sys
import time

SLEEP_S = 0.001
USAGE = "usage: python -m tests.bench.wakeup_probe COUNT"


def overshoots(count: int) -> list[float]:
    """Milliseconds by which each of ``count`` 1 ms sleeps overshot."""
    found = []
    for _ in range(count):
        started = time.perf_counter()
        time.sleep(SLEEP_S)
        found.append((time.perf_counter() - started - SLEEP_S) * 1000)
    return found


def main(argv: list[str]) -> None:
    try:
        count = int(argv[0])
    except (IndexError, ValueError):
        raise SystemExit(USAGE) from None
    print(json.dumps(overshoots(count)))


if __name__ == "__main__":
    main(sys.argv[1:])
