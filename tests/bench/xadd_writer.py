"""The writer half of benchmark 6's baseline:
``python -m tests.bench.xadd_writer REDIS_URL KEY COUNT INTERVAL``.

XADDs COUNT entries ``{"t": <wall-clock time>}`` to stream KEY, one every INTERVAL seconds, from
its own process (as a fleet worker writes its events from its own).
"""

from __future__ import annotations

import sys
import time

import redis

USAGE = "usage: python -m tests.bench.xadd_writer REDIS_URL KEY COUNT INTERVAL"


def main(argv: list[str]) -> None:
    try:
        url, key, count, interval = argv[0], argv[1], int(argv[2]), float(argv[3])
    except (IndexError, ValueError):
        raise SystemExit(USAGE) from None
    client = redis.Redis.from_url(url)
    try:
        for _ in range(count):
            client.xadd(key, {"t": repr(time.time())})
            time.sleep(interval)
    finally:
        client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
