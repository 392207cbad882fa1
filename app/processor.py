"""Event time for one stream: a replay, or one Kafka partition.

The :class:`StreamProcessor` owns the stream's :class:`~app.clock.EventClock`
(the latest ``occurred_at`` that several events confirm), derives the
watermark (clock minus the allowed lateness), skips late events, rejects
events absurdly far ahead, fires absence deadlines as the watermark passes
them, and hands everything else to the :class:`Detector`.

Processing a batch is exactly processing its events one by one: the result
does not depend on how the stream was cut into batches. The caller supplies the
states of every customer the batch touches, including those whose deadlines
fall due (:meth:`StreamProcessor.due`), and persists what comes back.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from operator import attrgetter
from typing import cast

import msgspec

from app.clock import EventClock
from app.detection import Detection
from app.detector import QUIET, Detector, Observation
from app.events import FACT_KINDS, Event, ForgetRequest, Kind
from app.learning.labels import LabelledExample
from app.policy import Judgement, Verdict
from app.window import CustomerState

END_OF_TIME = 2**62
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_occurred_at = attrgetter("occurred_at")


class Status(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"
    # A ``forget`` request: everything held about the customer goes.
    FORGOTTEN = "forgotten"
    # Rejected: further ahead of the stream clock than ``max_future_skew``.
    TOO_FAR_AHEAD = "timestamp_out_of_range"


class Outcome(msgspec.Struct, gc=False):
    """What a batch did; ``statuses`` is aligned with the batch's events."""

    statuses: list[Status] = msgspec.field(default_factory=list)
    # Triggers to publish, in order.
    detections: list[Detection] = msgspec.field(default_factory=list)
    # Detections for customers in a holdout group: recorded, not published.
    held_out: list[Detection] = msgspec.field(default_factory=list)
    # (moment, reason) -> candidates that did not become triggers: the detector's reasons
    # (below_threshold, cooldown) and the policy's (no_consent, frequency_cap, ...).
    suppressed: Counter[tuple[str, str]] = msgspec.field(default_factory=Counter)
    # Triggers held back by quiet hours in this batch (released later, counted then too).
    deferred: int = 0
    # Scored candidates whose outcome became known (learning).
    examples: list[LabelledExample] = msgspec.field(default_factory=list)
    # Customers whose state changed and must be saved.
    touched: set[str] = msgspec.field(default_factory=set)
    # Customers erased, with the requests that asked: delete their state, then confirm.
    forgotten: list[ForgetRequest] = msgspec.field(default_factory=list)
    # Customer -> the next event time they need waking at (a cart deadline, the end of
    # quiet hours), or None once there is none.
    deadlines: dict[str, int | None] = msgspec.field(default_factory=dict)


class StreamProcessor:
    def __init__(
        self,
        detector: Detector,
        *,
        clock: EventClock | None = None,
        deadlines: Mapping[str, int] | None = None,
    ) -> None:
        self.detector = detector
        self.policy = detector.policy
        self.event_clock = clock or EventClock()
        window = detector.catalogue.window
        self._lateness = window.allowed_lateness
        self._skew = window.max_future_skew
        self._deadlines: dict[str, int] = dict(deadlines or {})
        self._heap = [(deadline, customer) for customer, deadline in self._deadlines.items()]
        heapq.heapify(self._heap)

    @property
    def clock(self) -> int | None:
        return self.event_clock.time

    @property
    def watermark(self) -> int | None:
        return None if self.clock is None else self.clock - self._lateness

    @property
    def deadlines(self) -> Mapping[str, int]:
        return self._deadlines

    def due(self, events: Sequence[Event]) -> set[str]:
        """Customers whose deadlines the batch's watermark may pass: load their states too.

        A superset: the clock cannot pass the batch's latest event, and loading a
        customer whose deadline then does not fire costs a little and changes nothing.
        """
        if not self._deadlines or not events:
            return set()
        latest = max(map(_occurred_at, events))  # datetimes compare without conversion
        watermark = max(self.clock or 0, (latest - _EPOCH) // _MILLISECOND) - self._lateness
        heap, current, found = self._heap, self._deadlines, set()
        # Walk only the heap's subtrees whose root is due: O(due), not O(pending).
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            deadline, customer = heap[i]
            if deadline <= watermark:
                if current.get(customer) == deadline:
                    found.add(customer)
                stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
        return found

    def process(self, events: Sequence[Event], states: dict[str, CustomerState]) -> Outcome:
        """Process ``events`` in order; ``states`` gains new customers and is updated in place."""
        outcome = Outcome()
        # Locals: this loop runs for every event.
        statuses = outcome.statuses
        observe = self.detector.observe
        clock = self.event_clock
        lateness, skew, heap = self._lateness, self._skew, self._heap
        deadlines, touched = self._deadlines, outcome.touched
        for event in events:
            if event.kind == Kind.FORGET:
                # Whenever it happened: a request about data, not behaviour in event time.
                self._forget(cast(ForgetRequest, event), states, outcome)
                statuses.append(Status.FORGOTTEN)
                continue
            ts = event.ts
            now = clock.time
            if now is not None and ts < now - lateness:
                if event.kind in FACT_KINDS:
                    # What a customer allows is a fact, not behaviour: recorded however late
                    # (the latest in event time wins), without moving the clock.
                    customer = event.customer_id
                    observe(states.setdefault(customer, CustomerState(customer_id=customer)), event, ts)
                    outcome.touched.add(customer)
                    statuses.append(Status.APPLIED)
                    continue
                statuses.append(Status.LATE)
                continue
            moved_to = clock.observe(ts)
            if moved_to is not None:
                now = moved_to
                if heap and heap[0][0] <= now - lateness:
                    self._fire_due(now - lateness, states, outcome)
            if now is not None and ts > now + skew:
                # Counted by the clock, so that a real jump is followed once confirmed.
                statuses.append(Status.TOO_FAR_AHEAD)
                continue
            customer = event.customer_id
            state = states.get(customer)
            if state is None:
                state = states[customer] = CustomerState(customer_id=customer)
            own = deadlines.get(customer)
            if own is not None and own <= ts - lateness:
                # The customer's own event proves their deadlines passed, whatever the stream
                # clock (which trails on a sparse partition) says: fire them first, so the
                # outcome does not depend on how customers are spread over partitions.
                self._fire(customer, ts - lateness, states, outcome)
            observation = observe(state, event, ts)
            if observation is QUIET:
                statuses.append(Status.APPLIED)
                touched.add(customer)
                if state.cart is not None or state.pending or customer in deadlines:
                    self._collect(state, observation, outcome)
            elif observation.duplicate:
                statuses.append(Status.DUPLICATE)
            else:
                statuses.append(Status.APPLIED)
                self._collect(state, observation, outcome)
        return outcome

    def flush(self, states: dict[str, CustomerState]) -> Outcome:
        """End of input: fire every deadline still pending (replay's last step)."""
        outcome = Outcome()
        self._fire_due(END_OF_TIME, states, outcome)
        return outcome

    def _forget(self, request: ForgetRequest, states: dict[str, CustomerState], outcome: Outcome) -> None:
        customer = request.customer_id
        # A blank state, so events of the customer later in the batch start afresh.
        states[customer] = CustomerState(customer_id=customer)
        outcome.touched.discard(customer)
        outcome.forgotten.append(request)
        if self._deadlines.pop(customer, None) is not None or customer in outcome.deadlines:
            outcome.deadlines[customer] = None

    def _fire_due(self, watermark: int, states: dict[str, CustomerState], outcome: Outcome) -> None:
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            deadline, customer = heapq.heappop(heap)
            if self._deadlines.get(customer) == deadline:  # else moved or disarmed since pushed
                # Its heap entry is gone: whatever is still pending gets a new one.
                del self._deadlines[customer]
                outcome.deadlines[customer] = None
                self._fire(customer, deadline, states, outcome)

    def _fire(self, customer: str, now: int, states: dict[str, CustomerState], outcome: Outcome) -> None:
        """Everything of the customer's that event time ``now`` has passed."""
        state = states.get(customer)
        if state is None:
            # Erased (the right to be forgotten) or expired since: nothing to fire.
            self._deadlines.pop(customer, None)
            outcome.deadlines[customer] = None
            return
        observation = self.detector.expire(state, now)
        for detection, judgement in self.policy.release(state, now):
            self._route(detection, judgement, outcome)
        self._collect(state, observation, outcome)

    def _route(self, detection: Detection, judgement: Judgement, outcome: Outcome) -> None:
        verdict = judgement.verdict
        if verdict is Verdict.PUBLISH:
            outcome.detections.append(detection)
        elif verdict is Verdict.HOLD_OUT:
            outcome.held_out.append(detection)
        elif verdict is Verdict.DEFER:
            outcome.deferred += 1
        else:
            outcome.suppressed[(detection.moment, judgement.reason or verdict.value)] += 1

    def _collect(self, state: CustomerState, observation: Observation, outcome: Outcome) -> None:
        customer = state.customer_id
        outcome.touched.add(customer)
        for detection in observation.detections:
            self._route(detection, self.policy.judge(detection, state), outcome)
        if observation.suppressed:
            outcome.suppressed.update(observation.suppressed)
        if observation.examples:
            outcome.examples.extend(observation.examples)
        wake = self.detector.next_deadline(state)
        if state.deferred:
            release = self.policy.next_release(state)
            wake = release if wake is None or (release is not None and release < wake) else wake
        if wake == self._deadlines.get(customer):
            return
        if wake is None:
            self._deadlines.pop(customer, None)
        else:
            self._deadlines[customer] = wake
            heapq.heappush(self._heap, (wake, customer))
            if len(self._heap) > 2 * len(self._deadlines) + 1024:
                # Moved deadlines leave stale heap entries behind; shed them, in place:
                # callers iterate the same list.
                self._heap[:] = [(d, c) for c, d in self._deadlines.items()]
                heapq.heapify(self._heap)
        outcome.deadlines[customer] = wake
