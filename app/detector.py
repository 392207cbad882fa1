"""The detection core: one customer's event in, window updated, micro-moments out.

Pure and synchronous. :meth:`Detector.observe` updates the customer's
:class:`~app.window.CustomerState` in place and returns what the event
completed; :meth:`Detector.expire` fires an absence-based moment whose deadline
event time has passed. Neither knows about Kafka, Redis or asyncio, so replay,
the streaming worker and the tests run exactly this code.

>>> from app.config import load_catalogue
>>> from app.decoding import decode_event
>>> detector = Detector(load_catalogue())
>>> state = CustomerState(customer_id="c1")
>>> event = decode_event(b'{"event_id": "e1", "customer_id": "c1", "event_type": "compare_view",'
...                      b' "occurred_at": "2026-11-25T10:00:00Z"}')
>>> [d.moment for d in detector.observe(state, event, event.ts).detections]
['price_comparison']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

import msgspec

from app.config import Catalogue
from app.detection import Decider, Detection
from app.events import (
    CLICKSTREAM_KINDS,
    FACT_KINDS,
    PURCHASE_KINDS,
    ClickstreamEvent,
    ConsentEvent,
    Event,
    Kind,
    PurchaseEvent,
    SuppressionEvent,
)
from app.journey import journey_stage
from app.learning.labels import LabelledExample, resolve
from app.learning.labels import expire as expire_pending
from app.learning.labels import next_deadline as next_pending
from app.moments import MOMENT_TYPES
from app.moments.base import Candidate, Moment, MomentConfig
from app.moments.cart_abandonment import CartAbandonment
from app.policy import DAY
from app.scorer import Scorer
from app.signals import Vocabulary
from app.window import Consent, CustomerState, Entry, Order, clear, contains_event, insert, prune


class Observation(msgspec.Struct, gc=False):
    duplicate: bool = False
    detections: list[Detection] = msgspec.field(default_factory=list)
    # moment -> why a candidate did not become a trigger ("below_threshold", "cooldown")
    suppressed: list[tuple[str, str]] = msgspec.field(default_factory=list)
    # Scored candidates whose outcome became known: what the models learn from.
    examples: list[LabelledExample] = msgspec.field(default_factory=list)


# Shared answers for the common cases; callers only read observations.
QUIET: Final = Observation()
DUPLICATE: Final = Observation(duplicate=True)


class Detector:
    def __init__(
        self,
        catalogue: Catalogue,
        *,
        scorer: Scorer | None = None,
    ) -> None:
        """Detection of the catalogue's moments, one customer's events at a time.

        Parameters
        ----------
        catalogue
            The moments, windows and learning configuration.
        scorer
            Scores candidates when learning is on: by default one with fresh models that
            learn the outcomes as they become known, in batches (replay's); a worker's only
            reports them.
        """
        self.catalogue = catalogue
        learning = catalogue.learning
        self.scorer = (scorer or Scorer(catalogue)) if learning.enabled else None
        self.models = self.scorer.models if self.scorer is not None else None
        self._outcomes = learning.outcome_kinds()
        cfg = catalogue.moments
        every = [moment(getattr(cfg, moment.name)) for moment in MOMENT_TYPES]
        self.cart = next(m for m in every if isinstance(m, CartAbandonment))
        self.moments = {m.name: m for m in every if m.config.enabled}
        self._evaluated_on: dict[int, list[Moment]] = {
            kind: [m for m in self.moments.values() if kind in m.kinds and m is not self.cart]
            for kind in range(len(Kind.NAMES))
        }
        self._tracks_cart = self.cart.name in self.moments
        self.vocabulary = Vocabulary(
            price_words=cfg.price_comparison.keywords,
            review_words=cfg.review_seeking.keywords,
            howto_words=cfg.post_purchase_howto.keywords,
            local_words=cfg.local_intent.keywords,
            price_sorts=cfg.price_comparison.price_sorts,
            review_sorts=cfg.review_seeking.review_sorts,
            declined_codes=cfg.frustration.declined_codes,
        )
        window = catalogue.window
        looks_back = [
            cfg.price_comparison.window,
            cfg.review_seeking.window,
            cfg.local_intent.window,
            cfg.frustration.window,
            window.stats_window,
        ]
        # A late event is evaluated as of its own time, so keep what its windows need.
        self.retention = max(looks_back) + window.allowed_lateness
        # Looked up once here rather than per event.
        self._cart_kinds = (
            frozenset(int(kind) for kind in self.cart.kinds) if self._tracks_cart else frozenset()
        )
        self._caps = (self.retention, window.max_events, window.order_retention, window.max_orders)
        self._max_events = window.max_events
        # What expires_at adds to each time a state holds: its span, extended by the lateness.
        self._lateness = window.allowed_lateness
        self._cooldown_spans = {
            name: moment.config.cooldown + window.allowed_lateness for name, moment in self.moments.items()
        }
        self._order_span = window.order_retention + window.allowed_lateness
        self._cart_span = self.cart.config.cooldown + window.allowed_lateness

    def observe(self, state: CustomerState, event: Event, ts: int) -> Observation:
        """Add ``event`` to ``state``; return what it completes.

        An event id already in the window changes nothing, so reprocessing after
        a crash and producer retries are harmless.

        Parameters
        ----------
        state
            The event's customer's state, updated in place.
        event
            The event, valid and decoded.
        ts
            Its ``occurred_at``, in ms since the epoch.

        Returns
        -------
        Observation
            The detections it completes (scored, for the policy to judge) and the
            labelled examples; ``QUIET`` if none.
        """
        kind = event.kind
        if kind in FACT_KINDS:
            _record_fact(state, cast(ConsentEvent | SuppressionEvent, event), ts)
            return QUIET
        if kind == Kind.FORGET:
            return QUIET  # erasing is the stream processor's job: it drops the whole state
        if state.last_ts and ts - state.last_ts > self.retention and ts > self.expires_at(state):
            # Nothing held is of use any more. Stores drop such states in their own time
            # (Redis by wall clock, memory by the stream clock); forgetting it here too
            # keeps the triggers independent of when, or whether, they do.
            clear(state)
        elif contains_event(state, event.event_id):
            return DUPLICATE
        entry = self._entry(event, ts)
        if ts >= state.last_ts:
            # The usual case: the customer's latest event. It goes last (the entries are
            # sorted, and none is later than last_ts), and its context is the customer's now.
            state.entries.append(entry)
            self._remember(state, event, ts)
        else:
            insert(state.entries, entry)
        purchased: Sequence[str] = ()
        if kind in PURCHASE_KINDS:
            order = cast(PurchaseEvent, event)
            purchased = [item.product_id for item in order.items]
            self._record_order(state, order, ts, purchased)
        if kind in self._cart_kinds:
            self.cart.track(state, entry, purchased)
        observation = QUIET
        if state.pending:
            state.pending, positives = resolve(state.pending, self._outcomes, entry.kind, ts)
            observation = self._labelled(positives, observation)
        for moment in self._evaluated_on[entry.kind]:
            candidate = moment.evaluate(state, entry)
            if candidate is not None:
                if observation is QUIET:
                    observation = Observation()
                self._decide(state, candidate, observation)
        entries = state.entries
        if entries[0].ts < state.last_ts - self.retention or len(entries) > self._max_events or state.orders:
            prune(state, *self._caps)  # rarely needed: checked here first, without the call
        return observation

    def expire(self, state: CustomerState, now: int) -> Observation:
        """What event time ``now`` passing completes: the cart's deadline, unlabelled outcomes.

        Parameters
        ----------
        state
            The customer's state, updated in place.
        now
            The event time (ms) reached: the stream's watermark.

        Returns
        -------
        Observation
            A cart abandonment detected, and outcomes labelled negative; ``QUIET`` if none.
        """
        observation = QUIET
        if state.pending:
            state.pending, negatives = expire_pending(state.pending, now)
            observation = self._labelled(negatives, observation)
        cart = state.cart
        if cart is None or cart.deadline is None or cart.deadline > now:
            return observation
        candidate = self.cart.fire(state)
        if candidate is not None:
            if observation is QUIET:
                observation = Observation()
            self._decide(state, candidate, observation)
        return observation

    def next_deadline(self, state: CustomerState) -> int | None:
        """The next event time the customer needs waking at for the detector: cart or outcome."""
        cart = state.cart.deadline if state.cart is not None else None
        if not state.pending:
            return cart
        # An outcome at the very deadline still counts: an example is negative only after it.
        first = next_pending(state.pending)
        pending = None if first is None else first + 1
        return min(cart, pending) if cart is not None and pending is not None else cart or pending

    def expires_at(self, state: CustomerState) -> int:
        """The last event time at which the state still holds something a detection needs.

        Stores compare it with the stream clock, while events up to
        ``allowed_lateness`` behind the clock are still applied, so every span
        is extended by the lateness (``retention`` already includes it).
        """
        # Called for every state saved: plain comparisons, no intermediate lists.
        end = state.last_ts + self.retention
        spans = self._cooldown_spans
        for moment, fired in state.cooldowns.items():
            span = spans.get(moment)
            if span is not None and fired + span > end:
                end = fired + span
        if state.orders:
            end = max(end, state.orders[-1].ts + self._order_span)
        cart = state.cart
        if cart is not None and cart.deadline is not None:
            end = max(end, cart.deadline + self._cart_span)
        if state.sent:
            end = max(end, max(state.sent) + DAY)  # the frequency cap looks back a day
        lateness = self._lateness
        for example in state.pending:
            end = max(end, example.deadline + lateness)
        for deferred in state.deferred:
            end = max(end, deferred.release_at)
        return end

    def _decide(self, state: CustomerState, candidate: Candidate, observation: Observation) -> None:
        moment = self.moments.get(candidate.moment)
        if moment is None:
            return  # disabled since the state was saved (a cart deadline armed before)
        cfg = moment.config
        last = state.cooldowns.get(candidate.moment)
        # Symmetric, so a late event cannot slip a trigger in just before the last one.
        if last is not None and abs(candidate.ts - last) < cfg.cooldown:
            observation.suppressed.append((candidate.moment, "cooldown"))
            return
        score, decided_by = candidate.score, Decider.RULES
        if self.scorer is not None:
            score, decided_by = self.scorer.score(state, candidate, threshold=cfg.threshold)
        if score < cfg.threshold:
            observation.suppressed.append((candidate.moment, "below_threshold"))
            return
        state.cooldowns[candidate.moment] = max(candidate.ts, last or candidate.ts)
        observation.detections.append(self._detection(state, candidate, cfg, score, decided_by))

    def _labelled(self, examples: list[LabelledExample], observation: Observation) -> Observation:
        """Outcomes known: learn from them (replay) and report them."""
        if not examples:
            return observation
        if self.scorer is not None:
            self.scorer.learnt(examples)
        if observation is QUIET:
            observation = Observation()
        observation.examples.extend(examples)
        return observation

    def _detection(
        self, state: CustomerState, candidate: Candidate, cfg: MomentConfig, score: float, decided_by: str
    ) -> Detection:
        journey = self.catalogue.journey
        now = candidate.ts
        return Detection(
            moment=candidate.moment,
            customer_id=state.customer_id,
            ts=now,
            anchor=candidate.anchor,
            score=score,
            threshold=cfg.threshold,
            decided_by=decided_by,
            reasons=candidate.reasons,
            evidence=candidate.evidence,
            explanation=candidate.explanation,
            journey_stage=journey_stage(
                state,
                now,
                recent=self.catalogue.window.stats_window,
                post_purchase=journey.post_purchase,
                loyalty_min_orders=journey.loyalty_min_orders,
            ),
            window=self._window_stats(state, now),
            expires_at=now + cfg.ttl,
            attributes=candidate.attributes,
            session_id=state.session_id,
            channel=state.channel,
            segment=state.segment,
        )

    def _window_stats(self, state: CustomerState, now: int) -> dict[str, int]:
        start = now - self.catalogue.window.stats_window
        recent = [e for e in state.entries if start <= e.ts <= now]
        products = {e.product_id for e in recent if e.product_id is not None}
        categories = {e.category for e in recent if e.category is not None}
        return {
            "events": len(recent),
            "product_views": sum(1 for e in recent if e.kind == Kind.PRODUCT_VIEW),
            "searches": sum(1 for e in recent if e.kind == Kind.SEARCH),
            "distinct_products": len(products),
            "distinct_categories": len(categories),
            "span_seconds": (now - recent[0].ts) // 1000 if recent else 0,
        }

    def _entry(self, event: Event, ts: int) -> Entry:
        kind = event.kind
        if kind in CLICKSTREAM_KINDS:
            click = cast(ClickstreamEvent, event)
            detail = click.step if kind == Kind.CHECKOUT_STEP else click.error_code
            flags = 0 if click.error_code is None else self.vocabulary.signals(click)
            return Entry(
                ts, kind, click.event_id, click.product_id, click.category, click.price, flags, detail
            )
        if kind in PURCHASE_KINDS:
            order = cast(PurchaseEvent, event)
            return Entry(ts, kind, order.event_id, None, None, order.total, 0, order.order_id)
        return Entry(ts, kind, event.event_id, None, None, None, self.vocabulary.signals(event), None)

    @staticmethod
    def _remember(state: CustomerState, event: Event, ts: int) -> None:
        """The context of the customer's latest event: time, session, channel, device, time zone."""
        state.last_ts = ts
        if event.session_id != state.session_id:
            state.session_id = event.session_id
            state.session_start = ts
        # Absent fields keep what is known; present ones are never empty strings.
        if event.channel is not None:
            state.channel = event.channel
        if event.device is not None:
            state.device = event.device
        if event.timezone is not None:
            state.timezone = event.timezone

    def _record_order(self, state: CustomerState, event: PurchaseEvent, ts: int, products: list[str]) -> None:
        if event.kind == Kind.REFUND:
            for order in state.orders:
                if order.order_id == event.order_id:
                    order.refunded = True
            return
        insert_at = len(state.orders)
        while insert_at and state.orders[insert_at - 1].ts > ts:
            insert_at -= 1
        state.orders.insert(insert_at, Order(ts, event.event_id, event.order_id, products))


def _record_fact(state: CustomerState, event: ConsentEvent | SuppressionEvent, ts: int) -> None:
    """Consent and do-not-contact: the latest in event time wins."""
    if isinstance(event, ConsentEvent):
        known = state.consent.get(event.purpose)
        if known is None or ts >= known.ts:
            state.consent[event.purpose] = Consent(event.status == "granted", ts)
    elif event.action == "add":
        # The latest addition and the latest removal are both kept, whatever order they
        # arrive in: the later decides (a removal at the same instant wins).
        if state.suppressed_since is None or ts > state.suppressed_since:
            state.suppressed_since = ts
    elif state.unsuppressed_at is None or ts > state.unsuppressed_at:
        state.unsuppressed_at = ts
