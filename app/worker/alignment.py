"""Event-time order across co-partitioned topics, whatever the fetches look like.

Partition N of the clickstream, search, purchase and repartition topics is one
stream. A fetch returns a chunk of each, but chunks of different topics span
different stretches of time (a chunk of a busy topic covers minutes, one of a
quiet topic hours), so merging fetch by fetch would let the quiet topic's
later events run ahead of the busy topic's.

So, as Kafka Streams does, records wait in a buffer per topic, and the
:class:`Aligner` releases them in timestamp order (ties in topic order) only
while it knows that no topic can still deliver an earlier record: each topic
either has a buffered record or is caught up with its log end. A topic that is
behind with nothing buffered holds the stream back until its next fetch, for as
long as it takes when the broker says it has records (lag known: a slow topic
is waited for, never overtaken, as Kafka Streams does since KIP-695), and for
at most ``max_wait`` without anything arriving or leaving when its lag is not
known yet (a topic-partition not fetched since an assignment, or whose fetches
fail). Order also gives way when more than ``max_buffered`` records wait; the
caller should stop fetching a topic whose records pile up (:meth:`sizes`)
rather than let that happen.

When order gives way, the records released may be ahead of what a topic that
is behind will deliver: :meth:`hold` says how far that topic has come, so that
the stream's deadlines are not fired past it.

>>> from collections import namedtuple
>>> R = namedtuple("R", "timestamp offset")
>>> aligner = Aligner(["clicks", "search"])
>>> aligner.add("clicks", [R(10, 0), R(30, 1)], now=0.0)
>>> aligner.add("search", [R(20, 0)], now=0.0)
>>> [r.timestamp for r in aligner.release(caught_up=lambda topic: topic == "clicks", now=0.0)]
[10, 20]
>>> aligner.hold(caught_up=lambda topic: topic == "clicks")
20
>>> [r.timestamp for r in aligner.release(caught_up=lambda topic: True, now=0.0)]
[30]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar


class Record(Protocol):
    @property
    def timestamp(self) -> int: ...

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=Record)
# Whether a topic (of this partition) is caught up with its log end: True, False (the
# broker has more), or None (not known yet).
CaughtUp = Callable[[str], "bool | None"]


class Aligner(Generic[R]):
    def __init__(self, topics: Sequence[str], *, max_wait: float = 10.0, max_buffered: int = 50_000) -> None:
        # Topic order breaks timestamp ties, so equal timestamps release deterministically.
        self.topics = list(topics)
        self.max_wait = max_wait
        self.max_buffered = max_buffered
        self._buffers: dict[str, deque[R]] = {topic: deque() for topic in self.topics}
        # Timestamp of the latest record added per topic: how far it has come.
        self._reached: dict[str, int] = {}
        # Last time a record arrived or left; None while nothing waits.
        self._active_at: float | None = None

    def add(self, topic: str, records: Sequence[R], now: float) -> None:
        if records:
            self._buffers[topic].extend(records)
            self._reached[topic] = records[-1].timestamp
            self._active_at = now

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    def sizes(self) -> dict[str, int]:
        """Records waiting, per topic."""
        return {topic: len(buffer) for topic, buffer in self._buffers.items()}

    def release(self, caught_up: CaughtUp, now: float) -> list[R]:
        """Records that can go now, in timestamp order; ``now`` is a monotonic clock."""
        out: list[R] = []
        buffers = self._buffers
        forced = len(self) > self.max_buffered or self._waited_out(caught_up, now)
        while True:
            heads = [(b[0].timestamp, i, topic) for i, (topic, b) in enumerate(buffers.items()) if b]
            if not heads:
                break
            if not forced and any(not b and caught_up(topic) is not True for topic, b in buffers.items()):
                break
            out.append(buffers[min(heads)[2]].popleft())
        if not len(self):
            self._active_at = None
        elif out:
            self._active_at = now
        return out

    def hold(self, caught_up: CaughtUp) -> int | None:
        """How far the topics that are behind with nothing buffered have come (0: not at all).

        None when there is no such topic. Records released before it are ordered; a
        forced release may have gone past it, and the stream's time must not.
        """
        behind = [t for t, b in self._buffers.items() if not b and caught_up(t) is not True]
        return min((self._reached.get(t, 0) for t in behind), default=None)

    def next_offsets(self) -> dict[str, int]:
        """Per topic, the offset of the first record still waiting: commits must stop there."""
        return {topic: buffer[0].offset for topic, buffer in self._buffers.items() if buffer}

    def clear(self) -> None:
        for buffer in self._buffers.values():
            buffer.clear()
        self._reached.clear()
        self._active_at = None

    def _waited_out(self, caught_up: CaughtUp, now: float) -> bool:
        """Whether order gives way to progress: stuck for ``max_wait``, on topics whose lag is unknown."""
        if self._active_at is None or now - self._active_at < self.max_wait:
            return False
        blocking = [t for t, b in self._buffers.items() if not b and caught_up(t) is not True]
        return all(caught_up(t) is None for t in blocking)
