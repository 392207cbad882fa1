"""Apache Kafka on this machine: fetched from Maven Central, run with ``java`` on loopback ports.

One node in KRaft mode, broker and controller at once, its log directories in a
temporary folder: the production engine, for the integration tests and for
``micromoments dev --broker kafka``. The jars (Kafka and its runtime dependencies,
as ``kafka-runtime.pom.xml`` names them) are fetched once with Maven and cached
under ``~/.cache/micromoments`` (``MM_CACHE_DIR`` elsewhere); a lock keeps
concurrent first runs from fetching twice.

Like the other local servers (:mod:`app.embedded`) it listens on 127.0.0.1 only,
stops on exit and dies with the process that started it. Stopped (or killed) and
started again, it keeps its port and its data, as a restarted broker does.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType

from app.embedded import LOOPBACK, LocalServer, ServerUnavailable, free_port

SCRAM_MECHANISM = "SCRAM-SHA-512"
# What the broker logs once it serves clients (KafkaRaftServer, at INFO).
_STARTED = "Kafka Server started"
_JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Warnings and errors, and the lines that say the broker is up or going down.
_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def _pom() -> bytes:
    return resources.files("app").joinpath("kafka-runtime.pom.xml").read_bytes()


def cache_dir(pom: bytes | None = None) -> Path:
    """Where the jars of ``pom`` (Kafka's runtime by default) are kept."""
    configured = os.environ.get("MM_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "micromoments"
    return base / f"kafka-{hashlib.sha256(pom or _pom()).hexdigest()[:12]}"


def _program(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable(f"Apache Kafka needs {name} on PATH ({package})")
    return found


def install(timeout: float = 900.0, pom: bytes | None = None) -> Path:
    """The directory of Kafka's jars, fetched from Maven Central unless cached.

    Parameters
    ----------
    timeout
        Seconds Maven may take to fetch them.
    pom
        A POM naming other Kafka artifacts (its ``kafka*.jar`` and their runtime
        dependencies); by default ``kafka-runtime.pom.xml``, the broker's.

    Returns
    -------
    Path
        A directory of jars, to run with ``java -cp '<dir>/*'``.
    """
    home = cache_dir(pom)
    libs = home / "libs"
    if libs.is_dir():
        return libs
    mvn = _program("mvn", "Debian package maven")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs.is_dir():  # fetched by another process while we waited
            return libs
        with tempfile.TemporaryDirectory(dir=home) as work:
            project = Path(work) / "pom.xml"
            project.write_bytes(pom or _pom())
            fetched = Path(work) / "libs"
            result = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(project),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={fetched}",
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if result.returncode != 0 or not any(fetched.glob("kafka*.jar")):
                raise ServerUnavailable(
                    f"Maven could not fetch Apache Kafka (exit {result.returncode}):\n"
                    f"{(result.stdout + result.stderr)[-4000:]}"
                )
            # Whole or not at all: a later run finds every jar or none.
            fetched.rename(libs)
    return libs


class ApacheKafka(LocalServer):
    """A single-node Apache Kafka (KRaft) on loopback ports, its data in a temporary folder.

    Parameters
    ----------
    port
        The PLAINTEXT listener's port; a free one if None.
    scram_users
        User -> password: adds a ``SASL_PLAINTEXT`` listener (see :attr:`sasl_bootstrap`)
        that admits these users with SCRAM-SHA-512.
    """

    name = "kafka"
    transactions = True

    def __init__(self, port: int | None = None, *, scram_users: Mapping[str, str] | None = None) -> None:
        super().__init__(port)
        self.controller_port = free_port()
        self.scram_users = dict(scram_users or {})
        self.sasl_port = free_port() if self.scram_users else None
        self._dir = tempfile.TemporaryDirectory(prefix="micromoments-kafka-")
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        if self.sasl_port is None:
            raise ValueError("this broker has no SASL listener: give it scram_users")
        return f"{LOOPBACK}:{self.sasl_port}"

    @property
    def _home(self) -> Path:
        return Path(self._dir.name)

    def start(self, timeout: float = 120.0) -> ApacheKafka:
        """Start it (formatting its storage the first time) and wait until it serves clients."""
        if not self._formatted:
            self._format()
        super().start(timeout)
        return self

    def _ready(self) -> bool:
        return _STARTED in self.log_since_start() and super()._ready()

    def _java(self, main: str, *args: str) -> list[str]:
        java = _program("java", "a Java runtime, 17 or later: Debian package openjdk-17-jre-headless")
        return [
            java,
            *_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={self._home / 'log4j2.properties'}",
            "-cp",
            f"{install()}/*",
            main,
            *args,
        ]

    def _format(self) -> None:
        (self._home / "log4j2.properties").write_text(_LOG4J2)
        (self._home / "server.properties").write_text(self._properties())
        scram = [
            arg
            for user, password in self.scram_users.items()
            for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]")
        ]
        command = self._java(
            "kafka.tools.StorageTool",
            "format",
            # One argument: an id may start with "-", which would read as an option.
            f"--cluster-id={_cluster_id()}",
            "--config",
            str(self._home / "server.properties"),
            *scram,
        )
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"formatting Kafka's storage failed:\n{result.stdout}{result.stderr}")
        self._formatted = True

    def _command(self) -> Sequence[str]:
        return self._java("kafka.Kafka", str(self._home / "server.properties"))

    def _properties(self) -> str:
        listeners = [f"PLAINTEXT://{LOOPBACK}:{self.port}"]
        if self.sasl_port is not None:
            listeners.append(f"SASL_PLAINTEXT://{LOOPBACK}:{self.sasl_port}")
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join([*listeners, f"CONTROLLER://{LOOPBACK}:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "log.dirs": str(self._home / "data"),
            # One node: nothing to replicate to.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A few partitions for the internal topics: created on first use, 50 each take seconds.
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            # Records are stamped with their events' time, and fixtures and replays are of days
            # past: retention by time would delete them mid-run, even on topics the worker creates
            # with a retention of their own. This broker lives for a test run or a dev session:
            # it never needs to free space.
            "log.retention.ms": "-1",
            "log.retention.check.interval.ms": str(7 * 86_400_000),
            # Groups form at once, and tests may use short sessions.
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
        }
        if self.sasl_port is not None:
            settings.update(
                {
                    "sasl.enabled.mechanisms": SCRAM_MECHANISM,
                    "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                }
            )
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        with contextlib.suppress(OSError):
            self._dir.cleanup()


def _cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes them: 16 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
