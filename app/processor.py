"""Event time for one stream: a replay, or one Kafka partition.

Two kinds of "late", each judged where it matters:

- **A customer's window is affected only by that customer's events.** An event
  is applied unless it is more than ``allowed_lateness`` older than the latest
  event *of its own customer* (whose window, kept that much longer, can still
  evaluate it exactly as of its own time). One customer's clock, or a busier
  topic, can never make another customer's events late. A customer with no live
  state has nothing to compare with: their event is judged against the stream's
  watermark instead.
- **What only the passing of time decides** — an absence deadline (an abandoned
  cart), an outcome that never came, the end of quiet hours — follows the
  stream's watermark: its :class:`~app.clock.EventClock` (the time several
  distinct customers agree on) minus the allowed lateness, held back by whatever
  the caller knows may still come (``hold``: a lagging topic's position), and
  moved forward by what the caller knows of the rest of the deployment
  (:meth:`StreamProcessor.advance`, for a stream that has fallen quiet).

An event further than ``max_future_skew`` ahead of the stream's time is
*parked*: it still votes for the clock, and is applied as soon as the clock has
moved close enough to it — a real jump, confirmed by other customers (the end
of a quiet week), or the deployment's time reaching a quiet stream
(:meth:`StreamProcessor.advance`). One that nothing confirms (a device whose
clock is wrong) is rejected once the stream's time has moved on by the allowed
lateness without coming to it, or when more than ``PARK_LIMIT`` wait, or at the
end of the input. Parked events come back in :attr:`Outcome.unparked`, with what became of
them. Late events are returned as :attr:`Status.LATE` for the caller to
dead-letter. Processing a batch is
exactly processing its events one by one: the result does not depend on how
the stream was cut into batches. The caller supplies the states of every
customer the batch touches, including those whose deadlines fall due
(:meth:`StreamProcessor.due`), and persists what comes back.

Pending deadlines can be many (quiet hours defer triggers by hours), and the
caller keeps them all in its store: a processor may hold only those up to its
*horizon*. It says how far a batch needs them held (:meth:`StreamProcessor.needs`),
the caller hands it the ones in between (:meth:`StreamProcessor.hold`), and a
deadline set beyond the horizon is only passed on to the store. A customer's
deadline is a function of their state, so their own event, which may be days
ahead of the stream, finds it there. What fires, and when, does not depend on
the horizon.

An exception while applying one event raises :class:`EventFailed` (its index
in the batch); one while firing a customer's deadline raises
:class:`DeadlineFailed`. The caller then redoes the batch from the states as
they were without that event, or skipping that customer's deadline
(``broken``): see :class:`app.pipeline.Pipeline`.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
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
from app.policy import Judgement, Policy, Verdict
from app.state.codec import decode_state, encode_state
from app.window import CustomerState, contains_event

END_OF_TIME = 2**62
# Events far ahead of the stream's time waiting for it (see the module docstring): at
# most this many per stream.
PARK_LIMIT = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_occurred_at = attrgetter("occurred_at")
# A trigger as published: (key, value).
Record = tuple[bytes, bytes]
Render = Callable[[Detection], Record]


class Status(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    # More than the allowed lateness behind its customer's latest event (or, for a
    # customer with no live state, behind the stream's watermark): dead-lettered.
    LATE = "late"
    # A ``forget`` request: everything held about the customer goes.
    FORGOTTEN = "forgotten"
    # Further ahead of the stream's time than ``max_future_skew``: waits for the stream
    # (see Outcome.unparked for what becomes of it), or is rejected.
    PARKED = "parked"
    TOO_FAR_AHEAD = "timestamp_out_of_range"
    # Applying it raised: the batch went on without it (see EventFailed).
    INTERNAL_ERROR = "internal_error"


class EventFailed(Exception):
    """Applying the batch's event at ``index`` (or the ``parked`` event it let through) raised ``error``."""

    def __init__(self, index: int, error: Exception, parked: Event | None = None) -> None:
        super().__init__(f"event {index} of the batch: {describe_error(error)}")
        self.index = index
        self.error = error
        self.parked = parked


class DeadlineFailed(Exception):
    """Firing ``customer``'s ``deadline`` raised ``error``."""

    def __init__(self, customer: str, deadline: int, error: Exception) -> None:
        super().__init__(f"a deadline: {describe_error(error)}")
        self.customer = customer
        self.deadline = deadline
        self.error = error


def describe_error(error: BaseException) -> str:
    """What a dead letter or a log says of an exception: its type and message."""
    return f"{type(error).__name__}: {error}"


class Outcome(msgspec.Struct, gc=False):
    """What a batch did; ``statuses`` is aligned with the batch's events."""

    statuses: list[Status] = msgspec.field(default_factory=list)
    # Triggers to publish, in order, and (with a renderer) their records.
    detections: list[Detection] = msgspec.field(default_factory=list)
    triggers: list[Record] = msgspec.field(default_factory=list)
    # Detections for customers in a holdout group: recorded, not published.
    held_out: list[Detection] = msgspec.field(default_factory=list)
    held_out_records: list[Record] = msgspec.field(default_factory=list)
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
    # Index of an event -> why applying it failed (statuses say INTERNAL_ERROR there).
    failures: dict[int, str] = msgspec.field(default_factory=dict)
    # Deadlines dropped instead of fired, by why: "no_state" (the customer's state was
    # erased, or expired in the store, meanwhile), "internal_error" (firing it raised).
    dropped: Counter[str] = msgspec.field(default_factory=Counter)
    # Events parked by earlier batches (or this one) that were decided in this one: applied
    # (or duplicate, late), rejected as too far ahead after all, or failed (with why); in
    # that order.
    unparked: list[tuple[Event, Status, str]] = msgspec.field(default_factory=list)


# (customer, deadline) -> why firing it raised: such a deadline is dropped instead.
Broken = dict[tuple[str, int], str]
# An event too far ahead of its stream's time, with that time when it was parked (None: unknown).
Parked = tuple[Event, int | None]


class Probe(msgspec.Struct, gc=False):
    """What fails in a batch (see StreamProcessor.probe)."""

    # Index of an event -> why processing it failed.
    events: dict[int, str] = msgspec.field(default_factory=dict)
    errors: list[Exception] = msgspec.field(default_factory=list)
    broken: list[DeadlineFailed] = msgspec.field(default_factory=list)
    parked: list[EventFailed] = msgspec.field(default_factory=list)


class StreamProcessor:
    def __init__(
        self,
        detector: Detector,
        policy: Policy,
        *,
        clock: EventClock | None = None,
        deadlines: Mapping[str, int] | None = None,
        horizon: int = END_OF_TIME,
        render: Render | None = None,
        broken: Broken | None = None,
        parked: Sequence[Parked] = (),
    ) -> None:
        """``policy`` judges each detection; ``deadlines`` are the stream's pending ones up to
        ``horizon`` (all of them by default); ``render`` turns each trigger into its record as it
        is routed, so that a trigger
        that cannot be built fails the event that made it; ``broken`` names the deadlines
        whose firing failed before (why): they are dropped instead of fired; ``parked`` the
        events that wait for the stream's time to reach them (see :attr:`parked`)."""
        self.detector = detector
        self.policy = policy
        self.event_clock = clock or EventClock()
        self._render = render
        self._broken: Broken = broken if broken is not None else {}
        window = detector.catalogue.window
        self._lateness = window.allowed_lateness
        self._skew = window.max_future_skew
        self._deadlines: dict[str, int] = dict(deadlines or {})
        self._horizon = horizon
        self._heap = [(deadline, customer) for customer, deadline in self._deadlines.items()]
        heapq.heapify(self._heap)
        # The event time a lagging input may still deliver (see process); None: nothing held back.
        self._hold: int | None = None
        # Until enough customers have been seen to tell the stream's time, what is too far
        # ahead is judged against the latest event accepted so far.
        self._provisional: int | None = None
        self._parked = list(parked)

    @property
    def clock(self) -> int | None:
        return self.event_clock.time

    @property
    def watermark(self) -> int | None:
        """Event time up to which the stream's deadlines fire: the clock less the lateness, held back."""
        now = self.event_clock.time
        if now is None:
            return None
        hold = self._hold
        return (now if hold is None or hold > now else hold) - self._lateness

    @property
    def deadlines(self) -> Mapping[str, int]:
        return self._deadlines

    @property
    def horizon(self) -> int:
        """Event time up to which every pending deadline of the stream is held here."""
        return self._horizon

    def needs(self, events: Sequence[Event], until: int | None = None) -> int | None:
        """How far deadlines must be held to process ``events``, then :meth:`advance` to ``until``.

        Parameters
        ----------
        events
            The stream's next batch.
        until
            The event time the batch then advances the stream to, if any.

        Returns
        -------
        int or None
            The event time to :meth:`hold` deadlines up to first; None if they are held already.
        """
        # Deadlines fire as the stream's clock passes them, and it never passes this.
        need = max(self.clock or 0, until or 0)
        if events and (max(map(_occurred_at, events)) - _EPOCH) // _MILLISECOND > self._horizon:
            # Only what several customers agree on moves the clock: a device far ahead
            # must not pull every deadline in.
            need = max(need, self.event_clock.reach((e.ts, e.customer_id) for e in events) or 0)
        return need if need > self._horizon else None

    def hold(self, deadlines: Mapping[str, int], horizon: int) -> None:
        """Hold the stream's pending ``deadlines`` after the current horizon, up to ``horizon``."""
        for customer, deadline in deadlines.items():
            self._deadlines[customer] = deadline
            heapq.heappush(self._heap, (deadline, customer))
        self._horizon = max(self._horizon, horizon)

    @property
    def parked(self) -> list[Parked]:
        """The events waiting for the stream's time to reach them, oldest first, with its time then."""
        return list(self._parked)

    def due(self, events: Sequence[Event], until: int | None = None) -> set[str]:
        """Customers whose deadlines the batch's watermark may pass: load their states too.

        A superset: the clock cannot pass the batch's latest event (or ``until``, the time
        :meth:`advance` is given), and loading a customer whose deadline then does not
        fire costs a little and changes nothing.
        """
        parked = {event.customer_id for event, _ in self._parked}  # they may come through
        if not self._deadlines or (not events and until is None):
            return parked
        latest = max(map(_occurred_at, events)) if events else None  # datetimes compare as they are
        reach = max(
            self.clock or 0,
            until or 0,
            (latest - _EPOCH) // _MILLISECOND if latest is not None else 0,
        )
        watermark = reach - self._lateness
        heap, current, found = self._heap, self._deadlines, parked
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

    def process(
        self,
        events: Sequence[Event],
        states: dict[str, CustomerState],
        *,
        hold: int | None = None,
    ) -> Outcome:
        """Process ``events`` in order; ``states`` gains new customers and is updated in place.

        Parameters
        ----------
        events
            The stream's next events.
        states
            The states of the customers of ``events``, of :meth:`due` ones and of
            parked events' customers, by customer id.
        hold
            The earliest event time an input that is behind may still deliver: deadlines
            do not fire past it, nor are new customers' events judged late by it.

        Returns
        -------
        Outcome
            What the events did; ``statuses`` is aligned with ``events``.

        Raises :class:`EventFailed` or :class:`DeadlineFailed`; see the module docstring.
        """
        self._hold = hold
        outcome = Outcome()
        statuses = outcome.statuses
        apply = self._apply
        try:
            for event in events:
                statuses.append(apply(event, states, outcome))
        except (DeadlineFailed, EventFailed):
            raise
        except Exception as exc:
            # The event being applied: one status per event so far, so its index is their count.
            raise EventFailed(len(statuses), exc) from exc
        return outcome

    def probe(
        self, events: Sequence[Event], states: dict[str, CustomerState], *, hold: int | None = None
    ) -> Probe:
        """Every event of ``events`` (and deadline) whose processing fails, going on past each failure.

        For a batch that failed once: rather than redo it once per failing event, the
        caller learns them all at once, then redoes it without them. A failed event's
        customer's state is put back as it was before it; the rest of what it did is not
        undone (what this returns is all that matters: the caller starts the batch over).
        """
        self._hold = hold
        found = Probe()
        outcome = Outcome()
        for i, event in enumerate(events):
            customer = event.customer_id
            before = states.get(customer)
            saved = encode_state(before) if before is not None else None
            for _ in range(PARK_LIMIT + 2):  # each failed deadline is dropped, then the event goes again
                try:
                    self._apply(event, states, outcome)
                except DeadlineFailed as failed:
                    self._broken[(failed.customer, failed.deadline)] = describe_error(failed.error)
                    found.broken.append(failed)
                    continue
                except EventFailed as failed:  # a parked event it let through
                    if failed.parked is not None:
                        found.parked.append(failed)
                except Exception as exc:
                    found.events[i] = describe_error(exc)
                    found.errors.append(exc)
                    if saved is None:
                        states.pop(customer, None)
                    else:
                        states[customer] = decode_state(saved)
                break
        return found

    def _apply(self, event: Event, states: dict[str, CustomerState], outcome: Outcome) -> Status:
        kind = event.kind
        if kind == Kind.FORGET:
            # Whenever it happened: a request about data, not behaviour in event time.
            self._forget(cast(ForgetRequest, event), states, outcome)
            return Status.FORGOTTEN
        ts = event.ts
        customer = event.customer_id
        state = states.get(customer)
        clock = self.event_clock
        lateness = self._lateness
        now = clock.time
        # Late for the customer (more than the lateness behind their latest event)...
        late = state is not None and ts < state.last_ts - lateness
        if now is not None:
            # ... or, for a customer with no live state, behind the stream's watermark.
            hold = self._hold
            stream_late = ts < (now if hold is None or hold > now else hold) - lateness
            if stream_late != late and not self._live(state):
                late = stream_late
        if late:
            if kind not in FACT_KINDS:
                # A redelivery (a batch redone after a crash) of an event still in the
                # window is no news, rather than late.
                seen = state is not None and contains_event(state, event.event_id)
                return Status.DUPLICATE if seen else Status.LATE
            # What a customer allows is a fact, not behaviour: recorded however late (the
            # latest in event time wins), without a say in the stream's time.
            if state is None:
                state = states[customer] = CustomerState(customer_id=customer)
            self.detector.observe(state, event, ts)
            outcome.touched.add(customer)
            return Status.APPLIED
        if clock.observe(ts, customer) is not None:
            now = clock.time
            watermark = self.watermark
            heap = self._heap
            if heap and watermark is not None and heap[0][0] <= watermark:
                self._fire_due(watermark, states, outcome)
        bound = now if now is not None else self._provisional
        if bound is not None and ts > bound + self._skew:
            self._park(event, outcome)
            return Status.PARKED
        if now is None and (self._provisional is None or ts > self._provisional):
            self._provisional = ts
        if state is None:
            state = states[customer] = CustomerState(customer_id=customer)
            armed = False
        else:
            # Whether the customer may have a deadline beyond the horizon, which only the
            # store holds: dropped there if the event leaves them none.
            armed = self._horizon < END_OF_TIME and (
                state.cart is not None or bool(state.pending) or bool(state.deferred)
            )
        deadlines = self._deadlines
        own = deadlines.get(customer)
        beyond = own is None and armed
        if beyond:
            own = self._wake(state)  # past the horizon: only the store holds it
        if own is not None and own <= ts - lateness:
            # The customer's own event proves their deadlines passed, whatever the stream
            # clock (which trails on a sparse partition) says: fire them first, so the
            # outcome does not depend on how customers are spread over partitions.
            if beyond:
                outcome.deadlines[customer] = None  # whatever is left gets a new one
            self._fire(customer, own, ts - lateness, states, outcome)
        observation = self.detector.observe(state, event, ts)
        if observation is QUIET:
            outcome.touched.add(customer)
            if armed or state.cart is not None or state.pending or customer in deadlines:
                self._collect(state, observation, outcome, armed)
        elif observation.duplicate:
            return Status.DUPLICATE
        else:
            self._collect(state, observation, outcome, armed)
        if self._parked:
            self._decide_parked(states, outcome)
        return Status.APPLIED

    def _park(self, event: Event, outcome: Outcome) -> None:
        self._parked.append((event, self._time()))
        if len(self._parked) > PARK_LIMIT:
            oldest, _ = self._parked.pop(0)
            outcome.unparked.append((oldest, Status.TOO_FAR_AHEAD, ""))

    def _time(self) -> int | None:
        """The stream's time: its clock, or before it is known, the latest event accepted."""
        now = self.event_clock.time
        return now if now is not None else self._provisional

    def _decide_parked(self, states: dict[str, CustomerState], outcome: Outcome) -> None:
        """Apply the parked events the stream's time has reached; reject those it moved on without."""
        now = self._time()
        if now is None:
            return
        reach, gave_up = now + self._skew, now - self._lateness
        waiting: list[Parked] = []
        reached: list[Event] = []
        for event, at in self._parked:
            if event.ts <= reach:
                reached.append(event)
            elif at is not None and at < gave_up:
                outcome.unparked.append((event, Status.TOO_FAR_AHEAD, ""))
            else:
                waiting.append((event, now if at is None else at))
        self._parked = waiting
        for event in reached:
            try:
                outcome.unparked.append((event, self._apply(event, states, outcome), ""))
            except (DeadlineFailed, EventFailed):
                raise
            except Exception as exc:
                raise EventFailed(-1, exc, parked=event) from exc

    def advance(self, to: int, states: dict[str, CustomerState]) -> Outcome:
        """The rest of the deployment has reached event time ``to``: a quiet stream follows it.

        Moves the clock (never back) and fires what the new watermark passes; the caller
        loads the states of :meth:`due` ``([], to)`` first.
        """
        self._hold = None
        outcome = Outcome()
        if self.event_clock.advance(to):
            watermark = self.watermark
            if watermark is not None:
                self._fire_due(watermark, states, outcome)
            self._decide_parked(states, outcome)
        return outcome

    def flush(self, states: dict[str, CustomerState]) -> Outcome:
        """End of input: fire every deadline still pending, reject what is still parked.

        Replay's last step.
        """
        outcome = Outcome()
        outcome.unparked = [(event, Status.TOO_FAR_AHEAD, "") for event, _ in self._parked]
        self._parked = []
        self._fire_due(END_OF_TIME, states, outcome)
        return outcome

    def _live(self, state: CustomerState | None) -> bool:
        """Whether ``state`` still holds behaviour that an event could be judged against.

        Asked only when the customer's and the stream's verdicts differ: a stored state past its use
        (see :meth:`Detector.expires_at`) counts as gone, whether the store has dropped it
        yet or not, so that the verdict does not depend on when a store expires states.
        """
        if state is None or not state.last_ts:
            return False
        now = self.event_clock.time
        return now is None or self.detector.expires_at(state) >= now

    def _forget(self, request: ForgetRequest, states: dict[str, CustomerState], outcome: Outcome) -> None:
        customer = request.customer_id
        # A blank state, so events of the customer later in the batch start afresh.
        states[customer] = CustomerState(customer_id=customer)
        outcome.touched.discard(customer)
        outcome.forgotten.append(request)
        self._deadlines.pop(customer, None)
        outcome.deadlines[customer] = None

    def _fire_due(self, watermark: int, states: dict[str, CustomerState], outcome: Outcome) -> None:
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            deadline, customer = heapq.heappop(heap)
            if self._deadlines.get(customer) == deadline:  # else moved or disarmed since pushed
                # Its heap entry is gone: whatever is still pending gets a new one.
                del self._deadlines[customer]
                outcome.deadlines[customer] = None
                self._fire(customer, deadline, deadline, states, outcome)

    def _fire(
        self, customer: str, deadline: int, now: int, states: dict[str, CustomerState], outcome: Outcome
    ) -> None:
        """Everything of the customer's that event time ``now`` (past their ``deadline``) has passed."""
        state = states.get(customer)
        why = self._broken.get((customer, deadline)) if self._broken else None
        if state is None or why is not None:
            # Erased (the right to be forgotten) or expired since: nothing to fire. Or firing
            # raised before: the deadline is dropped rather than fail every batch again.
            self._deadlines.pop(customer, None)
            outcome.deadlines[customer] = None
            outcome.dropped["no_state" if why is None else Status.INTERNAL_ERROR.value] += 1
            return
        try:
            observation = self.detector.expire(state, now)
            for detection, judgement in self.policy.release(state, now):
                self._route(detection, judgement, outcome)
            self._collect(state, observation, outcome)
        except Exception as exc:
            raise DeadlineFailed(customer, deadline, exc) from exc

    def _route(self, detection: Detection, judgement: Judgement, outcome: Outcome) -> None:
        verdict = judgement.verdict
        render = self._render
        if verdict is Verdict.PUBLISH:
            outcome.detections.append(detection)
            if render is not None:
                outcome.triggers.append(render(detection))
        elif verdict is Verdict.HOLD_OUT:
            outcome.held_out.append(detection)
            if render is not None:
                outcome.held_out_records.append(render(detection))
        elif verdict is Verdict.DEFER:
            outcome.deferred += 1
        else:
            outcome.suppressed[(detection.moment, judgement.reason or verdict.value)] += 1

    def _collect(
        self, state: CustomerState, observation: Observation, outcome: Outcome, armed: bool = False
    ) -> None:
        """Route the observation's detections; the customer's next deadline, set (to the store) if it moved.

        ``armed``: the customer may have a deadline beyond the horizon, unknown here.
        """
        customer = state.customer_id
        outcome.touched.add(customer)
        for detection in observation.detections:
            self._route(detection, self.policy.judge(detection, state), outcome)
        if observation.suppressed:
            outcome.suppressed.update(observation.suppressed)
        if observation.examples:
            outcome.examples.extend(observation.examples)
        wake = self._wake(state)
        held = self._deadlines.get(customer)
        if wake == held and (held is not None or not armed):
            return
        if wake is None or wake > self._horizon:
            if held is not None:
                del self._deadlines[customer]
        else:
            self._deadlines[customer] = wake
            heapq.heappush(self._heap, (wake, customer))
            if len(self._heap) > 2 * len(self._deadlines) + 1024:
                # Moved deadlines leave stale heap entries behind; shed them, in place:
                # callers iterate the same list.
                self._heap[:] = [(d, c) for c, d in self._deadlines.items()]
                heapq.heapify(self._heap)
        outcome.deadlines[customer] = wake

    def _wake(self, state: CustomerState) -> int | None:
        """The next event time the customer needs waking at: their cart, an outcome, a release."""
        wake = self.detector.next_deadline(state)
        if state.deferred:
            release = self.policy.next_release(state)
            wake = release if wake is None or (release is not None and release < wake) else wake
        return wake


def without(events: Sequence[Event], skipped: Collection[int]) -> list[Event]:
    """``events`` less those at the indices ``skipped``."""
    return [event for i, event in enumerate(events) if i not in skipped]
