"""One stream's batches through the core, against a state store.

The same code serves replay (in-memory store, one stream) and the streaming
worker (Redis, one stream per Kafka partition), which is what makes their
triggers identical. A batch is two steps so the caller can put its own work in
between: :meth:`StreamPipeline.run` loads the states the batch needs and runs
the core; :meth:`StreamPipeline.commit` saves what changed. The worker
publishes the triggers between the two, so state is never ahead of the triggers
it implies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from app.detector import Detector
from app.events import Event
from app.processor import Outcome, StreamProcessor
from app.state.store import StateStore, StateWrite
from app.window import CustomerState

_Step = Callable[[dict[str, CustomerState]], Outcome]


class Batch(msgspec.Struct, gc=False):
    outcome: Outcome
    states: dict[str, CustomerState]
    versions: dict[str, int]


class StreamPipeline:
    def __init__(
        self, detector: Detector, store: StateStore, stream: str, processor: StreamProcessor
    ) -> None:
        self.detector = detector
        self.store = store
        self.stream = stream
        self.processor = processor

    @classmethod
    async def open(cls, detector: Detector, store: StateStore, stream: str) -> StreamPipeline:
        """Resume ``stream`` from its checkpoint in ``store``."""
        checkpoint = await store.checkpoint(stream)
        processor = StreamProcessor(detector, clock=checkpoint.clock, deadlines=checkpoint.deadlines)
        return cls(detector, store, stream, processor)

    async def run(self, events: Sequence[Event]) -> Batch:
        customers = {event.customer_id for event in events} | self.processor.due(events)
        return await self._run(customers, lambda states: self.processor.process(events, states))

    async def flush(self) -> Batch:
        """Fire every pending deadline: the end of a replay's input."""
        return await self._run(set(self.processor.deadlines), self.processor.flush)

    async def commit(self, batch: Batch) -> None:
        outcome = batch.outcome
        writes = [
            StateWrite(
                batch.states[customer],
                batch.versions.get(customer, 0),
                self.detector.expires_at(batch.states[customer]),
            )
            for customer in sorted(outcome.touched)
        ]
        await self.store.save(self.stream, writes, clock=self.processor.clock, deadlines=outcome.deadlines)

    async def _run(self, customers: set[str], step: _Step) -> Batch:
        loaded = await self.store.load(customers)
        states = {customer: v.state for customer, v in loaded.items()}
        versions = {customer: v.version for customer, v in loaded.items()}
        return Batch(step(states), states, versions)
