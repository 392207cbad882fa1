"""A stream's "now" in event time, which no single customer or device can drag forward.

The clock is the latest time that ``QUORUM`` *distinct* customers have all
reached: it remembers the latest timestamp of each of the last ``QUORUM``
customers seen and moves to the lowest of them when that is later than where
it stands. A device whose clock is a day (or 70 years, or five hours) ahead
can send as many events as it likes: it is one voter, and the others hold the
stream's time where it is, so it can neither make every honest event late nor
fire every pending deadline. A real jump of the whole stream (a quiet night
ends) is followed as soon as ``QUORUM`` customers confirm it. A device far
behind only delays the clock while it is among the last voters: the clock
never moves back.

>>> clock = EventClock()
>>> [clock.observe(ts, who) for ts, who in [(100, "a"), (105, "b"), (9_999_999, "x"), (9_999_999, "x")]]
[None, None, 100, None]
>>> [clock.observe(ts, who) for ts, who in [(9_999_999, "x"), (110, "a"), (120, "b")]]
[None, 105, 110]
>>> clock.time
110

A checkpoint keeps the voters' latest times under a 16-bit tag of their id
(:func:`voter_tag`), not the id: enough to recognise a voter across a
restart, too coarse to tell who they are.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Iterable
from typing import Final

QUORUM: Final = 3


def voter_tag(customer: str) -> int:
    """A stable 16-bit tag of a customer id: shared by thousands of ids, so it names nobody.

    >>> voter_tag("c-1") == voter_tag("c-1"), 0 <= voter_tag("c-1") < 2**16
    (True, True)
    """
    return zlib.crc32(customer.encode()) & 0xFFFF


class EventClock:
    __slots__ = ("_restored", "_voters", "time")  # read for every event

    def __init__(self, time: int | None = None, recent: Iterable[tuple[int, int]] = ()) -> None:
        self.time = time
        # Voter -> their latest time, least recently seen first: customer ids, or the tags
        # of voters restored from a checkpoint until they are seen again or leave.
        self._voters: dict[str | int, int] = dict(recent)
        self._restored = bool(self._voters)

    @property
    def recent(self) -> list[tuple[int, int]]:
        """The voters as (tag, latest time), least recently seen first: part of a stream's checkpoint."""
        return [
            (voter if isinstance(voter, int) else voter_tag(voter), ts) for voter, ts in self._voters.items()
        ]

    def observe(self, ts: int, customer: str) -> int | None:
        """Count ``customer``'s event at ``ts`` in; the new time if the clock moved forward, else None."""
        voters = self._voters
        voter: str | int = customer
        if self._restored:
            voter = self._restored_voter(customer)
        known = voters.pop(voter, None)
        voters[voter] = ts if known is None or ts > known else known
        if len(voters) < QUORUM:
            return None
        if len(voters) > QUORUM:
            del voters[next(iter(voters))]
        confirmed = min(voters.values())
        if self.time is None or confirmed > self.time:
            self.time = confirmed
            return confirmed
        return None

    def reach(self, seen: Iterable[tuple[int, str]]) -> int | None:
        """The furthest the clock can get by observing ``seen`` (time, customer) pairs.

        It moves to the lowest time of ``QUORUM`` distinct voters, so never past the
        ``QUORUM``-th latest of all the voters' latest times.

        >>> clock = EventClock(100, [(1, 100), (2, 105), (3, 110)])
        >>> clock.reach([(9_999_999, "x"), (9_999_999, "x"), (130, "a"), (120, "b")])
        120
        """
        latest = dict(self._voters)
        for ts, who in seen:
            known = latest.get(who)
            if known is None or ts > known:
                latest[who] = ts
        if len(latest) < QUORUM:
            return self.time
        bound = heapq.nlargest(QUORUM, latest.values())[-1]
        return bound if self.time is None or bound > self.time else self.time

    def advance(self, to: int) -> bool:
        """Move the clock to ``to`` if that is later (the deployment's time reached this stream); moved?"""
        if self.time is None or to > self.time:
            self.time = to
            return True
        return False

    def copy(self) -> EventClock:
        clock = EventClock(self.time)
        clock._voters = dict(self._voters)
        clock._restored = self._restored
        return clock

    def _restored_voter(self, customer: str) -> str | int:
        """``customer``, or the tag it was restored under: a voter counts once across a restart."""
        tag = voter_tag(customer)
        if tag in self._voters:
            return tag
        self._restored = any(isinstance(v, int) for v in self._voters)
        return customer
