"""Event-time order across co-partitioned topics, whatever the fetches look like.

Partition N of the clickstream, search, purchase and repartition topics is one
stream. A fetch returns a chunk of each, but chunks of different topics span
different stretches of time (a chunk of a busy topic covers minutes, one of a
quiet topic hours), so merging fetch by fetch would let the quiet topic's
later events run ahead and push the stream's watermark past the busy topic's
events, which would then be dropped as late.

So, as Kafka Streams does, records wait in a buffer per topic, and the
:class:`Aligner` releases them in timestamp order only while it knows that no
topic can still deliver an earlier record: each topic either has a buffered
record or is caught up with its log end. A topic that is behind but has
nothing buffered holds the stream back until its next fetch. Order gives way
to progress when nothing has arrived or moved for ``max_wait`` seconds, or
when more than ``max_buffered`` records wait. Live traffic rarely waits at
all: after a fetch every topic is usually caught up. A backlog can: fetches
may bring many records of one topic before the first of another, so the
caller should stop fetching a topic whose records pile up (:meth:`sizes`)
rather than let ``max_buffered`` force them out of order.

>>> from collections import namedtuple
>>> R = namedtuple("R", "timestamp offset")
>>> aligner = Aligner(["clicks", "search"])
>>> aligner.add("clicks", [R(10, 0), R(30, 1)], now=0.0)
>>> aligner.add("search", [R(20, 0)], now=0.0)
>>> [r.timestamp for r in aligner.release(caught_up=lambda topic: topic == "clicks", now=0.0)]
[10, 20]
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


class Aligner(Generic[R]):
    def __init__(self, topics: Sequence[str], *, max_wait: float = 0.5, max_buffered: int = 50_000) -> None:
        # Topic order breaks timestamp ties, so equal timestamps release deterministically.
        self.topics = list(topics)
        self.max_wait = max_wait
        self.max_buffered = max_buffered
        self._buffers: dict[str, deque[R]] = {topic: deque() for topic in self.topics}
        # Last time a record arrived or left; None while nothing waits.
        self._active_at: float | None = None

    def add(self, topic: str, records: Sequence[R], now: float) -> None:
        if records:
            self._buffers[topic].extend(records)
            self._active_at = now

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    def sizes(self) -> dict[str, int]:
        """Records waiting, per topic."""
        return {topic: len(buffer) for topic, buffer in self._buffers.items()}

    def release(self, caught_up: Callable[[str], bool], now: float) -> list[R]:
        """Records that can go now, in timestamp order; ``now`` is a monotonic clock."""
        out: list[R] = []
        buffers = self._buffers
        idle = self._active_at is not None and now - self._active_at >= self.max_wait
        forced = idle or len(self) > self.max_buffered
        while True:
            heads = [(b[0].timestamp, i, topic) for i, (topic, b) in enumerate(buffers.items()) if b]
            if not heads:
                break
            if not forced and any(not b and not caught_up(topic) for topic, b in buffers.items()):
                break
            out.append(buffers[min(heads)[2]].popleft())
        if not len(self):
            self._active_at = None
        elif out:
            self._active_at = now
        return out

    def next_offsets(self) -> dict[str, int]:
        """Per topic, the offset of the first record still waiting: commits must stop there."""
        return {topic: buffer[0].offset for topic, buffer in self._buffers.items() if buffer}

    def clear(self) -> None:
        for buffer in self._buffers.values():
            buffer.clear()
        self._active_at = None
