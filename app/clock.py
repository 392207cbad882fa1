"""A stream's "now" in event time, robust to single bad timestamps.

The clock follows the stream's timestamps, but only up to a time that
``QUORUM`` consecutive events vouch for: it is the highest minimum over any
``QUORUM`` consecutive timestamps. One event from a device whose clock is a
day (or 70 years) ahead cannot drag the stream's watermark along — which
would make every honest event late and fire every pending deadline — while a
real jump, say after a quiet night on a partition, is followed as soon as a
few events confirm it.

>>> clock = EventClock()
>>> [clock.observe(ts) for ts in (100, 105, 9_999_999, 110, 120)]
[None, None, 100, 105, 110]
>>> clock.time
110
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

QUORUM: Final = 3


class EventClock:
    __slots__ = ("_recent", "time")  # read for every event

    def __init__(self, time: int | None = None, recent: Iterable[int] = ()) -> None:
        self.time = time
        self._recent: deque[int] = deque(recent, maxlen=QUORUM)

    @property
    def recent(self) -> list[int]:
        """The timestamps still waiting for company; part of a stream's checkpoint."""
        return list(self._recent)

    def observe(self, ts: int) -> int | None:
        """Count an event's time in; the new time if the clock moved forward, else None."""
        recent = self._recent
        recent.append(ts)
        if len(recent) < QUORUM:
            return None
        confirmed = min(recent)
        if self.time is None or confirmed > self.time:
            self.time = confirmed
            return confirmed
        return None

    def copy(self) -> EventClock:
        return EventClock(self.time, self._recent)
