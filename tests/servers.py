"""Pytest fixtures for real servers: ``redis-server``, Apache Kafka and the embedded broker.

Each starts on a free loopback port for the test session and stops afterwards.
``broker`` is Apache Kafka, the production engine (fetched from Maven Central on
first use, then cached); ``embedded_broker`` the one ``micromoments dev`` runs on.
When a server's program is missing the tests that need it are skipped on a
developer's machine, but fail when ``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
import redis.asyncio as aioredis

from app.apache_kafka import ApacheKafka, install
from app.embedded import Broker, EmbeddedBroker, EmbeddedRedis, EmbeddedRedisCluster, ServerUnavailable


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: integration tests must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    try:
        server = EmbeddedRedis()
        server.binary()
    except ServerUnavailable as exc:
        _missing(str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedisCluster]:
    """A Redis Cluster of three primaries and three replicas (``redis_server`` first: a machine
    without redis-server skips, or fails with CI=true, as for every Redis test)."""
    try:
        cluster = EmbeddedRedisCluster()
    except ServerUnavailable as exc:
        _missing(str(exc))
    with cluster:
        yield cluster


@pytest.fixture(params=["redis", "redis-cluster"])
def each_redis(request: pytest.FixtureRequest) -> EmbeddedRedis | EmbeddedRedisCluster:
    """A test taking it runs on one Redis, then on a Redis Cluster."""
    return cast(
        "EmbeddedRedis | EmbeddedRedisCluster",
        request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster"),
    )


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def kafka_jars() -> None:
    """Apache Kafka's jars, fetched (once) and cached; the reason if they cannot be."""
    try:
        install()
    except ServerUnavailable as exc:
        _missing(str(exc))


@pytest.fixture(scope="session")
def broker(kafka_jars: None) -> Iterator[ApacheKafka]:
    with ApacheKafka() as server:
        yield server


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    try:
        server = EmbeddedBroker()
        server.binary()
    except ServerUnavailable as exc:
        _missing(str(exc))
    with server:
        yield server


@pytest.fixture(params=["kafka", "embedded"])
def each_broker(request: pytest.FixtureRequest) -> Broker:
    """Apache Kafka, then the embedded broker: for what ``micromoments dev`` relies on as well."""
    return cast(Broker, request.getfixturevalue("broker" if request.param == "kafka" else "embedded_broker"))
