"""Kafka connection options and topic layout, from :class:`~app.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import faust
from aiokafka import errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.transaction import InitProducerIdRequest

from app.settings import Settings, SettingsError

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36
# How long topics just created may take to show in the broker's metadata.
CREATED_WITHIN_S = 10.0
PRODUCER_IDS_WITHIN_S = 30.0


class TopicLayoutError(RuntimeError):
    """The topics cannot work together, e.g. inputs with different partition counts."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )
    return context


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def isolation_level(settings: Settings) -> str:
    """What the worker's consumers read: with exactly once, nothing of an aborted transaction."""
    return "read_committed" if settings.processing_guarantee == "exactly_once" else "read_uncommitted"


def faust_brokers(settings: Settings) -> list[str]:
    return [f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",") if server.strip()]


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients (admin, producers, consumers)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    return options


def copartitioned_topics(settings: Settings) -> list[str]:
    """The topics whose partition N all hold the same customers: inputs and repartition."""
    return [*settings.input_topics, settings.topic_repartition]


def worker_topics(settings: Settings) -> list[str]:
    """Every topic the worker reads or writes, each once."""
    topics = [
        *copartitioned_topics(settings),
        settings.topic_triggers,
        settings.topic_holdout,
        settings.topic_confirmations,
        settings.topic_dlq,
        settings.late_topic,
        settings.topic_training,
    ]
    return list(dict.fromkeys(topics))


def retention_ms(settings: Settings) -> dict[str, int]:
    """Topic -> retention.ms, for the topics whose retention the worker sets: its own copies of data."""
    internal, dead = (
        settings.internal_retention_hours * 3_600_000,
        settings.dead_letter_retention_hours * 3_600_000,
    )
    return {
        settings.topic_repartition: internal,
        settings.topic_training: internal,
        settings.topic_dlq: dead,
        settings.late_topic: dead,
    }


_REFUSED = (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError, errors.IllegalSaslStateError)
_UNSUPPORTED = (errors.UnsupportedSaslMechanismError, errors.AuthenticationMethodNotSupported)


async def check_access(settings: Settings) -> None:
    """Connect and authenticate to a bootstrap server as every client of the worker will.

    Kafka's clients log a refused login and go on trying, or fail later with "unable to
    bootstrap"; this says at once which setting is wrong.

    Parameters
    ----------
    settings
        The connection settings (``MM_KAFKA_*``).

    Raises
    ------
    SettingsError
        The broker refused the credentials or the mechanism, naming the settings to check.
    """
    options = client_options(settings)
    options.pop("bootstrap_servers")
    unreachable: list[str] = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connection = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
        except _REFUSED as exc:
            raise SettingsError(
                f"Kafka at {server.strip()} refused the credentials: check MM_KAFKA_SASL_USERNAME and"
                f" MM_KAFKA_SASL_PASSWORD (MM_KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism}): {exc}"
            ) from exc
        except _UNSUPPORTED as exc:
            raise SettingsError(
                f"Kafka at {server.strip()} does not accept MM_KAFKA_SASL_MECHANISM="
                f"{settings.kafka_sasl_mechanism} (or MM_KAFKA_SECURITY_PROTOCOL="
                f"{settings.kafka_security_protocol}): {exc}"
            ) from exc
        except (OSError, TimeoutError, errors.KafkaError) as exc:
            # Another server may answer; the clients report it if none does.
            unreachable.append(f"{server.strip()} ({exc!r})")
            continue
        try:
            if settings.kafka_idempotence or settings.processing_guarantee == "exactly_once":
                await _check_producer_ids(connection, server.strip())
        finally:
            connection.close()
        return
    log.warning("no bootstrap server answered yet: %s", "; ".join(unreachable))


async def _check_producer_ids(connection: Any, server: str) -> None:
    """Whether the broker grants producer ids, which idempotent and transactional producers need."""
    deadline = time.monotonic() + PRODUCER_IDS_WITHIN_S
    while True:
        try:
            response = await connection.send(InitProducerIdRequest(None, 60_000))
            code = response.error_code
        except errors.KafkaError as exc:
            code = getattr(exc, "errno", -1)
        # Retriable: a broker just started may still be setting its producer ids up.
        if code == 0 or not errors.for_code(code).retriable or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    if code != 0:
        raise SettingsError(
            f"Kafka at {server} grants no producer ids (InitProducerId failed with error {code}):"
            " MM_KAFKA_IDEMPOTENCE=true and MM_PROCESSING_GUARANTEE=exactly_once need a broker that"
            " does, such as Apache Kafka. The embedded broker of `micromoments dev` cannot do"
            " transactions: use it with MM_KAFKA_IDEMPOTENCE=false and at_least_once."
        )


async def _partitions(admin: AIOKafkaAdminClient, topics: list[str], created: bool) -> dict[str, int]:
    """Partitions per topic, of those that exist.

    A broker's metadata can lag a moment behind a topic it has just created (Apache Kafka
    answers "unknown topic" for a few milliseconds): after creating, ask until all are known.
    """
    deadline = time.monotonic() + (CREATED_WITHIN_S if created else 0.0)
    while True:
        described = await admin.describe_topics(topics)
        partitions = {
            d["topic"]: len(d.get("partitions") or ()) for d in described if not d.get("error_code")
        }
        if all(partitions.get(t) for t in topics) or time.monotonic() >= deadline:
            return partitions
        await asyncio.sleep(0.1)


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics (if allowed) and check the layout; returns partitions per topic."""
    await check_access(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        topics = worker_topics(settings)
        if settings.create_topics:
            # Create before describing: some brokers create a topic with default settings
            # when its metadata is first asked for.
            retention = retention_ms(settings)
            response = await admin.create_topics(
                [
                    NewTopic(
                        t,
                        settings.partitions,
                        settings.replication_factor,
                        topic_configs={"retention.ms": str(retention[t])} if t in retention else None,
                    )
                    for t in topics
                ]
            )
            for topic, code, message in response.topic_errors:
                if code == 0:
                    log.info("created topic %s with %d partitions", topic, settings.partitions)
                elif code != _TOPIC_EXISTS:
                    raise TopicLayoutError(f"cannot create topic {topic}: {message} (error {code})")
        partitions = await _partitions(admin, topics, settings.create_topics)
    finally:
        await admin.close()
    missing = [t for t in topics if not partitions.get(t)]
    if missing:
        raise TopicLayoutError(f"missing topics: {', '.join(missing)} (set MM_CREATE_TOPICS=true to create)")
    counts = {t: partitions[t] for t in copartitioned_topics(settings)}
    if len(set(counts.values())) != 1:
        raise TopicLayoutError(
            "the input and repartition topics must have the same number of partitions, so that"
            f" partition N of each holds the same customers; found {counts}"
        )
    return partitions
