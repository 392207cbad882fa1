"""Build and run the streaming worker, or a learner alone, from :class:`~app.settings.Settings`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Mapping
from functools import partial

import msgspec
from redis.exceptions import RedisError

from app.config import Catalogue, ConfigError, load_catalogue
from app.detector import Detector
from app.learning.config import LearningConfig
from app.learning.models import Models
from app.metrics import WorkerMetrics
from app.pipeline import Pipeline
from app.policy import Policy
from app.scorer import Scorer
from app.settings import Settings, SettingsError
from app.state.memory import MemoryStateStore
from app.state.model_store import ModelStore
from app.state.redis import RedisStateStore, connect
from app.state.store import StateStore
from app.worker.agent import DetectorAgent
from app.worker.datadir import process_datadir
from app.worker.faust_batch import BatchApp, QuietWorker
from app.worker.http import Check, OpsServer, listen
from app.worker.instruments import PING_TIMEOUT_S, MeteredStore, readiness, watch_consumer
from app.worker.kafka import ensure_topics, faust_brokers, faust_credentials
from app.worker.learning import Learner, Refresher, keep_running, watch_learning

log = logging.getLogger(__name__)

# The embedded broker's group coordinator waits half the session timeout before the
# first assignment, and Faust refuses a session timeout above the request timeout.
HEARTBEATS_PER_SESSION = 4


def build_app(
    settings: Settings, store: StateStore, metrics: WorkerMetrics | None = None
) -> tuple[BatchApp, DetectorAgent]:
    catalogue = _learning_possible(load_catalogue(settings.moments_config), settings)
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
        datadir=str(process_datadir()),
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        idempotence=settings.kafka_idempotence,
        read_committed=settings.processing_guarantee == "exactly_once",
    )
    metrics = metrics if metrics is not None else WorkerMetrics(runtime=False)
    # Scorers only: each model is learnt by one learner (app.worker.learning).
    key = settings.pseudonym_key.encode() if settings.pseudonym_key else b""
    scorer = Scorer(catalogue, learn=False, pseudonym_key=key) if catalogue.learning.enabled else None
    detector = Detector(catalogue, scorer=scorer)
    pipeline = Pipeline(
        detector, Policy(catalogue.policy), store, lookahead=settings.deadline_lookahead_s * 1000
    )
    agent = DetectorAgent(app, settings, pipeline, source=catalogue.trigger.source, metrics=metrics)
    if detector.models is not None:
        _learn(app, settings, catalogue, detector.models, metrics)
    return app, agent


def _learning_possible(catalogue: Catalogue, settings: Settings) -> Catalogue:
    """The catalogue, with learning off if this deployment cannot share models (logged)."""
    if not catalogue.learning.enabled:
        return catalogue
    missing = _missing_for_learning(settings)
    if not missing:
        return catalogue
    log.warning("online learning is off, the rules decide: it needs %s", " and ".join(missing))
    learning = msgspec.structs.replace(catalogue.learning, enabled=False)
    return msgspec.structs.replace(catalogue, learning=learning)


def _missing_for_learning(settings: Settings) -> list[str]:
    """What this deployment lacks to share models between processes (nothing: it can)."""
    missing = []
    if settings.model_key is None:
        missing.append("MM_MODEL_KEY (the secret that signs model snapshots)")
    if settings.redis_url == "memory://":
        missing.append("Redis (MM_REDIS_URL), where the models are kept")
    return missing


def _learn(
    app: BatchApp, settings: Settings, catalogue: Catalogue, models: Models, metrics: WorkerMetrics
) -> None:
    """Keep ``models`` at their latest versions, and run this worker's learner, as app tasks."""
    refresher = Refresher(models, _model_store(settings), settings.model_refresh_s)
    # App tasks start once the worker is ready, when its partitions may already be
    # flowing: load the stored models now, so that no batch is scored by the rules
    # alone (and without segments) just because the worker has restarted.
    refresher.versions = asyncio.run(_load_stored(settings, models))
    learner = Learner(settings, catalogue.learning, refresher.store, metrics) if settings.learner else None
    watch_learning(metrics, refresher, learner)
    app.task(partial(keep_running, "refreshing the models", refresher.run))
    if learner is not None:
        app.task(partial(keep_running, "the learner", learner.run))


def _model_store(settings: Settings) -> ModelStore:
    assert settings.model_key is not None
    client = connect(settings.redis_url)
    return ModelStore(client, settings.model_key.encode(), prefix=settings.redis_prefix)


async def _load_stored(settings: Settings, models: Models) -> dict[str, int]:
    """Load the stored models into ``models``; the versions loaded (none if Redis is away)."""
    # A client of its own: redis-py's connections belong to the event loop they were opened in.
    loader = Refresher(models, _model_store(settings), settings.model_refresh_s)
    try:
        await loader.refresh()
    except (OSError, RedisError) as exc:
        # Not fatal: the refresher goes on trying (and logging) while the worker scores.
        log.error("could not load the stored models (%s): the rules decide until they load", exc)
    finally:
        await loader.store.client.aclose()
    return loader.versions


def open_store(settings: Settings) -> StateStore:
    if settings.redis_url == "memory://" and settings.processing_guarantee == "exactly_once":
        raise SettingsError(
            "MM_PROCESSING_GUARANTEE=exactly_once needs Redis (MM_REDIS_URL): state kept in memory"
            " is lost with the worker, and cannot be reconciled with what Kafka committed"
        )
    if settings.redis_url == "memory://":
        log.warning("state is in memory (MM_REDIS_URL=memory://): it is lost when the worker stops")
        return MemoryStateStore()
    if settings.pseudonym_key is None:
        raise SettingsError(
            "MM_PSEUDONYM_KEY is required with Redis: a secret of at least 32 characters, the same on"
            " every worker, with which customers are named where their data may outlive them"
        )
    # A Redis that hangs (paused, partitioned) fails each call within the timeout: the batch is
    # retried, /readyz says so, and a revocation is not kept waiting behind it.
    return RedisStateStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        min_ttl_ms=settings.state_min_ttl_s * 1000,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        pseudonym_key=settings.pseudonym_key.encode(),
        min_replicas=settings.redis_min_replicas,
        # Half the call's timeout: WAIT answers (with too few replicas) before the socket gives up.
        replica_timeout_ms=int(settings.redis_timeout_s * 500),
    )


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
    worker = QuietWorker(app, ops, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def run_learner(settings: Settings) -> int:
    """Run a learner alone, no detection, until SIGINT/SIGTERM; the exit code.

    Learning then takes none of the workers' CPU: they score only (``MM_LEARNER=false``).
    """
    missing = _missing_for_learning(settings)
    if missing:
        raise SettingsError(f"the learner needs {' and '.join(missing)}")
    learning = load_catalogue(settings.moments_config).learning
    if not learning.enabled:
        raise ConfigError("learning is disabled in the moment configuration: there is nothing to learn")
    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    sock = listen(settings.metrics_host, settings.metrics_port)
    asyncio.run(ensure_topics(settings))
    asyncio.run(_learn_alone(settings, learning, sock))
    return 0


async def _learn_alone(settings: Settings, config: LearningConfig, sock: socket.socket) -> None:
    store = _model_store(settings)
    metrics = WorkerMetrics()
    learner = Learner(settings, config, store, metrics)
    watch_learning(metrics, None, learner)
    checks = _learner_readiness(learner, store)
    ops = OpsServer(sock, metrics.registry, checks, loop_lag=metrics.event_loop_lag)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await ops.start()
    learning = asyncio.create_task(keep_running("the learner", learner.run))
    try:
        await stopping.wait()
        log.info("stopping the learner")
    finally:
        # The learner stores what it has learnt and leaves the group as it is cancelled.
        learning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await learning
        await ops.stop()
        await store.client.aclose()


def _learner_readiness(learner: Learner, store: ModelStore) -> Mapping[str, Check]:
    """The checks of a learner's ``/readyz``: training partitions assigned, and Redis answering."""

    async def partitions() -> tuple[bool, str]:
        count = len(learner.assignment())
        return count > 0, f"{count} assigned"

    async def model_store() -> tuple[bool, str]:
        try:
            await asyncio.wait_for(store.client.ping(), PING_TIMEOUT_S)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"[:200]
        return True, "ok"

    return {"partitions": partitions, "store": model_store}
