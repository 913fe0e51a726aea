"""Celery's threads pool starts all its threads when the worker is ready."""

from __future__ import annotations

import threading

from celery.concurrency.thread import TaskPool

from workers.pool_threads import start_pool_threads


def test_every_thread_of_a_threads_pool_is_started_and_left_idle() -> None:
    pool = TaskPool(limit=25)
    pool.start()
    try:
        before = threading.active_count()
        assert start_pool_threads(pool) == 25
        assert threading.active_count() - before == 25
        done = threading.Event()
        pool.executor.submit(done.set)  # an idle thread takes work at once
        assert done.wait(5)
        assert threading.active_count() - before == 25
    finally:
        pool.stop()


def test_other_pools_are_left_alone() -> None:
    assert start_pool_threads(None) == 0
    assert start_pool_threads(object()) == 0
