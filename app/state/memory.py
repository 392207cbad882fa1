"""The in-memory :class:`~app.state.store.StateStore`, for replay and tests.

Idle customers expire in event time: a state saved with ``expires_at`` is
dropped once a later save moves the clock past it, so memory stays flat however
many customers come and go. (The detector forgets such a state on its own as
well, so triggers never depend on when a store drops it.)

By default states are kept serialised, as Redis keeps them: a load returns a
copy, so a batch that fails after changing its states leaves the store as it
was, and can be redone (the streaming worker with ``MM_REDIS_URL=memory://``).
A store given ``shared=n`` keeps the ``n`` most recently saved states as the
objects themselves and hands them out without a copy, skipping serialisation
both ways for the customers active now; older ones are serialised. That is for a
caller that saves every state it changes and never redoes a batch, which is
what replay does: an object costs about 2.6 KB, its serialised form 0.8 KB.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence

import msgspec

from app.state.codec import decode_state, encode_state
from app.state.store import (
    Checkpoint,
    ConflictError,
    Reconciled,
    StreamSave,
    Versioned,
    compare_positions,
)
from app.window import CustomerState

_Stored = tuple[bytes | CustomerState, int, int]


class _Undo(msgspec.Struct, gc=False):
    """What a save changed of a stream, as it was (None: absent)."""

    clock: tuple[int | None, list[tuple[int, int]]] | None
    blobs: dict[str, _Stored | None] = msgspec.field(default_factory=dict)
    deadlines: dict[str, int | None] = msgspec.field(default_factory=dict)
    positions: dict[str, int | None] = msgspec.field(default_factory=dict)


class MemoryStateStore:
    def __init__(self, *, shared: int = 0) -> None:
        self.shared = shared
        # customer -> (state: serialised, the object itself, or b"" for a tombstone; version;
        # expires_at)
        self._blobs: dict[str, _Stored] = {}
        # The customers whose state is kept as an object, least recently saved first.
        self._objects: OrderedDict[str, None] = OrderedDict()
        self._expiry: list[tuple[int, str]] = []
        self._clocks: dict[str, tuple[int | None, list[tuple[int, int]]]] = {}
        self._deadlines: dict[str, dict[str, int]] = {}
        self._epochs: dict[str, int] = {}
        self._positions: dict[str, dict[str, int]] = {}
        self._undo: dict[str, _Undo] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    async def load(self, customers: Mapping[str, Collection[str]]) -> dict[str, Versioned]:
        found = {}
        for customer in (c for some in customers.values() for c in some):
            stored = self._blobs.get(customer)
            if stored is None:
                continue
            state, version = stored[0], stored[1]
            if isinstance(state, CustomerState):
                # Handed out as it is; its serialised form is what a redone batch restarts from.
                found[customer] = Versioned(state, version, encode_state(state))
            elif not state:  # a tombstone
                blank = CustomerState(customer_id=customer)
                found[customer] = Versioned(blank, version, encode_state(blank))
            else:
                found[customer] = Versioned(decode_state(state), version, state)
        return found

    async def save(self, saves: Sequence[StreamSave]) -> None:
        blobs = self._blobs
        versions: dict[str, int] = {}

        def version(customer: str) -> int:
            if customer not in versions:
                stored = blobs.get(customer)
                versions[customer] = 0 if stored is None else stored[1]
            return versions[customer]

        conflicts = []
        for save in saves:
            for erasure in save.erase:
                if version(erasure.customer) != erasure.expected_version:
                    conflicts.append(erasure.customer)
                versions[erasure.customer] = erasure.expected_version + 1
        writes = [write for save in saves for write in save.writes]
        for write in writes:
            if version(write.state.customer_id) != write.expected_version:
                conflicts.append(write.state.customer_id)
        fenced = [s.stream for s in saves if s.epoch and self._epochs.get(s.stream, 0) != s.epoch]
        if conflicts or fenced:
            raise ConflictError(conflicts, fenced)
        for save in saves:
            self._undo.pop(save.stream, None)
            if save.undo:
                self._undo[save.stream] = self._undo_of(save)
        expiry, objects = self._expiry, self._objects
        for save in saves:
            for erasure in save.erase:
                # A tombstone, for as long as event time has not moved on.
                blobs[erasure.customer] = (b"", erasure.expected_version + 1, save.clock or 0)
                heapq.heappush(expiry, (save.clock or 0, erasure.customer))
                objects.pop(erasure.customer, None)
        for write in writes:
            customer = write.state.customer_id
            state: bytes | CustomerState = write.state
            if self.shared:
                objects[customer] = None
                objects.move_to_end(customer)
            else:
                state = encode_state(write.state)
            blobs[customer] = (state, write.expected_version + 1, write.expires_at)
            heapq.heappush(expiry, (write.expires_at, customer))
        while len(objects) > self.shared:
            # The least recently saved beyond the limit are serialised, in place.
            customer, _ = objects.popitem(last=False)
            stored = blobs.get(customer)
            if stored is not None and isinstance(stored[0], CustomerState):
                blobs[customer] = (encode_state(stored[0]), stored[1], stored[2])
        if len(self._expiry) > 2 * len(self._blobs) + 1024:
            # Every save pushes; shed the entries later saves made stale.
            self._expiry = [(expires_at, c) for c, (_, _, expires_at) in self._blobs.items()]
            heapq.heapify(self._expiry)
        for save in saves:
            self._clocks[save.stream] = (save.clock, list(save.recent))
            self._positions.setdefault(save.stream, {}).update(save.positions)
            pending = self._deadlines.setdefault(save.stream, {})
            for customer, deadline in save.deadlines.items():
                if deadline is None:
                    pending.pop(customer, None)
                else:
                    pending[customer] = deadline
        clocks = [save.clock for save in saves if save.clock is not None]
        if clocks:
            self._expire(max(clocks))

    def _undo_of(self, save: StreamSave) -> _Undo:
        def kept(stored: _Stored | None) -> _Stored | None:
            if stored is not None and isinstance(stored[0], CustomerState):
                return (encode_state(stored[0]), stored[1], stored[2])
            return stored

        customers = [e.customer for e in save.erase] + [w.state.customer_id for w in save.writes]
        pending, positions = self._deadlines.get(save.stream, {}), self._positions.get(save.stream, {})
        return _Undo(
            self._clocks.get(save.stream),
            {customer: kept(self._blobs.get(customer)) for customer in customers},
            {customer: pending.get(customer) for customer in save.deadlines},
            {source: positions.get(source) for source in save.positions},
        )

    async def claim(self, stream: str) -> int:
        self._epochs[stream] = self._epochs.get(stream, 0) + 1
        return self._epochs[stream]

    async def reconcile(self, stream: str, epoch: int, committed: Mapping[str, int | None]) -> Reconciled:
        if self._epochs.get(stream, 0) != epoch:
            raise ConflictError([], [stream])
        positions = self._positions.setdefault(stream, {})
        found = compare_positions(positions, committed)
        undo = self._undo.get(stream)
        if found is Reconciled.CONSISTENT or undo is None:
            if found is Reconciled.CONSISTENT:
                self._undo.pop(stream, None)
            return found
        before = {**positions, **{s: p for s, p in undo.positions.items() if p is not None}}
        for source in (s for s, p in undo.positions.items() if p is None):
            before.pop(source, None)
        if compare_positions(before, committed) is not Reconciled.CONSISTENT:
            return found
        del self._undo[stream]
        for customer, stored in undo.blobs.items():
            self._objects.pop(customer, None)
            if stored is None:
                self._blobs.pop(customer, None)
            else:
                self._blobs[customer] = stored
        if undo.clock is None:
            self._clocks.pop(stream, None)
        else:
            self._clocks[stream] = undo.clock
        pending = self._deadlines.setdefault(stream, {})
        for customer, deadline in undo.deadlines.items():
            if deadline is None:
                pending.pop(customer, None)
            else:
                pending[customer] = deadline
        self._positions[stream] = before
        return Reconciled.ROLLED_BACK

    async def checkpoint(self, stream: str) -> Checkpoint:
        clock, recent = self._clocks.get(stream, (None, []))
        return Checkpoint(clock, recent, dict(self._positions.get(stream, {})))

    async def deadlines(
        self, stream: str, after: int | None = None, until: int | None = None
    ) -> dict[str, int]:
        pending = self._deadlines.get(stream, {}).items()
        return {c: d for c, d in pending if (after is None or d > after) and (until is None or d <= until)}

    async def clocks(self) -> dict[str, int]:
        return {stream: clock for stream, (clock, _) in self._clocks.items() if clock is not None}

    async def forget(self, customer: str) -> bool:
        stored = self._blobs.get(customer)
        found = stored is not None and stored[0] != b""
        self._blobs[customer] = (b"", (stored[1] if stored else 0) + 1, stored[2] if stored else 0)
        self._objects.pop(customer, None)
        for pending in self._deadlines.values():
            found = pending.pop(customer, None) is not None or found
        return found

    async def close(self) -> None:
        return None

    def _expire(self, now: int) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            expires_at, customer = heapq.heappop(expiry)
            stored = self._blobs.get(customer)
            if stored is not None and stored[2] == expires_at:
                del self._blobs[customer]
