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
from chaos import chaos_run, no_fault, primary_failed_over, shop, workers_replaced
from harness import Workers

from app.embedded import Broker, EmbeddedRedisCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster(redis_cluster: EmbeddedRedisCluster) -> Iterator[EmbeddedRedisCluster]:
    """A cluster of its own, for a test that kills its nodes (after the session's: the same checks)."""
    with EmbeddedRedisCluster() as cluster:
        yield cluster


def test_a_worker_on_a_cluster_gives_replays_triggers(
    broker: Broker, redis_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    lines = shop(20_000, 1_500, seed=41)
    report = chaos_run(
        "cluster",
        lines,
        broker=broker,
        redis=redis_cluster,
        workers=workers,
        directory=tmp_path,
        fault=no_fault,
    )
    print(report)
    assert report.ok, str(report)
    assert report.duplicated == 0, "a run without faults publishes each trigger once"


def test_the_worker_rides_through_a_primary_failover_and_loses_nothing(
    broker: Broker, own_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    # Saves wait for a replica (MM_REDIS_MIN_REPLICAS=1): a save the worker counts as done survives
    # its primary's death. Until the dead node is back as a replica, saves to the promoted one's
    # slots fail and are retried.
    lines = shop(60_000, 3_000, seed=42)
    report = chaos_run(
        "failover",
        lines,
        broker=broker,
        redis=own_cluster,
        workers=workers,
        directory=tmp_path,
        fault=primary_failed_over(own_cluster),
        env={"MM_REDIS_MIN_REPLICAS": "1", "MM_REDIS_TIMEOUT_S": "2"},
    )
    print(report)
    assert report.ok, str(report)
    [worker] = workers.started
    assert worker.said("batch failed, redoing it"), "the failover was felt, and retried through"
    worker.check_alive()  # it never stopped


def test_three_workers_one_killed_another_added(
    broker: Broker, redis_cluster: EmbeddedRedisCluster, workers: Workers, tmp_path: Path
) -> None:
    lines = shop(60_000, 3_000, seed=43)
    report = chaos_run(
        "crew",
        lines,
        broker=broker,
        redis=redis_cluster,
        workers=workers,
        directory=tmp_path,
        fault=workers_replaced(),
    )
    print(report)
    assert report.ok, str(report)
    assert len(workers.started) == 4
