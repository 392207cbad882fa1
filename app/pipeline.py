"""Batches of events through the core, against a state store, for one or many streams.

The same code serves replay (in-memory store, one stream) and the streaming
worker (Redis, one stream per Kafka partition), which is what makes their
triggers identical. A batch is two steps so the caller can put its own work in
between: :meth:`Pipeline.run` loads every state the batch needs — across all
its streams, in one store round trip — and runs the core; :meth:`Pipeline.commit`
saves what changed, again in one round trip. The worker publishes the triggers
between the two, so state is never ahead of the triggers it implies.

No event can stop a batch. When applying one raises, the batch is redone from
the states as stored, without that event (its status says ``internal_error``,
its outcome's ``failures`` why); when firing a customer's deadline raises, it
is redone with that deadline dropped (``broken``). Both are as deterministic
as the fault: replay and the worker skip the same events.

With a ``lookahead``, each stream's processor holds only the deadlines due
within that much event time past what its batches need; the store keeps the
rest (hours of quiet-hours releases, on a busy stream millions) until the
stream's time comes near them. Without one, it holds them all: replay's store
is memory anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from operator import attrgetter

import msgspec

from app.clock import EventClock
from app.detection import Detection
from app.detector import Detector
from app.events import Event, ForgetRequest
from app.learning.labels import LabelledExample
from app.policy import Policy
from app.processor import (
    END_OF_TIME,
    Broken,
    DeadlineFailed,
    EventFailed,
    Outcome,
    Parked,
    Render,
    Status,
    StreamProcessor,
    describe_error,
)
from app.state.codec import decode_state
from app.state.store import Erasure, StateStore, StateWrite, StreamSave, Versioned
from app.window import CustomerState


class Batch(msgspec.Struct, gc=False):
    # stream -> what the core did with that stream's events
    outcomes: dict[str, Outcome]
    states: dict[str, CustomerState]
    versions: dict[str, int]
    # What raised while the batch was processed (each handled as its outcome says): for logs.
    errors: list[Exception] = msgspec.field(default_factory=list)
    # Customers whose stored state could not be read (another schema): started afresh.
    unreadable: list[str] = msgspec.field(default_factory=list)

    @property
    def detections(self) -> list[Detection]:
        """Triggers to publish, stream by stream, each stream's in order."""
        return [d for outcome in self.outcomes.values() for d in outcome.detections]

    @property
    def held_out(self) -> list[Detection]:
        return [d for outcome in self.outcomes.values() for d in outcome.held_out]

    @property
    def examples(self) -> list[LabelledExample]:
        return [e for outcome in self.outcomes.values() for e in outcome.examples]

    @property
    def forgotten(self) -> list[ForgetRequest]:
        return [r for outcome in self.outcomes.values() for r in outcome.forgotten]


# A batch's work on the states given; with a list, a probe of what fails (see Pipeline._guarded).
Step = Callable[[dict[str, CustomerState], list[Exception] | None], dict[str, Outcome]]
# What to do once a stream is claimed, before its checkpoint is read: (stream, epoch).
OnClaim = Callable[[str, int], Awaitable[None]]


class Pipeline:
    def __init__(
        self,
        detector: Detector,
        policy: Policy,
        store: StateStore,
        *,
        render: Render | None = None,
        on_claim: OnClaim | None = None,
        undo: bool = False,
        lookahead: int | None = None,
    ) -> None:
        """``render`` builds each trigger's record as the core routes it (see :class:`StreamProcessor`).

        Parameters
        ----------
        detector
            The detection core every stream runs.
        policy
            The engagement policy every detection is judged by.
        store
            Where customers' states and streams' checkpoints are kept.
        render
            Turns a detection into its (key, value) record; a trigger that cannot be
            built then fails only the event that made it.
        on_claim
            Called with each stream claimed and its epoch, before its checkpoint is read:
            where the worker brings the stored state in line with the input committed.
        undo
            Whether each save keeps its undo (see :class:`~app.state.store.StreamSave`): when
            the input's offsets are committed after the save, in a transaction.
        lookahead
            Event time (ms): each stream holds in memory only the deadlines due up to this
            far past what its batches need (None: all of them).
        """
        self.detector = detector
        self.policy = policy
        self.store = store
        self.render = render
        self.on_claim = on_claim
        self.undo = undo
        self.lookahead = lookahead
        self._processors: dict[str, StreamProcessor] = {}
        # Deadlines that could not be fired, and why: dropped instead when due again.
        self._broken: Broken = {}
        # Per stream, the events parked as of the last commit (they are in no checkpoint: a
        # worker keeps their records uncommitted, so that whoever comes next reads them again).
        self._parked: dict[str, list[Parked]] = {}
        # Per stream this process writes, the epoch it claimed the stream at (see StateStore.claim).
        self._epochs: dict[str, int] = {}
        # Per stream, where its input stands as of the last commit (see StreamSave.positions).
        self._positions: dict[str, dict[str, int]] = {}
        # Per stream, the event time up to which its deadlines are held (with a lookahead):
        # a stream reopened to redo a batch holds as many as the batch needed.
        self._horizons: dict[str, int] = {}

    async def open(self, streams: Iterable[str]) -> None:
        """Resume streams not open yet from their checkpoints in the store.

        A stream this process has not claimed yet (since it started, or the stream was
        closed) is claimed first: from then on an earlier writer's saves are refused.
        """
        for stream in streams:
            if stream not in self._processors:
                if stream not in self._epochs:
                    epoch = await self.store.claim(stream)
                    if self.on_claim is not None:
                        await self.on_claim(stream, epoch)
                    self._epochs[stream] = epoch
                checkpoint = await self.store.checkpoint(stream)
                self._positions[stream] = dict(checkpoint.positions)
                horizon = self._horizon(stream, checkpoint.clock)
                self._processors[stream] = StreamProcessor(
                    self.detector,
                    self.policy,
                    clock=EventClock(checkpoint.clock, checkpoint.recent),
                    deadlines=await self.store.deadlines(stream, until=horizon) if horizon >= 0 else {},
                    horizon=horizon,
                    render=self.render,
                    broken=self._broken,
                    parked=self._parked.get(stream, ()),
                )

    def _horizon(self, stream: str, clock: int | None) -> int:
        """How far a stream opened at ``clock`` holds deadlines: -1, none, until its time is known."""
        if self.lookahead is None:
            return END_OF_TIME
        return max(self._horizons.get(stream, -1), -1 if clock is None else clock + self.lookahead)

    async def _hold(self, stream: str, need: int | None) -> None:
        """Make ``stream`` hold its deadlines up to ``need`` (and the lookahead past it)."""
        processor = self._processors[stream]
        if need is None or need <= processor.horizon or self.lookahead is None:
            return  # without a lookahead, a stream holds them all from its opening
        to = min(need + self.lookahead, END_OF_TIME)
        processor.hold(await self.store.deadlines(stream, processor.horizon, to), to)
        self._horizons[stream] = to

    def reset(self, streams: Iterable[str]) -> None:
        """Forget streams' in-memory progress since the last commit: a batch to redo.

        Their claims stay: a writer whose saves are refused because another has claimed
        a stream since (a zombie) must not take it back by redoing its batch.
        """
        for stream in streams:
            self._processors.pop(stream, None)

    def reclaim(self, streams: Iterable[str]) -> None:
        """As :meth:`reset`, and claim the streams again when next opened: a batch to redo after a
        failure that may have left the store and the committed input apart (see ``on_claim``)."""
        streams = list(streams)
        self.reset(streams)
        for stream in streams:
            self._epochs.pop(stream, None)

    def close(self, streams: Iterable[str]) -> None:
        """Forget streams altogether: revoked partitions (their next owner reads what is uncommitted)."""
        for stream in streams:
            self._processors.pop(stream, None)
            self._parked.pop(stream, None)
            self._epochs.pop(stream, None)
            self._positions.pop(stream, None)
            self._horizons.pop(stream, None)

    def processor(self, stream: str) -> StreamProcessor:
        return self._processors[stream]

    def positions(self, stream: str) -> Mapping[str, int]:
        """Where an open stream's input stands: source -> the first position its states do not reflect.

        A record before it was applied and saved, its outputs sent: one read again (its
        offsets were not committed before a crash, or a rebalance) is to be skipped.
        """
        return self._positions.get(stream, {})

    def is_open(self, stream: str) -> bool:
        return stream in self._processors

    @property
    def clocks(self) -> dict[str, int]:
        """The event-time clock of every open stream that has one."""
        return {s: p.clock for s, p in self._processors.items() if p.clock is not None}

    async def run(
        self,
        events: Mapping[str, Sequence[Event]],
        *,
        advance: Mapping[str, int] | None = None,
        holds: Mapping[str, int] | None = None,
    ) -> Batch:
        """Process each stream's events, in order; the states they need are loaded at once.

        Parameters
        ----------
        events
            Stream -> its events, in the order they are to be applied.
        advance
            Quiet streams (with no events here) -> the event time the rest of the
            deployment has reached: their clocks follow it (:meth:`StreamProcessor.advance`).
        holds
            Stream -> the earliest event time a lagging input of it may still deliver.

        Returns
        -------
        Batch
            Per stream its outcome, statuses aligned with its events; the states to save.
        """
        streams = [*events, *(s for s in advance or () if s not in events)]
        await self.open(streams)
        for stream in streams:
            quiet = advance.get(stream) if advance and stream not in events else None
            await self._hold(stream, self._processors[stream].needs(events.get(stream, ()), quiet))
        customers: dict[str, set[str]] = {}
        for stream, stream_events in events.items():
            customers[stream] = set(map(_customer_id, stream_events)) | self._processors[stream].due(
                stream_events
            )
        for stream, to in (advance or {}).items():
            if stream not in events:
                customers[stream] = self._processors[stream].due((), to)
        # Per stream, the events left out after they failed: by index, and parked ones.
        skipped: dict[str, dict[int, str]] = {}
        failed_parked: dict[str, list[tuple[Event, Status, str]]] = {}

        def leave_out(stream: str, failed: EventFailed, kept: Sequence[int] | None = None) -> None:
            why = describe_error(failed.error)
            if failed.parked is None:
                skipped.setdefault(stream, {})[kept[failed.index] if kept else failed.index] = why
            else:
                self._parked[stream] = [p for p in self._parked.get(stream, []) if p[0] is not failed.parked]
                failed_parked.setdefault(stream, []).append((failed.parked, Status.INTERNAL_ERROR, why))

        def step(states: dict[str, CustomerState], errors: list[Exception] | None) -> dict[str, Outcome]:
            """The batch; or, with ``errors`` (a probe), what fails in it, into ``skipped`` and ``errors``."""
            outcomes = {}
            for stream, stream_events in events.items():
                processor, skip = self._processors[stream], skipped.get(stream, {})
                kept: Sequence[int] = (
                    [i for i in range(len(stream_events)) if i not in skip]
                    if skip
                    else range(len(stream_events))
                )
                hold = (holds or {}).get(stream)
                if errors is not None:
                    found = processor.probe([stream_events[i] for i in kept], states, hold=hold)
                    for index, why in found.events.items():
                        skipped.setdefault(stream, {})[kept[index]] = why
                    for failed in found.parked:
                        leave_out(stream, failed)
                    errors += [
                        *found.errors,
                        *(f.error for f in found.parked),
                        *(f.error for f in found.broken),
                    ]
                    continue
                try:
                    outcome = processor.process(
                        [stream_events[i] for i in kept] if skip else stream_events, states, hold=hold
                    )
                except EventFailed as failed:
                    leave_out(stream, failed, kept)
                    raise
                if skip:
                    outcome.statuses = _with_failures(outcome.statuses, skip)
                    outcome.failures = dict(skip)
                outcomes[stream] = outcome
            if errors is not None:
                return {}
            for stream, to in (advance or {}).items():
                if stream not in events:
                    try:
                        outcomes[stream] = self._processors[stream].advance(to, states)
                    except EventFailed as failed:
                        leave_out(stream, failed)
                        raise
            for stream, outcome in outcomes.items():
                outcome.unparked[:0] = failed_parked.get(stream, [])
            return outcomes

        return await self._guarded(customers, step)

    async def flush(self, stream: str) -> Batch:
        """Fire every deadline still pending on ``stream``: the end of a replay's input."""

        def step(states: dict[str, CustomerState], errors: list[Exception] | None) -> dict[str, Outcome]:
            return {} if errors is not None else {stream: self._processors[stream].flush(states)}

        await self._hold(stream, END_OF_TIME)
        return await self._guarded({stream: set(self._processors[stream].deadlines)}, step)

    async def _guarded(self, customers: dict[str, set[str]], step: Step) -> Batch:
        """``step`` over the states of ``customers`` (by stream), redone from their stored states on failure.

        After a first failure, one probe of the batch finds the others (see
        :meth:`StreamProcessor.probe`); then the batch is done again without all of them.
        Should more fail yet, each is left out in turn, so this ends. A store may have
        handed out the very objects a failed attempt changed (replay's): every state
        restored is then saved again, as it was restored.
        """
        streams = list(customers)
        loaded = await self.store.load(customers)
        errors: list[Exception] = []
        probed = False
        while True:
            states = {customer: v.state for customer, v in loaded.items()}
            try:
                outcomes = step(states, None)
            except (EventFailed, DeadlineFailed) as failure:
                errors.append(failure.error)
                if isinstance(failure, DeadlineFailed):
                    key = (failure.customer, failure.deadline)
                    if key in self._broken:
                        raise RuntimeError(f"a dropped deadline fired again: {failure}") from failure
                    self._broken[key] = describe_error(failure.error)
                loaded = await self._restart(streams, loaded)
                if not probed:
                    probed = True
                    step({customer: v.state for customer, v in loaded.items()}, errors)
                    loaded = await self._restart(streams, loaded)
                continue
            if errors:
                for stream, outcome in outcomes.items():
                    outcome.touched |= customers[stream] & loaded.keys()
            unreadable = [customer for customer, v in loaded.items() if v.unreadable]
            return Batch(outcomes, states, {c: v.version for c, v in loaded.items()}, errors, unreadable)

    async def _restart(self, streams: list[str], loaded: dict[str, Versioned]) -> dict[str, Versioned]:
        """The states as stored, and the streams as committed: for a batch to start over."""
        self.reset(streams)
        await self.open(streams)
        return _restored(loaded)

    async def commit(self, batch: Batch, positions: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Save every changed state and each stream's checkpoint, all at once.

        Parameters
        ----------
        batch
            A batch :meth:`run` returned, its output published.
        positions
            Per stream, where its input stands once this batch is applied (see
            :meth:`positions`): records below are skipped if read again.

        Raises :class:`~app.state.store.ConflictError` if another process has claimed a
        stream, or changed a state, since this one loaded it; nothing of that stream is
        written.
        """
        saves = []
        written: set[str] = set()
        versions = batch.versions
        # Never back: a batch of records read again (for want of an offset commit) skips
        # them, and where it read to may still be short of what the states reflect.
        positions = {
            stream: _furthest(self._positions.get(stream, {}), moved)
            for stream, moved in (positions or {}).items()
        }
        for stream, outcome in batch.outcomes.items():
            # Erased first (a tombstone, one version up); a customer who came back later in
            # the batch is then written over it.
            erased = sorted({request.customer_id for request in outcome.forgotten})
            erasures = [Erasure(customer, versions.get(customer, 0)) for customer in erased]
            # A customer normally lives on one stream; should two streams of one batch
            # touch the same state object, it is written once, with everything applied.
            customers = sorted(outcome.touched - written)
            written.update(customers)
            writes = [
                StateWrite(
                    batch.states[customer],
                    versions.get(customer, 0) + (customer in erased),
                    self.expires_at(batch.states[customer]),
                )
                for customer in customers
            ]
            clock = self._processors[stream].event_clock
            saves.append(
                StreamSave(
                    stream,
                    writes,
                    clock.time,
                    outcome.deadlines,
                    clock.recent,
                    erasures,
                    self._epochs.get(stream, 0),
                    positions.get(stream, {}),
                    self.undo,
                )
            )
        await self.store.save(saves)
        for stream, moved in positions.items():
            self._positions.setdefault(stream, {}).update(moved)
        for stream in batch.outcomes:
            self._parked[stream] = self._processors[stream].parked

    def expires_at(self, state: CustomerState) -> int:
        """When the stored state may go: its behaviour's use, or its consent facts' retention."""
        return max(self.detector.expires_at(state), self.policy.retention_end(state) or 0)


def _furthest(known: Mapping[str, int], moved: Mapping[str, int]) -> dict[str, int]:
    """``moved``, each position at least where ``known`` has it."""
    return {source: max(position, known.get(source, position)) for source, position in moved.items()}


def _restored(loaded: dict[str, Versioned]) -> dict[str, Versioned]:
    """The states as they were stored, whatever a failed attempt did to them."""
    return {c: Versioned(decode_state(v.stored), v.version, v.stored) for c, v in loaded.items()}


def _with_failures(statuses: list[Status], failed: Mapping[int, str]) -> list[Status]:
    """The statuses of the events kept, with ``internal_error`` put back where the others were."""
    kept = iter(statuses)
    return [Status.INTERNAL_ERROR if i in failed else next(kept) for i in range(len(statuses) + len(failed))]


_customer_id = attrgetter("customer_id")
