"""The contract every state store keeps; ``tests/test_state_contract.py`` checks it.

Two kinds of data, both written only after a batch's triggers are safely out:

- per customer: the window state, versioned, so a write from a worker that has
  lost the customer (a zombie after a rebalance) is refused instead of
  silently overwriting the new owner's work. Versions only grow: erasing a
  customer (the right to be forgotten) leaves a *tombstone*, no data but the
  next version, so a write loaded before the erasure is refused too;
- per stream (a replay, or one Kafka partition): the event-time clock and the
  pending absence deadlines, so they survive restarts and rebalances. A worker
  *claims* a stream when it starts on it, which moves the stream's epoch on;
  its saves carry that epoch, and a save from an earlier owner (a zombie) is
  refused, states and checkpoint alike.

A save is all or nothing: any version or epoch that differs refuses the whole of
it (:class:`ConflictError`), and writes nothing.

Each stream's checkpoint also says where its input stands (*positions*: per source
topic, the offset of the first record its states do not reflect). When the input's
offsets are committed after the save, in a Kafka transaction with the batch's output
(exactly once), a save can keep its *undo*: what every key it changed held before.
Should the transaction then not commit, :meth:`StateStore.reconcile`, given the
offsets Kafka did commit, puts the stream back as it was before that save.
"""

from __future__ import annotations

import enum
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
    # The stored bytes could not be read (see app.state.codec.UnreadableState): ``state`` is a
    # fresh one, which a save replaces them with.
    unreadable: bool = False


class StateWrite(msgspec.Struct, frozen=True, gc=False):
    state: CustomerState
    # The version the state was loaded at; 0 for a customer new to the store.
    expected_version: int
    # Event time (ms) after which the state is of no further use.
    expires_at: int


class Erasure(msgspec.Struct, frozen=True, gc=False):
    """A customer to erase: left as a tombstone at ``expected_version`` + 1."""

    customer: str
    expected_version: int


class StreamSave(msgspec.Struct, frozen=True, gc=False):
    """One stream's part of a batch: changed states and the stream's checkpoint changes."""

    stream: str
    writes: Sequence[StateWrite]
    clock: int | None
    # Customer -> their new deadline, or None to drop theirs.
    deadlines: Mapping[str, int | None]
    # The clock's latest voters, (tag, latest time) each (see app.clock).
    recent: Sequence[tuple[int, int]] = ()
    # Customers to erase, before the writes (a write of one of them expects the tombstone's version).
    erase: Sequence[Erasure] = ()
    # The epoch the stream was claimed at (see StateStore.claim); 0: unclaimed, not checked.
    epoch: int = 0
    # Where the stream's input stands once this is saved: source (a topic) -> the position
    # (offset) of the first record not applied yet. Opaque to the store.
    positions: Mapping[str, int] = msgspec.field(default_factory=dict)
    # Keep what this save changes, as it was, until the stream's next save or reconcile.
    undo: bool = False


class Reconciled(enum.Enum):
    """What :meth:`StateStore.reconcile` found of a stream against the input committed, and did."""

    # The states reflect exactly the committed input.
    CONSISTENT = "consistent"
    # They reflected the last save's input, which was not committed: that save was undone.
    ROLLED_BACK = "rolled_back"
    # They reflect more than was committed, with no undo that would match (saved while at least
    # once): records they reflect are skipped when read again, as at least once does.
    AHEAD = "ahead"
    # They reflect less than was committed: the store lost writes (a Redis restored from an old
    # snapshot). Nothing can restore them; the records in between are not applied.
    BEHIND = "behind"


def compare_positions(positions: Mapping[str, int], committed: Mapping[str, int | None]) -> Reconciled:
    """Where stored ``positions`` stand against ``committed`` ones (None: nothing committed)."""
    stored = {source: positions.get(source, -1) for source in committed}
    if all(stored[s] == (c if c is not None else -1) for s, c in committed.items()):
        return Reconciled.CONSISTENT
    if any(stored[s] < c for s, c in committed.items() if c is not None):
        return Reconciled.BEHIND
    return Reconciled.AHEAD


class Checkpoint(msgspec.Struct, frozen=True, gc=False):
    """Where a stream stands; its pending deadlines are read apart (:meth:`StateStore.deadlines`)."""

    clock: int | None
    recent: list[tuple[int, int]] = msgspec.field(default_factory=list)
    # See StreamSave.positions: what the stored states reflect of the input.
    positions: dict[str, int] = msgspec.field(default_factory=dict)


class ConflictError(RuntimeError):
    """Someone else wrote a customer's state, or claimed a stream, since it was loaded."""

    def __init__(self, customers: Collection[str], streams: Collection[str] = ()) -> None:
        super().__init__(
            f"state of {len(customers)} customer(s) changed, and {len(streams)} stream(s) claimed by"
            " another worker, since loaded"
        )
        self.customers = set(customers)
        self.streams = set(streams)


class StateStore(Protocol):
    """Where customer states and streams' checkpoints live (Redis, one node or a cluster; memory)."""

    async def load(self, customers: Mapping[str, Collection[str]]) -> dict[str, Versioned]:
        """The stored states of ``customers``.

        Parameters
        ----------
        customers
            Stream -> the customers on it whose states are wanted.

        Returns
        -------
        dict
            Customer -> its state and version. Unknown and expired customers are absent;
            an erased one comes back blank, at its tombstone's version.
        """

    async def save(self, saves: Sequence[StreamSave]) -> None:
        """Erase, then write states and streams' checkpoint changes.

        Parameters
        ----------
        saves
            Per stream: its states to write and erase, its clock, deadline changes,
            input positions and the epoch it was claimed at.

        Each stream's save is all or nothing; on one Redis (and in memory) the whole
        call is. Raises :class:`ConflictError`, writing nothing of the stream, if any
        state's stored version (or erasure's) differs from the one expected, or the
        stream's epoch from its save's.
        """

    async def claim(self, stream: str) -> int:
        """Make this process the stream's writer.

        Parameters
        ----------
        stream
            The stream (a partition) to write.

        Returns
        -------
        int
            The stream's new epoch, which every later save of this process carries: saves
            of earlier claims are refused from now on.
        """

    async def reconcile(self, stream: str, epoch: int, committed: Mapping[str, int | None]) -> Reconciled:
        """Bring a claimed stream in line with the input committed: ``committed`` per source (None:
        nothing), as Kafka holds it once the stream's last transaction has ended.

        Undoes the stream's last save if it kept an undo and its positions are past the
        committed ones that the undo's match. Raises :class:`ConflictError` if the stream has
        been claimed since ``epoch``.
        """

    async def checkpoint(self, stream: str) -> Checkpoint:
        """The stream's clock, its latest voters and its input positions (empty for a new stream)."""

    async def deadlines(
        self, stream: str, after: int | None = None, until: int | None = None
    ) -> dict[str, int]:
        """The stream's pending deadlines that fall in (``after``, ``until``].

        Parameters
        ----------
        stream
            The stream (a partition).
        after, until
            Event times (ms) bounding the deadlines wanted; None: unbounded on that side.

        Returns
        -------
        dict
            Customer -> their deadline (ms).
        """

    async def clocks(self) -> dict[str, int]:
        """Every stream's clock as last saved (streams without one yet are absent)."""

    async def forget(self, customer: str) -> bool:
        """Erase everything held about ``customer``: state and deadlines (a tombstone stays).

        Parameters
        ----------
        customer
            The customer's id.

        Returns
        -------
        bool
            Whether anything was held.
        """

    async def close(self) -> None: ...
