"""The worker's operations endpoints, served by aiohttp inside the worker's event loop.

- ``GET /metrics`` — Prometheus exposition (text, or OpenMetrics when asked for);
- ``GET /livez`` — 200 while the process runs and its event loop is responsive:
  answering at all needs the loop, and a heartbeat task must have run lately;
- ``GET /readyz`` — 200 once partitions are assigned and the state store answers;
  503 with the failing check otherwise. Both answer a small JSON object.

The socket is bound before the worker starts (:func:`listen`), so a port that is
taken stops the worker at once with a clear message. Only loopback by default
(``MM_METRICS_HOST=127.0.0.1``); port 0 picks a free port, logged on start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web
from mode import Service
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
LIVENESS_PATH: Final = "/livez"
READINESS_PATH: Final = "/readyz"
PATHS: Final = (METRICS_PATH, LIVENESS_PATH, READINESS_PATH)
# The heartbeat's period, and how long without a beat before /livez fails.
HEARTBEAT_S: Final = 1.0
STALE_AFTER_S: Final = 30.0

Check = Callable[[], Awaitable[tuple[bool, str]]]


class MetricsBindError(OSError):
    pass


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise MetricsBindError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise MetricsBindError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            " (set MM_METRICS_PORT to a free port, or 0 for any)"
        ) from exc
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Heartbeat:
    """Records when the event loop last ran a timer, and how late it was."""

    def __init__(self, lag: Gauge | None = None) -> None:
        self.lag = lag
        self.last = time.monotonic()
        self.last_lag = 0.0

    def beat(self, late_by: float) -> None:
        self.last = time.monotonic()
        self.last_lag = max(0.0, late_by)
        if self.lag is not None:
            self.lag.set(self.last_lag)

    def age(self) -> float:
        return time.monotonic() - self.last

    async def run(self, period: float = HEARTBEAT_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(period)
            self.beat(loop.time() - started - period)


def web_app(
    registry: CollectorRegistry,
    heartbeat: Heartbeat,
    checks: Mapping[str, Check],
    *,
    stale_after: float = STALE_AFTER_S,
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def livez(request: web.Request) -> web.Response:
        age = heartbeat.age()
        body = {
            "status": "ok" if age < stale_after else "stalled",
            "heartbeat_age_seconds": round(age, 3),
            "event_loop_lag_seconds": round(heartbeat.last_lag, 6),
        }
        return web.json_response(body, status=200 if age < stale_after else 503)

    async def readyz(request: web.Request) -> web.Response:
        results: dict[str, Any] = {}
        ready = True
        for name, check in checks.items():
            ok, detail = await check()
            results[name] = {"ok": ok, "detail": detail}
            ready = ready and ok
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": results}, status=200 if ready else 503
        )

    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics)
    app.router.add_get(LIVENESS_PATH, livez)
    app.router.add_get(READINESS_PATH, readyz)
    return app


class OpsServer(Service):
    """Serves :func:`web_app` on an already bound socket for as long as the worker runs."""

    def __init__(
        self,
        sock: socket.socket,
        registry: CollectorRegistry,
        checks: Mapping[str, Check],
        *,
        loop_lag: Gauge | None = None,
        **kwargs: Any,
    ) -> None:
        self.sock = sock
        self.heartbeat = Heartbeat(loop_lag)
        self.app = web_app(registry, self.heartbeat, checks)
        self._runner: web.AppRunner | None = None
        super().__init__(**kwargs)

    @property
    def address(self) -> str:
        return address_of(self.sock)

    async def on_start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()
        self.add_future(self.heartbeat.run())
        log.info("serving %s, %s and %s on http://%s", *PATHS, self.address)

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
