"""Worker settings, from environment variables (12-factor).

Every field ``name`` is read from ``MM_NAME`` (upper case). Unset variables
keep the defaults below; values are validated on start, and an ``MM_``
variable that names no setting is reported, since it is most likely a typo.
``micromoments settings`` prints the effective values, secrets masked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
PREFIX = "MM_"
SECRETS = frozenset({"kafka_sasl_password", "model_key", "pseudonym_key"})


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # --- Kafka ----------------------------------------------------------------------------
    # Comma-separated host:port list.
    kafka_bootstrap: str = "localhost:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    # CA bundle, client certificate and key (PEM files) for SSL / SASL_SSL.
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    # Idempotent producer (exactly one copy of each send per session). Needs a broker
    # that supports InitProducerId: Apache Kafka does, the embedded dev broker does not.
    kafka_idempotence: bool = True
    # at_least_once: a batch's output is published and acknowledged, its state saved, then
    # its offsets committed; after a crash the uncommitted tail is processed again and its
    # output published again, with the same ids. exactly_once: per partition, the batch's
    # output and offsets are committed in one Kafka transaction and the state in Redis is
    # reconciled with what was committed (see the README); consumers that read
    # read_committed see each output once. Needs Apache Kafka (transactions) and Redis.
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # The consumer group: every worker of one deployment shares it.
    group_id: str = "micromoments"
    # Seconds without heartbeat before the group evicts a worker. Short = fast failover
    # and fast first join (the embedded broker waits half of it before assigning).
    kafka_session_timeout: Annotated[float, msgspec.Meta(ge=1.0, le=300.0)] = 10.0
    # How long a fetch may wait on the broker for data; bounds the idle latency.
    kafka_fetch_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 10
    kafka_linger_ms: Annotated[int, msgspec.Meta(ge=0, le=1_000)] = 1
    # At least once: how often processed offsets are committed to the group under load (0:
    # after every batch; a worker with nothing new for half a second commits at once). The
    # states record what they reflect, so records read again after a crash are skipped: a
    # longer interval costs re-reading, never duplicates; a commit per batch costs a round
    # trip through the consumer's thread on every small batch, in latency.
    kafka_commit_interval_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 100
    # Where consumption starts for a new group: "earliest" loses nothing.
    kafka_auto_offset_reset: Literal["earliest", "latest"] = "earliest"

    # --- Topics ---------------------------------------------------------------------------
    topic_clickstream: str = "clickstream.events"
    topic_search: str = "search.events"
    topic_purchase: str = "purchase.events"
    # Consent and do-not-contact (suppression) events, and requests to forget customers.
    topic_consent: str = "consent.events"
    topic_privacy: str = "privacy.requests"
    topic_triggers: str = "micromoment.triggers"
    # Detections for customers in a holdout group: not for contacting, for measuring lift.
    topic_holdout: str = "micromoment.holdout"
    # One event per customer erased, once their data is gone.
    topic_confirmations: str = "privacy.confirmations"
    topic_dlq: str = "micromoment.dlq"
    # Events more than the allowed lateness behind their customer's latest event (reason
    # `late`): the dead-letter topic when unset, or a topic of their own to replay from.
    topic_late: str | None = None
    # Internal: labelled examples, keyed by model, for the learners.
    topic_training: str = "micromoments.training"
    # Internal: events that arrived keyed by something other than their customer id
    # are re-keyed through this topic, so one worker sees all of a customer's events.
    topic_repartition: str = "micromoments.repartition"
    # Partitions of the input and repartition topics (they must all be equal), used when
    # the worker creates missing topics. The most workers that can share the load.
    partitions: Positive = 12
    replication_factor: Positive = 1
    # Create missing topics on start (dev, tests); production usually provisions them.
    create_topics: bool = True
    # Retention (retention.ms) of the topics the worker creates that hold copies of customers'
    # data it writes itself: the repartition topic (re-keyed events, search text and all) and
    # the training topic (hours); the dead-letter topics (the original records, hours). What
    # they hold ages out within this bound, a forgotten customer's included.
    internal_retention_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 365)] = 7 * 24
    dead_letter_retention_hours: Annotated[int, msgspec.Meta(ge=1, le=24 * 365)] = 14 * 24

    # --- Redis ----------------------------------------------------------------------------
    # redis://[:password@]host:port/db, rediss:// for TLS (certificates via query
    # parameters such as ?ssl_ca_certs=/path/ca.pem), or unix:///path/redis.sock. A Redis
    # Cluster: redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster://
    # for TLS), any of its nodes.
    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: str = "mm"
    # Secret (at least 32 bytes) naming customers where what is kept must outlive them: Redis
    # keys (an erased customer's tombstone) and the ids of training examples are keyed hashes
    # of the customer id, which nobody without it can link back. Required with Redis; the same
    # on every worker of a deployment, for its whole life (changing it orphans every state).
    pseudonym_key: Annotated[str, msgspec.Meta(min_length=32)] | None = None
    # A customer's state (and an erased customer's tombstone) is kept at least this long in
    # wall-clock time, whatever event time says: an outage, or a group stopped for hours, must
    # not drop windows, carts and deadlines that event time still needs when it resumes.
    state_min_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=90 * 86_400)] = 86_400
    # Seconds a Redis call may take before it fails and its batch is retried: a Redis that
    # hangs (paused, partitioned away) must not hold a batch, or a rebalance, for ever.
    redis_timeout_s: Annotated[float, msgspec.Meta(gt=0.0, le=300.0)] = 10.0
    # Replicas each save must reach (Redis WAIT) before the batch counts as saved: with 1, a
    # primary that dies is replaced by a replica that has every save acknowledged (the
    # setting for a Redis Cluster or a primary with a replica). Fewer within half of
    # redis_timeout_s: the batch is retried.
    redis_min_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0

    # --- Processing -----------------------------------------------------------------------
    # Most records one fetch hands to the detector: bounds a batch's time and memory.
    batch_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 5000
    # Records of one topic wait for the other input topics of their partition to catch
    # up, so a stream is processed in event-time order: as long as it takes for a topic
    # the broker says has more records, and at most this long for one whose lag is not
    # known yet (just assigned, or its fetches failing).
    align_max_wait_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 10_000
    # A partition with nothing to read for this long follows the event time of the
    # deployment's other partitions, so its absence deadlines still fire.
    idle_partition_ms: Annotated[int, msgspec.Meta(ge=100, le=3_600_000)] = 10_000
    # Absence deadlines (open carts, releases at the end of quiet hours) due within this many
    # seconds past a partition's time are held in the worker's memory; later ones stay in
    # Redis until that time comes near, each partition reading the next span in one range
    # query. Bounds memory by the deadlines of a span rather than all pending ones (hours
    # of quiet-hours releases); longer spans mean fewer, larger reads.
    deadline_lookahead_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 86_400)] = 60
    # Moment configuration (TOML) merged over the shipped defaults.
    moments_config: str | None = None

    # --- Learning -------------------------------------------------------------------------
    # Secret (at least 32 bytes) signing and verifying model snapshots: a snapshot that does
    # not verify is never unpickled. Without it the worker does not learn: the rules decide.
    model_key: Annotated[str, msgspec.Meta(min_length=32)] | None = None
    # Run a learner in this worker (each model is learnt by one learner of the deployment).
    learner: bool = True
    # Seconds between checks for newer model versions to score with.
    model_refresh_s: Annotated[float, msgspec.Meta(gt=0.0)] = 5.0
    # A learner stores a snapshot after this many examples, or this many seconds.
    snapshot_every: Positive = 500
    snapshot_interval_s: Annotated[float, msgspec.Meta(gt=0.0)] = 5.0

    # --- Operations -----------------------------------------------------------------------
    # HTTP port for /metrics, /livez and /readyz (0 picks a free port).
    metrics_port: Port = 6066
    # Only loopback by default; set 0.0.0.0 in a container so Prometheus can scrape.
    metrics_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @property
    def late_topic(self) -> str:
        """Where late events go: ``topic_late``, or the dead-letter topic."""
        return self.topic_late or self.topic_dlq

    @property
    def input_topics(self) -> tuple[str, ...]:
        """Every topic of customer events, partitioned by customer id.

        In this order: at equal timestamps the worker takes the earlier topic's record
        first, so what a customer allows applies to what they do at the same instant.
        """
        return (
            self.topic_consent,
            self.topic_privacy,
            self.topic_clickstream,
            self.topic_search,
            self.topic_purchase,
        )


class SettingsError(ValueError):
    pass


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from ``MM_*`` variables (``os.environ`` by default), then ``overrides``."""
    env = os.environ if environ is None else environ
    known = set(Settings.__struct_fields__)
    values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :].lower()
        if name not in known:
            names = ", ".join(sorted(f"{PREFIX}{n.upper()}" for n in known))
            raise SettingsError(f"{key} is not a setting; the settings are {names}")
        values[name] = value
    values.update(overrides)
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1].rstrip("`") if "$." in str(exc) else ""
        raise SettingsError(f"invalid setting {PREFIX}{field.upper()}: {exc}") from exc


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as ``MM_*`` names, secrets masked."""
    return {
        f"{PREFIX}{name.upper()}": ("***" if name in SECRETS and value else value)
        for name, value in msgspec.structs.asdict(settings).items()
    }
