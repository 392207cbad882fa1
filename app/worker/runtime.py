"""Build and run the streaming worker from :class:`~app.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import tempfile

import faust

from app.config import load_catalogue
from app.detector import Detector
from app.metrics import WorkerMetrics
from app.pipeline import Pipeline
from app.settings import Settings
from app.state.memory import MemoryStateStore
from app.state.redis import RedisStateStore
from app.state.store import StateStore
from app.worker.agent import DetectorAgent
from app.worker.faust_batch import BatchApp
from app.worker.http import OpsServer, listen
from app.worker.instruments import MeteredStore, readiness, watch_consumer
from app.worker.kafka import ensure_topics, faust_brokers, faust_credentials

log = logging.getLogger(__name__)

# The embedded broker's group coordinator waits half the session timeout before the
# first assignment, and Faust refuses a session timeout above the request timeout.
HEARTBEATS_PER_SESSION = 4


def build_app(
    settings: Settings, store: StateStore, metrics: WorkerMetrics | None = None
) -> tuple[BatchApp, DetectorAgent]:
    catalogue = load_catalogue(settings.moments_config)
    app = BatchApp(
        settings.group_id,
        broker=faust_brokers(settings),
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=settings.kafka_session_timeout / HEARTBEATS_PER_SESSION,
        broker_request_timeout=max(90.0, settings.kafka_session_timeout),
        broker_max_poll_records=settings.batch_max,
        consumer_auto_offset_reset=settings.kafka_auto_offset_reset,
        producer_acks=-1,
        producer_linger_ms=settings.kafka_linger_ms,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=settings.create_topics,
        # Faust's own assignor keeps partition N of every input on one worker
        # (co-partitioning); it is the one used while standby replicas are enabled.
        table_standby_replicas=1,
        store="memory://",
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="micromoments-faust-"),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        idempotence=settings.kafka_idempotence,
    )
    agent = DetectorAgent(
        app,
        settings,
        Pipeline(Detector(catalogue), store),
        source=catalogue.trigger.source,
        metrics=metrics,
    )
    return app, agent


def open_store(settings: Settings) -> StateStore:
    if settings.redis_url == "memory://":
        log.warning("state is in memory (MM_REDIS_URL=memory://): it is lost when the worker stops")
        return MemoryStateStore()
    return RedisStateStore.from_url(settings.redis_url, prefix=settings.redis_prefix)


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; the exit code of the worker."""
    # First: a metrics port already taken stops the worker before it joins the group.
    sock = listen(settings.metrics_host, settings.metrics_port)
    asyncio.run(ensure_topics(settings))
    metrics = WorkerMetrics()
    store = MeteredStore(open_store(settings), metrics)
    app, _ = build_app(settings, store, metrics)
    watch_consumer(metrics, app)
    # /metrics, /livez, /readyz: started before the app, stopped after it.
    ops = OpsServer(sock, metrics.registry, readiness(app, store), loop_lag=metrics.event_loop_lag)
    worker = faust.Worker(app, ops, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
