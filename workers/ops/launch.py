"""Start a worker or Flower from code (what ``rho-agent worker`` and ``rho-agent flower`` call).

Both run Celery's own command line on the worker app, so every ``celery worker`` / ``celery
flower`` flag still works after ours. Settings come from the environment, with the CLI's flags
passed as ``overrides`` (variable name to value) on top: this process's environment is never
written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from workers.worker_settings import WorkerSettings

FLOWER_TASK_COLUMNS = "name,args,state,result,worker,received,runtime,uuid"
"""Flower's task list shows each job's prompt and labels (args) and its progress (result), which
Flower's default columns leave out."""


def run_worker(
    extra_args: Sequence[str] = (),
    *,
    loglevel: str = "INFO",
    overrides: Mapping[str, str] | None = None,
) -> None:
    """Run a fleet worker in this process until it is stopped (blocks)."""
    from workers.celery_app import create_app

    settings = WorkerSettings.from_env({**os.environ, **(overrides or {})})
    app = create_app(settings)
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--hostname=rho@{settings.worker_name}",
        *extra_args,
    ]
    app.worker_main(argv)


def run_flower(
    extra_args: Sequence[str] = (),
    *,
    port: int = 5555,
    address: str = "127.0.0.1",
    overrides: Mapping[str, str] | None = None,
) -> None:
    """Run Flower on the fleet's broker (blocks). Workers send task events, so tasks show up."""
    from workers.celery_app import create_app

    settings = WorkerSettings.from_env({**os.environ, **(overrides or {})})
    app = create_app(settings)  # the broker comes from the app, never a default
    columns = f"--tasks_columns={FLOWER_TASK_COLUMNS}"
    app.start(["flower", f"--port={port}", f"--address={address}", columns, *extra_args])
