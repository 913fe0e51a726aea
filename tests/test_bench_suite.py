"""The benchmark suite's own arithmetic: what "in flight", "range", ``--redis`` and ``--broker``
mean.

The suite lives in tests/bench (not collected by default); these checks keep its figures honest
without running a benchmark.
"""

from __future__ import annotations

import pytest

from tests.bench import bare_celery, profile_redis, wakeup_probe
from tests.bench.bench_capacity import max_overlap, steady_mean
from tests.bench.harness import Row, block_medians
from tests.bench.run import _rabbitmq_server, _redis_server, _table


def test_steady_mean_counts_jobs_between_the_first_finish_and_the_last_start() -> None:
    # Jobs start at 0, 1, 2, 3 and each runs 2 s: steady phase [2, 3] (first end, last start),
    # in which jobs 1 and 2 run all along, job 0 ends at 2 and job 3 starts at 3: mean 2.
    spans = [(float(start), start + 2.0) for start in range(4)]
    assert steady_mean(spans) == pytest.approx(2.0)
    assert max_overlap(spans) == 2


def test_steady_mean_is_everyone_when_all_start_before_any_finish() -> None:
    spans = [(0.0, 5.0), (0.5, 6.0), (1.0, 7.0)]  # all three run during [1, 5]
    assert steady_mean(spans) == pytest.approx(3.0)


def test_a_slow_starter_has_a_mean_far_below_its_peak() -> None:
    # 1,000 jobs of 1 s started at 250 per second: Little's law says about 250 in flight.
    spans = [(index / 250, index / 250 + 1.0) for index in range(1000)]
    assert steady_mean(spans) == pytest.approx(250, rel=0.01)
    assert max_overlap(spans) == 251


def test_block_medians_are_the_repetitions_of_one_long_series() -> None:
    assert block_medians([1, 2, 3, 10, 20, 30, 100, 200, 300]) == [2, 20, 200]
    with pytest.raises(ValueError, match="cannot make 3 repetitions"):
        block_medians([1.0, 2.0])


def test_redis_option_takes_a_server_and_refuses_a_database() -> None:
    assert _redis_server("redis://127.0.0.1:6380/") == "redis://127.0.0.1:6380"
    with pytest.raises(SystemExit, match="names a database"):
        _redis_server("redis://127.0.0.1:6379/3")
    with pytest.raises(SystemExit, match="not a redis:// URL"):
        _redis_server("127.0.0.1:6379")


def test_broker_option_takes_a_rabbitmq_server_and_refuses_a_vhost_without_echoing_a_password() -> (
    None
):
    assert _rabbitmq_server("amqp://guest:guest@127.0.0.1:5672//") == (
        "amqp://guest:guest@127.0.0.1:5672"
    )
    with pytest.raises(SystemExit, match="names a vhost") as refused:
        _rabbitmq_server("amqp://rho:s3cret@127.0.0.1:5672/jobs")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(SystemExit, match="not an amqp:// URL"):
        _rabbitmq_server("redis://127.0.0.1:6379")


def test_bare_celery_on_rabbitmq_travels_as_the_fleets_jobs_do_with_results_in_redis() -> None:
    app = bare_celery.client_app("amqp://guest:guest@127.0.0.1:5672/v", "redis://127.0.0.1:6379/4")
    assert app.conf.task_default_queue_type == "quorum"
    assert app.conf.worker_detect_quorum_queues is True
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.result_backend == "redis://127.0.0.1:6379/4"
    on_redis = bare_celery.client_app("redis://127.0.0.1:6379/4")
    assert on_redis.conf.task_default_queue_type == "classic"
    assert on_redis.conf.broker_transport_options == {}


def test_the_table_shows_median_range_and_load() -> None:
    row = Row(
        name="x",
        figure=2.0,
        unit="ms",
        baseline=1.0,
        target="report",
        met=None,
        runs=[1.0, 2.0, 3.0],
        load={"median": 4.0, "min": 3.5, "max": 6.0, "n": 3},
    )
    cells = [column._cells[0] for column in _table([row], 1.0).columns]
    assert cells[:3] == ["x", "2.00 ms", "1.00-3.00 (3)"]
    assert cells[-1] == "4.0 (3.5-6.0)"


def test_the_wakeup_probe_reports_one_overshoot_per_sleep() -> None:
    found = wakeup_probe.overshoots(20)
    assert len(found) == 20
    assert all(overshoot >= 0 for overshoot in found)


def test_the_redis_profile_names_each_fleet_script_and_counts_per_job() -> None:
    scripts = profile_redis.script_names()
    finish = next(sha for sha, name in scripts.items() if name == "FINISH")
    entries = [
        {"command": f"EVALSHA {finish} 2 a b", "duration": 40},
        {"command": f"EVALSHA {finish} 2 c d", "duration": 60},
        {"command": b"XADD s * d x", "duration": 3},
        {"command": "SLOWLOG RESET", "duration": 900},
    ]
    rows = profile_redis.costs(entries, 2, scripts)
    assert [(row.name, row.per_job, row.us_per_job) for row in rows] == [
        ("EVALSHA FINISH", 1.0, 50.0),
        ("XADD", 0.5, 1.5),
    ]
