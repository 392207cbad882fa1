"""Pytest fixtures for real servers: ``redis-server`` and the embedded Kafka-compatible broker.

Each starts on a free loopback port for the test session and stops afterwards.
When a server's program is missing the tests that need it are skipped on a
developer's machine, but fail when ``CI=true``: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from app.embedded import EmbeddedBroker, EmbeddedRedis, ServerUnavailable


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


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    try:
        server = EmbeddedBroker()
        server.binary()
    except ServerUnavailable as exc:
        _missing(str(exc))
    with server:
        yield server
