"""Kafka connection options and topic layout, from :class:`~app.settings.Settings`."""

from __future__ import annotations

import logging
import ssl
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from app.settings import Settings

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36


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


async def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create missing topics (if allowed) and check the layout; returns partitions per topic."""
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
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d.get("partitions") or ()) for d in described if not d.get("error_code")}
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
