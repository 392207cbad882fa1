"""Event-time order across co-partitioned topics, whatever the fetches look like.

Partition N of the clickstream, search, purchase and repartition topics is one
stream. A fetch returns a chunk of each, but chunks of different topics span
different stretches of time (a chunk of a busy topic covers minutes, one of a
quiet topic hours), so merging fetch by fetch would let the quiet topic's
later events run ahead of the busy topic's, and a customer's purchase could
come after their later clicks.

So, as Kafka Streams does, records wait in a buffer per topic, and the
:class:`Aligner` releases them in time order (ties in topic order), each topic
in its own order, only while it knows that no topic can still deliver an earlier
record: each topic either has records buffered or is caught up with its log end.
A topic that is behind with nothing buffered holds the stream back until its next
fetch: for as long as it takes when the broker says it has records (lag known: a
slow topic is waited for, never overtaken, as Kafka Streams does since KIP-695),
and for at most ``max_wait`` without anything arriving or leaving when its lag is
not known yet (a topic-partition not fetched since an assignment, or whose
fetches fail). Order also gives way when more than ``max_buffered`` records
wait; the caller should stop fetching a topic whose records pile up
(:meth:`sizes`) rather than let that happen.

**No single device can hold a topic back.** A topic's place in the merge is its
first record's time — unless the first records of the next ``QUORUM - 1`` other
customers (``voter``) in the topic are all earlier: then that first record is
ahead of its topic (a device whose clock is hours or years ahead), and the topic
takes the place of the records that follow it. Otherwise an event dated ahead at the head
of a topic would stop it until every other topic had caught up with that time,
and the events queued behind it would all come too late. Such an event goes out
in its topic's order, and the stream's processor decides what to do with it.
Until a topic holds records of that many other customers (or is caught up), its
place is not settled and it is waited for, as an empty one is.

When order gives way, the records released may be ahead of what a topic that
is behind will deliver: :meth:`hold` says how far that topic has come, so that
the stream's deadlines are not fired past it.

>>> from collections import namedtuple
>>> R = namedtuple("R", "timestamp offset")
>>> aligner = Aligner(["clicks", "search"], quorum=1)
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
from collections.abc import Callable, Hashable, Sequence
from itertools import islice
from typing import Generic, Protocol, TypeVar

from app.clock import QUORUM

# How far into a topic's buffer its place in the merge is looked for.
LOOKAHEAD = 64


class Record(Protocol):
    @property
    def timestamp(self) -> int: ...

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=Record)
# Whether a topic (of this partition) is caught up with its log end: True, False (the
# broker has more), or None (not known yet).
CaughtUp = Callable[[str], "bool | None"]


def _asked_once(caught_up: CaughtUp) -> CaughtUp:
    """``caught_up``, asked at most once per topic."""
    answers: dict[str, bool | None] = {}

    def asked(topic: str) -> bool | None:
        if topic not in answers:
            answers[topic] = caught_up(topic)
        return answers[topic]

    return asked


class Aligner(Generic[R]):
    def __init__(
        self,
        topics: Sequence[str],
        *,
        max_wait: float = 10.0,
        max_buffered: int = 50_000,
        voter: Callable[[R], Hashable] = id,
        quorum: int = QUORUM,
    ) -> None:
        """``voter`` tells whose a record is (the customer); ``quorum`` how many of them place a topic."""
        # Topic order breaks timestamp ties, so equal timestamps release deterministically.
        self.topics = list(topics)
        self.max_wait = max_wait
        self.max_buffered = max_buffered
        self._voter = voter
        self._quorum = quorum
        self._buffers: dict[str, deque[R]] = {topic: deque() for topic in self.topics}
        # Per topic with records: its place in the merge, and whether enough voters set it.
        self._places: dict[str, tuple[int, bool]] = {}
        # Timestamp of the latest record added per topic: how far it has come.
        self._reached: dict[str, int] = {}
        # Last time a record arrived or left; None while nothing waits.
        self._active_at: float | None = None

    def add(self, topic: str, records: Sequence[R], now: float) -> None:
        if records:
            self._buffers[topic].extend(records)
            self._reached[topic] = records[-1].timestamp
            self._places.pop(topic, None)
            self._active_at = now

    def __len__(self) -> int:
        return sum(len(buffer) for buffer in self._buffers.values())

    def sizes(self) -> dict[str, int]:
        """Records waiting, per topic."""
        return {topic: len(buffer) for topic, buffer in self._buffers.items()}

    def release(self, caught_up: CaughtUp, now: float) -> list[R]:
        """Records that can go now, in time order; ``now`` is a monotonic clock."""
        out: list[R] = []
        buffers = self._buffers
        caught_up = _asked_once(caught_up)  # whether a topic is caught up does not change meanwhile
        forced = len(self) > self.max_buffered or self._waited_out(caught_up, now)
        while True:
            heads: list[tuple[int, int, str]] = []
            for i, (topic, buffer) in enumerate(buffers.items()):
                if buffer:
                    at, placed = self._place(topic)
                    if not (placed or forced or caught_up(topic) is True):
                        heads = []
                        break
                    heads.append((at, i, topic))
                elif not forced and caught_up(topic) is not True:
                    heads = []
                    break
            if not heads:
                break
            heads.sort()
            _, i, topic = heads[0]
            out.extend(self._run(topic, i, heads[1][:2] if len(heads) > 1 else None, forced, caught_up))
        if not len(self):
            self._active_at = None
        elif out:
            self._active_at = now
        return out

    def _run(
        self, topic: str, i: int, next_place: tuple[int, int] | None, forced: bool, caught_up: CaughtUp
    ) -> list[R]:
        """The first records of ``topic`` (the ``i``-th), which goes first, until another's turn comes.

        The other topics' places do not change while this one's records go, so only its own
        place is looked at again: it goes on while that stays before ``next_place``, the
        next topic's (place, index), and settled. Anything else is left to :meth:`release`.
        """
        buffer = self._buffers[topic]
        places = self._places
        run = [buffer.popleft()]
        places.pop(topic, None)
        while buffer:
            at, placed = self._place(topic)
            if not (placed or forced or caught_up(topic) is True):
                break
            if next_place is not None and (at, i) > next_place:
                break
            run.append(buffer.popleft())
            places.pop(topic, None)
        return run

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
        self._places.clear()
        self._reached.clear()
        self._active_at = None

    def _place(self, topic: str) -> tuple[int, bool]:
        """A topic's place in the merge: its first record's time, unless that record is ahead of its topic.

        It is, when the first records of the next ``quorum - 1`` other voters are all earlier:
        then the earliest of the records up to them. And whether that is settled: that many
        voters seen, or ``LOOKAHEAD`` records (else the place may still change as more come).
        """
        place = self._places.get(topic)
        if place is not None:
            return place
        buffer = self._buffers[topic]
        head = buffer[0]
        needed = self._quorum - 1
        if not needed:
            place = self._places[topic] = (head.timestamp, True)
            return place
        voter = self._voter
        mine = voter(head)
        if needed == 2 and len(buffer) > 2:
            # The usual case, looked at first: the next two records are of two other voters.
            first, second = buffer[1], buffer[2]
            one, two = voter(first), voter(second)
            if one != mine and two != mine and one != two:
                ahead = first.timestamp < head.timestamp and second.timestamp < head.timestamp
                at = min(first.timestamp, second.timestamp) if ahead else head.timestamp
                place = self._places[topic] = (at, True)
                return place
        others: dict[Hashable, int] = {}
        earliest = head.timestamp
        seen = 1
        for record in islice(buffer, 1, LOOKAHEAD):
            seen += 1
            earliest = min(earliest, record.timestamp)
            who = voter(record)
            if who != mine and who not in others:
                others[who] = record.timestamp
                if len(others) == needed:
                    break
        ahead = len(others) == needed and all(t < head.timestamp for t in others.values())
        # Ahead: the topic's place is that of what follows the head, its own customer's too.
        at = earliest if ahead else head.timestamp
        place = self._places[topic] = (at, len(others) == needed or seen >= LOOKAHEAD)
        return place

    def _waited_out(self, caught_up: CaughtUp, now: float) -> bool:
        """Whether order gives way to progress: stuck for ``max_wait``, on topics whose lag is unknown."""
        if self._active_at is None or now - self._active_at < self.max_wait:
            return False
        blocking = [t for t, b in self._buffers.items() if caught_up(t) is not True]
        blocking = [t for t in blocking if not self._buffers[t] or not self._place(t)[1]]
        return all(caught_up(t) is None for t in blocking)
