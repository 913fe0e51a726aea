"""What OS confinement adds to one bash call: the same command, unconfined and confined.

Runs ``LocalBackend.run_command("true")`` alternately under ``unrestricted`` (not confined) and
``readonly`` (forked by the session's confined launcher, with its own Landlock layer) in the
same process and prints the median and range of each, the median difference and the ratio.
The launcher starts once, before the measured rounds, as it does once per session. Target: the
difference is at most 15 ms.

    python tests/bench/bench_confinement.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time

from rho_agent.backends.local import LocalBackend
from rho_agent.permissions import load_profile


async def _measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"unconfined": [], "confined": []}
    profiles = {"unconfined": load_profile("unrestricted"), "confined": load_profile("readonly")}
    with tempfile.TemporaryDirectory() as work:
        backend = LocalBackend(work)
        for round_ in range(rounds + 3):
            for label, profile in profiles.items():
                start = time.perf_counter()
                result = await backend.run_command("true", timeout=10, profile=profile)
                elapsed = (time.perf_counter() - start) * 1000
                if result.exit_code != 0:
                    raise SystemExit(f"{label} run failed: {result.output}")
                if round_ >= 3:  # the first rounds warm caches (and start the launcher)
                    times[label].append(elapsed)
        await backend.close()
    return times


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    times = asyncio.run(_measure(rounds))
    for label, values in times.items():
        print(
            f"{label:>10}: median {statistics.median(values):6.2f} ms  "
            f"range {min(values):6.2f}-{max(values):6.2f} ms  ({len(values)} calls)"
        )
    unconfined, confined = (statistics.median(times[k]) for k in ("unconfined", "confined"))
    print(
        f"confinement adds {confined - unconfined:.2f} ms per call "
        f"(ratio {confined / unconfined:.2f})"
    )


if __name__ == "__main__":
    main()
