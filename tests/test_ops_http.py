"""app.worker.http: /metrics, /livez and /readyz on a real socket, in the test's event loop."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import WorkerMetrics
from app.settings import load_settings
from app.worker.http import LIVENESS_PATH, METRICS_PATH, READINESS_PATH, MetricsBindError, OpsServer, listen


class Checks:
    def __init__(self) -> None:
        self.partitions = True
        self.store = True

    async def check_partitions(self) -> tuple[bool, str]:
        return self.partitions, "3 assigned" if self.partitions else "0 assigned"

    async def check_store(self) -> tuple[bool, str]:
        return self.store, "ok" if self.store else "ConnectionError: refused"


@pytest.fixture
async def server() -> AsyncIterator[tuple[OpsServer, Checks, WorkerMetrics]]:
    metrics = WorkerMetrics()
    checks = Checks()
    ops = OpsServer(
        listen("127.0.0.1", 0),
        metrics.registry,
        {"partitions": checks.check_partitions, "store": checks.check_store},
        loop_lag=metrics.event_loop_lag,
    )
    await ops.start()
    try:
        yield ops, checks, metrics
    finally:
        await ops.stop()


async def get(ops: OpsServer, path: str, **headers: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{ops.address}{path}", headers=headers) as response,
    ):
        return response.status, response.headers["Content-Type"], await response.text()


async def test_metrics(server: tuple[OpsServer, Checks, WorkerMetrics]) -> None:
    ops, _, metrics = server
    metrics.dead_letters.inc(3)
    status, content_type, text = await get(ops, METRICS_PATH)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["micromoments_dead_letters"].samples[0].value == 3
    assert "micromoments_build_info" in families
    # Prometheus asks for OpenMetrics, and gets it.
    status, content_type, text = await get(
        ops, METRICS_PATH, Accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


async def test_liveness(server: tuple[OpsServer, Checks, WorkerMetrics]) -> None:
    ops, _, _ = server
    status, content_type, text = await get(ops, LIVENESS_PATH)
    assert (status, content_type.split(";")[0]) == (200, "application/json")
    assert '"status": "ok"' in text
    # No heartbeat for longer than allowed: the event loop is stuck, or its heartbeat died.
    ops.heartbeat.last -= 3600
    status, _, text = await get(ops, LIVENESS_PATH)
    assert status == 503
    assert "stalled" in text


async def test_readiness(server: tuple[OpsServer, Checks, WorkerMetrics]) -> None:
    ops, checks, _ = server
    status, _, text = await get(ops, READINESS_PATH)
    assert status == 200, text
    checks.partitions = False
    status, _, text = await get(ops, READINESS_PATH)
    assert status == 503
    assert "0 assigned" in text
    checks.partitions, checks.store = True, False
    status, _, text = await get(ops, READINESS_PATH)
    assert status == 503
    assert "refused" in text
    status, _, _ = await get(ops, "/admin")
    assert status == 404


async def test_heartbeat_measures_the_event_loop(server: tuple[OpsServer, Checks, WorkerMetrics]) -> None:
    ops, _, _ = server
    ops.heartbeat.beat(0.25)
    assert ops.heartbeat.last_lag == 0.25
    _, _, text = await get(ops, METRICS_PATH)
    lag = next(
        f for f in text_string_to_metric_families(text) if f.name == "micromoments_event_loop_lag_seconds"
    )
    assert lag.samples[0].value == 0.25


def test_listen_on_port_zero_picks_a_free_loopback_port() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
    finally:
        sock.close()


def test_a_taken_port_is_a_clear_error() -> None:
    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(MetricsBindError, match=f"127.0.0.1:{port}.*MM_METRICS_PORT"):
            listen("127.0.0.1", port)
    finally:
        taken.close()


def test_nothing_listens_beyond_loopback_by_default() -> None:
    settings = load_settings({})
    assert settings.metrics_host == "127.0.0.1"
    # Whatever the name resolves to, it is a loopback address.
    for *_, address in socket.getaddrinfo(settings.metrics_host, 0, type=socket.SOCK_STREAM):
        assert address[0].startswith("127.") or address[0] == "::1"
