"""Batches of events through the core, against a state store, for one or many streams.

The same code serves replay (in-memory store, one stream) and the streaming
worker (Redis, one stream per Kafka partition), which is what makes their
triggers identical. A batch is two steps so the caller can put its own work in
between: :meth:`Pipeline.run` loads every state the batch needs — across all
its streams, in one store round trip — and runs the core; :meth:`Pipeline.commit`
saves what changed, again in one round trip. The worker publishes the triggers
between the two, so state is never ahead of the triggers it implies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter

import msgspec

from app.clock import EventClock
from app.detection import Detection
from app.detector import Detector
from app.events import Event, ForgetRequest
from app.learning.labels import LabelledExample
from app.processor import Outcome, StreamProcessor
from app.state.store import StateStore, StateWrite, StreamSave
from app.window import CustomerState


class Batch(msgspec.Struct, gc=False):
    # stream -> what the core did with that stream's events
    outcomes: dict[str, Outcome]
    states: dict[str, CustomerState]
    versions: dict[str, int]

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


class Pipeline:
    def __init__(self, detector: Detector, store: StateStore) -> None:
        self.detector = detector
        self.store = store
        self._processors: dict[str, StreamProcessor] = {}

    async def open(self, streams: Iterable[str]) -> None:
        """Resume streams not open yet from their checkpoints in the store."""
        for stream in streams:
            if stream not in self._processors:
                checkpoint = await self.store.checkpoint(stream)
                self._processors[stream] = StreamProcessor(
                    self.detector,
                    clock=EventClock(checkpoint.clock, checkpoint.recent),
                    deadlines=checkpoint.deadlines,
                )

    def close(self, streams: Iterable[str]) -> None:
        """Forget streams' in-memory progress: revoked partitions, or a batch to redo."""
        for stream in streams:
            self._processors.pop(stream, None)

    def processor(self, stream: str) -> StreamProcessor:
        return self._processors[stream]

    async def run(self, events: Mapping[str, Sequence[Event]]) -> Batch:
        """Process each stream's events, in order; the states they need are loaded at once."""
        await self.open(events)
        customers: set[str] = set()
        for stream, stream_events in events.items():
            customers.update(map(_customer_id, stream_events))
            customers |= self._processors[stream].due(stream_events)
        states, versions = await self._load(customers)
        outcomes = {
            stream: self._processors[stream].process(stream_events, states)
            for stream, stream_events in events.items()
        }
        return Batch(outcomes, states, versions)

    async def flush(self, stream: str) -> Batch:
        """Fire every deadline still pending on ``stream``: the end of a replay's input."""
        processor = self._processors[stream]
        states, versions = await self._load(set(processor.deadlines))
        return Batch({stream: processor.flush(states)}, states, versions)

    async def commit(self, batch: Batch) -> None:
        """Save every changed state and each stream's checkpoint, all at once."""
        saves = []
        written: set[str] = set()
        for stream, outcome in batch.outcomes.items():
            # Erased first; a customer who came back later in the batch is then new.
            erased = {request.customer_id for request in outcome.forgotten}
            # A customer normally lives on one stream; should two streams of one batch
            # touch the same state object, it is written once, with everything applied.
            customers = sorted(outcome.touched - written)
            written.update(customers)
            writes = [
                StateWrite(
                    batch.states[customer],
                    0 if customer in erased else batch.versions.get(customer, 0),
                    self.expires_at(batch.states[customer]),
                )
                for customer in customers
            ]
            clock = self._processors[stream].event_clock
            saves.append(
                StreamSave(stream, writes, clock.time, outcome.deadlines, clock.recent, sorted(erased))
            )
        await self.store.save(saves)

    def expires_at(self, state: CustomerState) -> int:
        """When the stored state may go: its behaviour's use, or its consent facts' retention."""
        return max(self.detector.expires_at(state), self.detector.policy.retention_end(state) or 0)

    async def _load(self, customers: set[str]) -> tuple[dict[str, CustomerState], dict[str, int]]:
        loaded = await self.store.load(customers)
        return (
            {customer: v.state for customer, v in loaded.items()},
            {customer: v.version for customer, v in loaded.items()},
        )


_customer_id = attrgetter("customer_id")
