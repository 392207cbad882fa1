"""Learning inside the core: scored candidates wait for their outcome, models take over after warm-up."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from helpers import DETECTION_ONLY, at, ev, run, ticks

from app.config import load_catalogue
from app.detection import Decider, Detection
from app.detector import Detector
from app.learning.models import Models
from app.replay import replay
from app.scorer import Scorer
from app.window import CustomerState

# Detection alone, as in the other core tests, but with learning on.
LEARNING = load_catalogue(DETECTION_ONLY, overrides={"learning": {"enabled": True}})
DEMO = Path(__file__).resolve().parent.parent / "fixtures" / "demo" / "day.jsonl"


def compare(offset: str, customer: str = "c1") -> list:
    return [ev("compare_view", offset, customer=customer)]


def test_a_scored_candidate_waits_for_its_outcome() -> None:
    result = run(compare("0s"), LEARNING)
    (pending,) = result.states["c1"].pending
    assert (pending.moment, pending.ts, pending.deadline) == ("price_comparison", at("0s"), at("30m"))
    assert pending.decided_by == Decider.RULES
    assert pending.published
    assert result.processor.deadlines == {"c1": at("30m") + 1}  # negative only after the deadline


def test_a_purchase_within_the_horizon_labels_it_positive() -> None:
    purchase = ev("purchase", "29m", order_id="o1", items=[{"product_id": "p1"}])
    result = run([*compare("0s"), purchase], LEARNING)
    assert [(e.moment, e.label, e.ts) for e in result.examples] == [("price_comparison", True, at("0s"))]
    assert result.states["c1"].pending == []


def test_no_outcome_by_the_deadline_labels_it_negative_once_event_time_passes_it() -> None:
    assert run([*compare("0s"), *ticks("32m")], LEARNING).examples == []  # watermark at 30m
    result = run([*compare("0s"), *ticks("32m1ms")], LEARNING)
    assert [(e.moment, e.label) for e in result.examples] == [("price_comparison", False)]


def test_an_outcome_after_the_horizon_is_too_late() -> None:
    late_purchase = ev("purchase", "31m", order_id="o1")
    result = run([*compare("0s"), late_purchase, *ticks("40m")], LEARNING)
    assert [e.label for e in result.examples] == [False]


def test_a_cart_deadline_equal_to_an_outcome_deadline_still_fires() -> None:
    # The frustration candidate of the third payment step and the cart both wait 30 minutes.
    steps = [ev("checkout_step", f"{n}s", step="payment") for n in (10, 20, 30)]
    result = run([ev("add_to_cart", "0s", product_id="p1"), *steps], LEARNING, flush=True)
    assert sorted(result.moments()) == ["cart_abandonment", "frustration"]


def _store_visits_learning_in_batches_of(size: int) -> list[Detection]:
    """Six customers visit the store locator an hour apart, every other one buys; then a seventh visits."""
    catalogue = load_catalogue(
        DETECTION_ONLY,
        overrides={
            "learning": {"enabled": True, "min_examples": 4, "model": {"learn_batch": size}},
            "moments": {"local_intent": {"cooldown": 0}},
        },
    )
    events = []
    for n in range(6):
        customer = f"c{n}"
        events += [ev("store_locator_view", f"{n}h", customer=customer)]
        if n % 2:
            events += [ev("purchase", f"{n}h10m", customer=customer, order_id=f"o{n}")]
    events += [ev("store_locator_view", "7h", customer="late-comer")]
    return run(events, catalogue).detections


def test_the_model_takes_over_from_the_rules_after_warm_up() -> None:
    # Batches of one: each outcome is learnt as soon as it is known.
    result = _store_visits_learning_in_batches_of(1)
    deciders = [d.decided_by for d in result]
    assert deciders[:4] == [Decider.RULES] * 4
    assert deciders[-1] == Decider.MODEL
    assert result[-1].score != result[0].score


def test_expired_state_keeps_its_unlabelled_examples_until_they_resolve() -> None:
    detector = Detector(LEARNING)
    state = CustomerState(customer_id="c1")
    detector.observe(state, compare("0s")[0], at("0s"))
    assert detector.expires_at(state) >= at("30m") + LEARNING.window.allowed_lateness


def test_triggers_carry_the_customers_segment_once_segments_have_been_learnt() -> None:
    models = Models(LEARNING.learning)
    detector = Detector(LEARNING, scorer=Scorer(LEARNING, models=models))
    for n in range(3):
        state = CustomerState(customer_id=f"c{n}")
        detector.observe(state, ev("compare_view", f"{n}m", customer=f"c{n}"), at(f"{n}m"))
        detector.expire(state, at("1h"))  # learns the (negative) example, and the segment
    state = CustomerState(customer_id="c9")
    detection = detector.observe(state, ev("compare_view", "2h", customer="c9"), at("2h")).detections[0]
    assert detection.segment is not None
    assert state.segment == detection.segment


@pytest.mark.parametrize("batch_size", [1, 500])
async def test_replay_with_learning_is_deterministic(batch_size: int) -> None:
    # Models learn in batches of their own, whatever the replay's batches.
    catalogue = load_catalogue(overrides={"learning": {"min_examples": 20, "model": {"learn_batch": 8}}})
    outputs = []
    for size in (batch_size, 2000):
        out = io.BytesIO()
        summary = await replay(
            [DEMO], catalogue, out=out, on_problem=pytest.fail, show_progress=False, batch_size=size
        )
        outputs.append(out.getvalue())
    triggers = [orjson.loads(line) for line in outputs[0].splitlines()]
    assert {t["data"]["decided_by"] for t in triggers} == {"rules", "model"}
    assert outputs[0] == outputs[1]
    assert summary.models["price_comparison"]["examples"] > 20


def test_outcomes_wait_for_a_whole_batch_before_the_model_learns_them() -> None:
    # Five outcomes known by the last visit, fewer than a batch: the rules still decide.
    assert {d.decided_by for d in _store_visits_learning_in_batches_of(8)} == {Decider.RULES}
