"""The contract every state store keeps; ``tests/test_state_contract.py`` checks it.

Two kinds of data, both written only after a batch's triggers are safely out:

- per customer: the window state, versioned, so a write from a worker that has
  lost the customer (a zombie after a rebalance) is refused instead of
  silently overwriting the new owner's work;
- per stream (a replay, or one Kafka partition): the event-time clock and the
  pending absence deadlines, so they survive restarts and rebalances.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import msgspec

from app.window import CustomerState


class Versioned(msgspec.Struct, frozen=True, gc=False):
    state: CustomerState
    version: int
    # The state as stored (``app.state.codec``), untouched by whatever is done to ``state``:
    # a batch that must be redone without one of its events starts again from it.
    stored: bytes = b""


class StateWrite(msgspec.Struct, frozen=True, gc=False):
    state: CustomerState
    # The version the state was loaded at; 0 for a customer new to the store.
    expected_version: int
    # Event time (ms) after which the state is of no further use.
    expires_at: int


class StreamSave(msgspec.Struct, frozen=True, gc=False):
    """One stream's part of a batch: changed states and the stream's checkpoint changes."""

    stream: str
    writes: Sequence[StateWrite]
    clock: int | None
    # Customer -> their new deadline, or None to drop theirs.
    deadlines: Mapping[str, int | None]
    # The clock's latest voters, (tag, latest time) each (see app.clock).
    recent: Sequence[tuple[int, int]] = ()
    # Customers to erase (deleted before the writes, which then expect version 0).
    erase: Sequence[str] = ()


class Checkpoint(msgspec.Struct, frozen=True, gc=False):
    clock: int | None
    deadlines: dict[str, int]
    recent: list[tuple[int, int]] = msgspec.field(default_factory=list)


class ConflictError(RuntimeError):
    """Someone else wrote a customer's state since it was loaded."""

    def __init__(self, customers: Collection[str]) -> None:
        super().__init__(f"state of {len(customers)} customer(s) changed since it was loaded")
        self.customers = set(customers)


class StateStore(Protocol):
    async def load(self, customers: Collection[str]) -> dict[str, Versioned]:
        """The stored states of ``customers``; unknown or expired customers are absent."""

    async def save(self, saves: Sequence[StreamSave]) -> None:
        """Erase, then write states and streams' checkpoint changes, all or nothing.

        Raises :class:`ConflictError`, writing nothing, if any state's stored
        version (after the erasures) differs from its ``expected_version``.
        """

    async def checkpoint(self, stream: str) -> Checkpoint:
        """The stream's clock and pending deadlines (empty for a new stream)."""

    async def clocks(self) -> dict[str, int]:
        """Every stream's clock as last saved (streams without one yet are absent)."""

    async def forget(self, customer: str) -> bool:
        """Erase everything held about ``customer``; True if there was anything."""

    async def close(self) -> None: ...
