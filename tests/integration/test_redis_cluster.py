"""The state store on a Redis Cluster: parity with replay, a primary's failover, workers that come and go.

The cluster is real: six ``redis-server --cluster-enabled yes`` processes on loopback,
three primaries and three replicas, joined with ``redis-cli --cluster create``
(app.embedded.EmbeddedRedisCluster). The broker is Apache Kafka, the production engine.
The contract tests (tests/test_state_contract.py) and the erasure test
(tests/integration/test_privacy.py) run on the cluster too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos import Fault, Report, chaos_run, no_fault, primary_failed_over, shop, workers_replaced
from harness import Workers

from app.embedded import Broker, EmbeddedRedisCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster(redis_cluster: EmbeddedRedisCluster) -> Iterator[EmbeddedRedisCluster]:
    """A cluster of its own, for a test that kills its nodes (after the session's: the same checks)."""
    with EmbeddedRedisCluster() as cluster:
        yield cluster


def run_on(
    cluster: EmbeddedRedisCluster,
    name: str,
    lines: list[bytes],
    broker: Broker,
    workers: Workers,
    directory: Path,
    fault: Fault = no_fault,
    **env: str,
) -> Report:
    """A chaos run with the state on ``cluster``; its report, once checked: nothing lost or extra."""
    report = chaos_run(
        name, lines, broker=broker, redis=cluster, workers=workers, directory=directory, fault=fault, env=env
    )
    print(report)
    assert report.ok, str(report)
    return report


def test_a_worker_on_a_cluster_gives_replays_triggers(
    broker: Broker, redis_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    report = run_on(redis_cluster, "cluster", shop(20_000, 1_500, seed=41), broker, workers, tmp_path)
    assert report.duplicated == 0, "a run without faults publishes each trigger once"


def test_the_worker_rides_through_a_primary_failover_and_loses_nothing(
    broker: Broker, own_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    # Saves wait for a replica (MM_REDIS_MIN_REPLICAS=1): a save the worker counts as done survives
    # its primary's death. Until the dead node is back as a replica, saves to the promoted one's
    # slots wait, or fail and are retried.
    lines = shop(60_000, 3_000, seed=42)
    fault = primary_failed_over(own_cluster)
    run_on(
        own_cluster,
        "failover",
        lines,
        broker,
        workers,
        tmp_path,
        fault,
        MM_REDIS_MIN_REPLICAS="1",
        MM_REDIS_TIMEOUT_S="2",
    )
    [worker] = workers.started
    assert worker.said("batch failed, redoing it"), "the failover was felt, and retried through"
    worker.check_alive()  # it never stopped


def test_three_workers_one_killed_another_added(
    broker: Broker, redis_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    run_on(redis_cluster, "crew", shop(60_000, 3_000, seed=43), broker, workers, tmp_path, workers_replaced())
    assert len(workers.started) == 4
