"""The engagement policy (app/policy.py), rule by rule, alone and through the stream processor.

Each test configures only the rules it is about (``configured``: consent implied, no cap,
no quiet hours and nobody held out, unless given), so a failure names one rule. Times are
event time; the stream's clock moves with ``ticks`` (another customer's page views), and
the watermark trails it by the allowed lateness, 2 minutes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import T0, at, ev, ticks, trigger_bytes

from app.config import Catalogue, ConfigError, default_config_text, load_catalogue
from app.confirmations import confirmation
from app.detection import Detection
from app.detector import Detector
from app.events import Event, ForgetRequest
from app.moments import MOMENT_TYPES
from app.pipeline import Pipeline
from app.policy import DAY, Holdout, Judgement, Policy, PolicyConfig, QuietHours, Verdict, sha256_hex
from app.processor import Outcome, Status, StreamProcessor
from app.replay import replay
from app.state.memory import MemoryStateStore
from app.triggers import TriggerWriter, trigger_id
from app.window import Consent, CustomerState

ROOT = Path(__file__).resolve().parent.parent
MOMENTS = [moment.name for moment in MOMENT_TYPES]
NOBODY_HELD_OUT = dict.fromkeys(MOMENTS, 0.0)
HOUR = 3_600_000
MINUTE = 60_000


def configured(**policy: Any) -> Catalogue:
    """The shipped catalogue with the policy reduced to the rules given (tables merged one level)."""
    settings: dict[str, Any] = {
        "consent": "implied",
        "max_per_day": 0,
        "quiet_hours": {"enabled": False},
        "holdout": {"share": NOBODY_HELD_OUT},
    }
    for key, value in policy.items():
        base = settings.get(key)
        settings[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return load_catalogue(overrides={"policy": settings})


QUIET = configured(quiet_hours={"enabled": True})  # 21:00 to 08:00, deferred, UTC by default


def utc(text: str) -> int:
    """Event time (ms) of an RFC 3339 time."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def off(text: str) -> int:
    """The offset from T0 (what ``ev`` and ``ticks`` take) of an RFC 3339 time."""
    return utc(text) - T0


def granted(offset: str | int = 0, customer: str = "c1", purpose: str = "marketing") -> Event:
    return ev("consent", offset, customer=customer, status="granted", purpose=purpose)


def revoked(offset: str | int = 0, customer: str = "c1", purpose: str = "marketing") -> Event:
    return ev("consent", offset, customer=customer, status="revoked", purpose=purpose)


# One event that completes each moment on its own (compare_view 0.6, store locator 0.7,
# review page 0.5, declined card 0.65), so a test can fire several moments in a row.
FIRES = {
    "price_comparison": ("compare_view", {}),
    "local_intent": ("store_locator_view", {}),
    "review_seeking": ("review_view", {}),
    "frustration": ("error", {"error_code": "card_declined"}),
}


def fire(moment: str, offset: str | int, customer: str = "c1", **fields: Any) -> Event:
    event_type, own = FIRES[moment]
    return ev(event_type, offset, customer=customer, **own, **fields)


def detection(moment: str, offset: str | int, customer: str = "c1") -> Detection:
    """A real detection of ``moment`` at ``offset``, as the detector makes it."""
    event = fire(moment, offset, customer)
    observed = Detector(configured()).observe(CustomerState(customer_id=customer), event, event.ts)
    (found,) = observed.detections
    return found


class Stream:
    """One stream through the real core; each ``send`` is one batch, results accumulate."""

    def __init__(self, catalogue: Catalogue, deadlines: dict[str, int] | None = None) -> None:
        self.processor = StreamProcessor(Detector(catalogue), Policy(catalogue.policy), deadlines=deadlines)
        self.states: dict[str, CustomerState] = {}
        self.published: list[Detection] = []
        self.held_out: list[Detection] = []
        self.suppressed: Counter[tuple[str, str]] = Counter()
        self.deferred = 0
        self.statuses: list[Status] = []

    def send(self, *events: Event) -> Outcome:
        return self._add(self.processor.process(list(events), self.states))

    def flush(self) -> Outcome:
        return self._add(self.processor.flush(self.states))

    def _add(self, outcome: Outcome) -> Outcome:
        self.published += outcome.detections
        self.held_out += outcome.held_out
        self.suppressed += outcome.suppressed
        self.deferred += outcome.deferred
        self.statuses += outcome.statuses
        return outcome

    def moments(self) -> list[str]:
        return [d.moment for d in self.published]


SUPPRESSED = Judgement(Verdict.SUPPRESS, "suppressed")
NO_CONSENT = Judgement(Verdict.SUPPRESS, "no_consent")
PUBLISHED = Judgement(Verdict.PUBLISH)


# ============================================================================================
# Consent
# ============================================================================================


def test_required_consent_contacts_only_customers_who_granted_it() -> None:
    policy = Policy(configured(consent="required").policy)
    unknown = CustomerState(customer_id="c1")
    assert policy.judge(detection("price_comparison", "1m"), unknown) == NO_CONSENT
    yes = CustomerState(customer_id="c1", consent={"marketing": Consent(True, at(0))})
    assert policy.judge(detection("price_comparison", "1m"), yes) == PUBLISHED
    no = CustomerState(customer_id="c1", consent={"marketing": Consent(False, at(0))})
    assert policy.judge(detection("price_comparison", "1m"), no) == NO_CONSENT


def test_implied_consent_contacts_everybody_who_did_not_revoke_it() -> None:
    policy = Policy(configured(consent="implied").policy)
    assert policy.judge(detection("price_comparison", "1m"), CustomerState(customer_id="c1")) == PUBLISHED
    no = CustomerState(customer_id="c1", consent={"marketing": Consent(False, at(0))})
    assert policy.judge(detection("price_comparison", "1m"), no) == NO_CONSENT


def test_only_consent_for_the_configured_purpose_counts() -> None:
    other = CustomerState(customer_id="c1", consent={"analytics": Consent(True, at(0))})
    assert (
        Policy(configured(consent="required").policy).judge(detection("local_intent", 0), other) == NO_CONSENT
    )
    analytics = configured(consent="required", consent_purpose="analytics").policy
    assert Policy(analytics).judge(detection("local_intent", 0), other) == PUBLISHED


def test_consent_revoked_mid_window_and_granted_again() -> None:
    stream = Stream(configured(consent="required"))
    stream.send(
        granted("0s"),
        fire("price_comparison", "1m"),  # published: consent granted
        revoked("4m"),
        fire("local_intent", "5m"),  # suppressed
        fire("review_seeking", "6m"),  # suppressed
        granted("7m"),
        fire("frustration", "8m"),  # published again
    )
    assert stream.moments() == ["price_comparison", "frustration"]
    assert stream.suppressed == {("local_intent", "no_consent"): 1, ("review_seeking", "no_consent"): 1}
    assert Status.LATE not in stream.statuses


def test_a_moment_completed_after_a_revocation_within_its_window_is_suppressed() -> None:
    """Category browsing begun with consent and completed after revoking it: not published."""
    stream = Stream(configured(consent="required"))
    stream.send(
        granted("0s"),
        ev("product_view", "1m", product_id="tv-1", category="tv"),
        ev("product_view", "2m", product_id="tv-2", category="tv"),
        revoked("3m"),
        ev("product_view", "4m", product_id="tv-3", category="tv"),
    )
    assert stream.published == []
    assert stream.suppressed == {("price_comparison", "no_consent"): 1}


@pytest.mark.parametrize(
    ("first", "second", "contacted"),
    [
        (("granted", "5m"), ("revoked", "4m"), True),  # the older revocation arrives second
        (("revoked", "5m"), ("granted", "4m"), False),  # the older grant arrives second
        (("granted", "4m"), ("revoked", "5m"), False),  # in order
        (("revoked", "4m"), ("granted", "5m"), True),
    ],
)
def test_the_latest_consent_in_event_time_wins_whatever_the_arrival_order(
    first: tuple[str, str], second: tuple[str, str], contacted: bool
) -> None:
    make = {"granted": granted, "revoked": revoked}
    stream = Stream(configured(consent="required"))
    stream.send(make[first[0]](first[1]), make[second[0]](second[1]), fire("price_comparison", "6m"))
    assert stream.moments() == (["price_comparison"] if contacted else [])
    assert stream.suppressed == ({} if contacted else {("price_comparison", "no_consent"): 1})


def test_a_revocation_behind_the_watermark_is_still_applied() -> None:
    """Consent is a fact, not behaviour: a revocation that arrives late is not skipped."""
    stream = Stream(configured(consent="required"))
    stream.send(granted("0s"), *ticks("10m"))
    outcome = stream.send(revoked("5m"), granted("4m"), fire("price_comparison", "11m"))
    assert outcome.statuses == [Status.APPLIED] * 3  # behind the watermark (8m), applied all the same
    assert stream.published == []
    assert stream.suppressed == {("price_comparison", "no_consent"): 1}
    assert stream.processor.clock == at("10m")  # late facts do not move the clock
    # ...while late behaviour is still skipped.
    assert stream.send(fire("local_intent", "5m")).statuses == [Status.LATE]


def test_consent_of_one_customer_is_theirs_alone() -> None:
    stream = Stream(configured(consent="required"))
    stream.send(
        granted("0s", customer="c1"), fire("local_intent", "1m", "c1"), fire("local_intent", "1m", "c2")
    )
    assert [d.customer_id for d in stream.published] == ["c1"]
    assert stream.suppressed == {("local_intent", "no_consent"): 1}


# ============================================================================================
# Do not contact
# ============================================================================================


def test_customers_on_the_configured_list_are_never_contacted() -> None:
    stream = Stream(configured(consent="required", suppressed_customers=["c1"]))
    stream.send(
        granted("0s", "c1"),
        granted("0s", "c2"),
        fire("local_intent", "1m", "c1"),
        fire("local_intent", "1m", "c2"),
    )
    assert [d.customer_id for d in stream.published] == ["c2"]
    assert stream.suppressed == {("local_intent", "suppressed"): 1}


def test_customers_listed_by_sha256_are_never_contacted() -> None:
    # CRM exports often write hex digests in capitals: the list is read case-insensitively.
    digest = sha256_hex("c1").upper()
    policy = Policy(configured(suppressed_hashes=[digest]).policy)
    assert policy.judge(detection("local_intent", 0, "c1"), CustomerState(customer_id="c1")) == SUPPRESSED
    assert policy.judge(detection("local_intent", 0, "c2"), CustomerState(customer_id="c2")) == PUBLISHED
    # The digest of the id itself, unsalted: a salted one names nobody.
    salted = Policy(configured(suppressed_hashes=[sha256_hex("salt" + "c1")]).policy)
    assert salted.judge(detection("local_intent", 0, "c1"), CustomerState(customer_id="c1")) == PUBLISHED


def test_suppression_events_add_and_remove_customers() -> None:
    stream = Stream(configured())
    stream.send(
        ev("suppression", "1m", action="add", reason="complaint"),
        fire("price_comparison", "2m"),
        ev("suppression", "3m", action="remove"),
        fire("local_intent", "4m"),
    )
    assert stream.moments() == ["local_intent"]
    assert stream.suppressed == {("price_comparison", "suppressed"): 1}


def test_an_older_removal_arriving_late_does_not_lift_a_newer_addition() -> None:
    stream = Stream(configured())
    stream.send(ev("suppression", "5m", action="add"), ev("suppression", "4m", action="remove"))
    stream.send(fire("price_comparison", "6m"))
    assert stream.published == []
    assert stream.suppressed == {("price_comparison", "suppressed"): 1}


def test_an_older_addition_arriving_late_does_not_undo_a_newer_removal() -> None:
    # Added at 10, removed at 20, then an "add" stamped 15 arrives last: the removal, later in
    # event time, still wins, whatever the order of arrival.
    for order in ((10, 20, 15), (15, 10, 20), (20, 15, 10)):
        stream = Stream(configured())
        actions = {10: "add", 20: "remove", 15: "add"}
        stream.send(*(ev("suppression", f"{t}m", action=actions[t]) for t in order))
        stream.send(fire("price_comparison", "30m"))
        assert stream.moments() == ["price_comparison"], order


def test_do_not_contact_comes_before_consent() -> None:
    policy = Policy(configured(consent="required", suppressed_customers=["c1"]).policy)
    assert policy.judge(detection("local_intent", 0), CustomerState(customer_id="c1")) == SUPPRESSED


# ============================================================================================
# Holdout groups
# ============================================================================================

SHIPPED = Policy(load_catalogue().policy)
IDS = [f"cust-{i:06d}" for i in range(20_000)]
_IN_ANOTHER_PROCESS = """
import json, sys
from app.config import load_catalogue
from app.policy import Policy
policy = Policy(load_catalogue().policy)
ids = json.load(sys.stdin)
held = {m: [c for c in ids if policy.held_out(m, c)] for m in sys.argv[1:]}
print(json.dumps({"hash": hash(ids[0]), "held": held}))
"""


def _held_out_elsewhere(seed: str, ids: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", _IN_ANOTHER_PROCESS, *MOMENTS],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_holdout_split_is_the_same_in_every_process() -> None:
    """Workers and restarts agree: the split does not depend on Python's per-process hashing."""
    ids = IDS[:3000]
    here = {m: [c for c in ids if SHIPPED.held_out(m, c)] for m in MOMENTS}
    one, two = _held_out_elsewhere("1", ids), _held_out_elsewhere("2", ids)
    assert one["hash"] != two["hash"]  # the two processes really hash strings differently
    assert one["held"] == two["held"] == here
    assert all(here.values())
    # A new Policy (a restart) gives the same answer too.
    again = Policy(load_catalogue().policy)
    assert {m: [c for c in ids if again.held_out(m, c)] for m in MOMENTS} == here


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_the_holdout_share_is_close_to_the_configured_one(share: float) -> None:
    policy = Policy(configured(holdout={"share": {**NOBODY_HELD_OUT, "review_seeking": share}}).policy)
    held = sum(policy.held_out("review_seeking", c) for c in IDS)
    # Binomial standard deviation at 20,000 ids is at most 0.0035: allow about 4 of them.
    assert abs(held / len(IDS) - share) < 0.015
    assert not any(policy.held_out("price_comparison", c) for c in IDS)  # share 0: nobody


def test_each_moment_holds_out_its_own_customers() -> None:
    price = {c for c in IDS if SHIPPED.held_out("price_comparison", c)}
    review = {c for c in IDS if SHIPPED.held_out("review_seeking", c)}
    # Independent 10% draws overlap on about 1% of customers, not 10%.
    assert len(price & review) < 0.03 * len(IDS)
    assert 0.08 < len(price) / len(IDS) < 0.12


def test_a_new_salt_reshuffles_the_groups() -> None:
    other = Policy(
        configured(holdout={"salt": "experiment-2", "share": {**NOBODY_HELD_OUT, "frustration": 0.1}}).policy
    )
    before = {c for c in IDS[:5000] if SHIPPED.held_out("frustration", c)}
    after = {c for c in IDS[:5000] if other.held_out("frustration", c)}
    assert before != after
    assert len(before & after) < 0.5 * len(before)


def test_held_out_detections_are_recorded_not_published_and_not_capped() -> None:
    holdout = {"share": {**NOBODY_HELD_OUT, "price_comparison": 1.0}}
    stream = Stream(configured(max_per_day=1, holdout=holdout))
    stream.send(fire("price_comparison", "1m"), fire("local_intent", "2m"), fire("review_seeking", "3m"))
    assert [d.moment for d in stream.held_out] == ["price_comparison"]
    assert stream.moments() == ["local_intent"]  # the held-out detection did not use up the cap
    assert stream.suppressed == {("review_seeking", "frequency_cap"): 1}
    assert stream.states["c1"].sent == [at("2m")]


def test_holdout_comes_after_consent_and_before_the_cap() -> None:
    holdout = {"share": {**NOBODY_HELD_OUT, "local_intent": 1.0}}
    policy = Policy(configured(consent="required", max_per_day=1, holdout=holdout).policy)
    assert policy.judge(detection("local_intent", 0), CustomerState(customer_id="c1")) == NO_CONSENT
    full = CustomerState(customer_id="c1", consent={"marketing": Consent(True, 0)}, sent=[at(0)])
    assert policy.judge(detection("local_intent", "1m"), full).verdict is Verdict.HOLD_OUT


# ============================================================================================
# The frequency cap
# ============================================================================================


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_the_cap_is_reached_exactly(cap: int) -> None:
    stream = Stream(configured(max_per_day=cap))
    order = ["price_comparison", "local_intent", "review_seeking", "frustration"]
    stream.send(*(fire(moment, f"{i + 1}m") for i, moment in enumerate(order)))
    assert stream.moments() == order[:cap]  # the Nth is published...
    assert stream.suppressed == {(m, "frequency_cap"): 1 for m in order[cap:]}  # ...the N+1th is not


def test_the_cap_counts_over_a_rolling_day() -> None:
    policy = Policy(configured(max_per_day=2).policy)
    state = CustomerState(customer_id="c1")
    assert policy.judge(detection("price_comparison", "0s"), state) == PUBLISHED
    assert policy.judge(detection("local_intent", "1h"), state) == PUBLISHED
    capped = policy.judge(detection("review_seeking", DAY - 1), state)
    assert capped == Judgement(Verdict.SUPPRESS, "frequency_cap")
    # Exactly 24 hours after the first, it no longer counts: the period has slid past it.
    assert policy.judge(detection("review_seeking", DAY), state) == PUBLISHED
    assert policy.judge(detection("frustration", DAY + 1), state).reason == "frequency_cap"
    assert sorted(state.sent) == [at("1h"), at(DAY)]  # older sends are forgotten


def test_the_cap_slides_through_the_stream() -> None:
    stream = Stream(configured(max_per_day=2))
    stream.send(fire("price_comparison", "0s"), fire("local_intent", "1h"), fire("review_seeking", "2h"))
    stream.send(*ticks("23h"), fire("frustration", "23h"))
    stream.send(*ticks("24h30m"), fire("review_seeking", "24h30m"))
    assert stream.moments() == ["price_comparison", "local_intent", "review_seeking"]
    assert stream.suppressed == {("review_seeking", "frequency_cap"): 1, ("frustration", "frequency_cap"): 1}


def test_a_late_detection_cannot_slip_past_the_cap() -> None:
    """Judged after a later trigger, a detection still counts it, and does not forget it."""
    stream = Stream(configured(max_per_day=2))
    stream.send(fire("price_comparison", "5m"), fire("review_seeking", "4m"))  # the second is earlier
    stream.send(fire("local_intent", "6m"), fire("frustration", "7m"))
    assert stream.moments() == ["price_comparison", "review_seeking"]
    assert stream.suppressed == {("local_intent", "frequency_cap"): 1, ("frustration", "frequency_cap"): 1}
    assert sorted(stream.states["c1"].sent) == [at("4m"), at("5m")]


def test_a_late_detection_is_capped_by_every_day_it_falls_in() -> None:
    policy = Policy(configured(max_per_day=2).policy)
    now = at("1d")
    # A later send one minute ahead, and one 23h58m back: some 24 hours would hold three.
    state = CustomerState(customer_id="c1", sent=[now - 23 * HOUR - 58 * MINUTE, now + MINUTE])
    assert policy.judge(detection("local_intent", "1d"), state).reason == "frequency_cap"
    # 23h59m back: no 24 hours holds both it and the later send, nor three triggers.
    state = CustomerState(customer_id="c1", sent=[now - 23 * HOUR - 59 * MINUTE, now + MINUTE])
    assert policy.judge(detection("local_intent", "1d"), state) == PUBLISHED


def test_suppressed_and_dropped_detections_do_not_count() -> None:
    catalogue = configured(consent="required", max_per_day=1, quiet_hours={"enabled": True, "action": "drop"})
    stream = Stream(catalogue)
    stream.send(fire("price_comparison", "1m"), granted("2m"), fire("local_intent", "11h"))  # 21:00: dropped
    stream.send(fire("review_seeking", "23h"))  # 09:00 the next day
    assert stream.moments() == ["review_seeking"]
    assert stream.suppressed == {("price_comparison", "no_consent"): 1, ("local_intent", "quiet_hours"): 1}


def test_no_cap_when_max_per_day_is_zero() -> None:
    stream = Stream(configured(max_per_day=0))
    stream.send(*(fire(m, f"{i}m") for i, m in enumerate(FIRES)))
    assert stream.moments() == list(FIRES)


# ============================================================================================
# Quiet hours
# ============================================================================================


@pytest.mark.parametrize(
    ("local", "release"),
    [
        ("2026-11-25T20:59:59.999+00:00", None),
        ("2026-11-25T21:00:00+00:00", "2026-11-26T08:00:00+00:00"),
        ("2026-11-25T23:59:59+00:00", "2026-11-26T08:00:00+00:00"),
        ("2026-11-26T00:00:00+00:00", "2026-11-26T08:00:00+00:00"),  # past midnight: the same night
        ("2026-11-26T07:59:59.999+00:00", "2026-11-26T08:00:00+00:00"),
        ("2026-11-26T08:00:00+00:00", None),
        ("2026-11-26T12:00:00+00:00", None),
    ],
)
def test_a_quiet_period_spanning_midnight(local: str, release: str | None) -> None:
    policy = Policy(QUIET.policy)
    state = CustomerState(customer_id="c1")
    verdict = policy.judge(detection("local_intent", off(local)), state)
    if release is None:
        assert verdict == PUBLISHED
        assert state.deferred == []
    else:
        assert verdict.verdict is Verdict.DEFER
        assert [d.release_at for d in state.deferred] == [utc(release)]


@pytest.mark.parametrize(
    ("local", "release"),
    [
        ("2026-11-25T11:59:00+00:00", None),
        ("2026-11-25T12:00:00+00:00", "2026-11-25T14:00:00+00:00"),
        ("2026-11-25T13:30:00+00:00", "2026-11-25T14:00:00+00:00"),
        ("2026-11-25T14:00:00+00:00", None),
        ("2026-11-25T23:30:00+00:00", None),
    ],
)
def test_a_quiet_period_within_one_day(local: str, release: str | None) -> None:
    policy = Policy(configured(quiet_hours={"enabled": True, "start": "12:00", "end": "14:00"}).policy)
    state = CustomerState(customer_id="c1")
    verdict = policy.judge(detection("local_intent", off(local)), state)
    assert [d.release_at for d in state.deferred] == ([] if release is None else [utc(release)])
    assert verdict.verdict is (Verdict.PUBLISH if release is None else Verdict.DEFER)


def test_quiet_hours_follow_the_customers_own_time_zone() -> None:
    policy = Policy(QUIET.policy)
    # 16:00 UTC: 21:30 in Kolkata, quiet there until 08:00 IST (02:30 UTC) — not in UTC.
    kolkata = CustomerState(customer_id="c1", timezone="Asia/Kolkata")
    assert policy.judge(detection("local_intent", "6h"), kolkata).verdict is Verdict.DEFER
    assert kolkata.deferred[0].release_at == utc("2026-11-26T08:00:00+05:30")
    assert policy.judge(detection("local_intent", "6h"), CustomerState(customer_id="c2")) == PUBLISHED


def test_without_a_time_zone_the_configured_default_applies() -> None:
    new_york = Policy(configured(quiet_hours={"enabled": True}, default_timezone="America/New_York").policy)
    state = CustomerState(customer_id="c1")
    # 02:00 UTC on 26 November is 21:00 in New York: quiet until 08:00 EST, 13:00 UTC.
    assert (
        new_york.judge(detection("local_intent", off("2026-11-26T02:00:00Z")), state).verdict is Verdict.DEFER
    )
    assert state.deferred[0].release_at == utc("2026-11-26T13:00:00Z")
    # ...and an unknown zone on an event falls back to the default too.
    odd = CustomerState(customer_id="c2", timezone="Mars/Olympus_Mons")
    assert (
        new_york.judge(detection("local_intent", off("2026-11-26T02:00:00Z"), "c2"), odd).verdict
        is Verdict.DEFER
    )


@pytest.mark.parametrize("zone", ["Europe", "Etc", "../../etc/passwd", "", "Europe/Paris/x"])
def test_a_stored_zone_that_is_no_zone_never_breaks_a_judgement(zone: str) -> None:
    # States stored before zones were checked on decoding may hold anything: "Europe" made
    # ZoneInfo raise IsADirectoryError, an OSError that the worker retried for ever.
    new_york = Policy(configured(quiet_hours={"enabled": True}, default_timezone="America/New_York").policy)
    state = CustomerState(customer_id="c1", timezone=zone)
    verdict = new_york.judge(detection("local_intent", off("2026-11-26T02:00:00Z")), state)
    assert verdict.verdict is Verdict.DEFER  # as in New York, the default
    assert state.deferred[0].release_at == utc("2026-11-26T13:00:00Z")


def test_an_unknown_default_time_zone_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="default_timezone"):
        configured(default_timezone="Europe/Atlantis")


def test_the_latest_time_zone_of_a_travelling_customer_applies() -> None:
    """21:30 UTC is 22:30 in Paris (quiet) and 16:30 in New York (not)."""
    stream = Stream(QUIET)
    evening = off("2026-11-25T21:30:00Z")
    stream.send(ev("page_view", evening - 10 * MINUTE, timezone="Europe/Paris"))
    stream.send(fire("local_intent", evening, timezone="America/New_York"))
    assert stream.moments() == ["local_intent"]
    stream.send(ev("page_view", evening, customer="c2", timezone="America/New_York"))
    # An event without a time zone keeps the last known one; the moment completes in Paris.
    stream.send(ev("page_view", evening + MINUTE, customer="c2", timezone="Europe/Paris"))
    stream.send(fire("local_intent", evening + 2 * MINUTE, customer="c2"))
    assert stream.deferred == 1
    assert stream.states["c2"].deferred[0].release_at == utc("2026-11-26T08:00:00+01:00")


@pytest.mark.parametrize(
    ("zone", "detected", "release"),
    [
        # Europe/Paris falls back at 03:00 CEST on 25 October 2026: an 11-hour night.
        ("Europe/Paris", "2026-10-24T22:00:00+02:00", "2026-10-25T08:00:00+01:00"),
        ("Europe/Paris", "2026-10-25T02:30:00+01:00", "2026-10-25T08:00:00+01:00"),  # the repeated hour
        # ...and springs forward at 02:00 CET on 29 March 2026: a 9-hour night.
        ("Europe/Paris", "2026-03-28T23:00:00+01:00", "2026-03-29T08:00:00+02:00"),
        # America/New_York falls back at 02:00 EDT on 1 November 2026.
        ("America/New_York", "2026-10-31T23:00:00-04:00", "2026-11-01T08:00:00-05:00"),
        ("America/New_York", "2026-11-01T21:00:00-05:00", "2026-11-02T08:00:00-05:00"),
    ],
)
def test_quiet_hours_end_at_local_08_00_on_a_daylight_saving_night(
    zone: str, detected: str, release: str
) -> None:
    state = CustomerState(customer_id="c1", timezone=zone)
    assert (
        Policy(QUIET.policy).judge(detection("local_intent", off(detected)), state).verdict is Verdict.DEFER
    )
    assert [d.release_at for d in state.deferred] == [utc(release)]


# The next morning, UTC: 07:00 is still quiet until 08:00; ``AFTER_RELEASE`` ticks the
# watermark (2 minutes behind) to 08:00 exactly.
EARLY = off("2026-11-26T07:00:00Z")
RELEASE = utc("2026-11-26T08:00:00Z")
AFTER_RELEASE = off("2026-11-26T08:02:00Z")


def test_a_deferral_across_the_new_york_change_is_released_at_13_00_utc() -> None:
    """A cart abandoned at 23:30 EDT waits for 08:00 EST, 13:00 UTC, not 12:00 UTC."""
    stream = Stream(QUIET)
    cart = off("2026-10-31T23:00:00-04:00")
    stream.send(ev("add_to_cart", cart, product_id="p1", price=20.0, timezone="America/New_York"))
    stream.send(*ticks(cart + 32 * MINUTE))  # the cart's 30 minutes pass: 23:30 EDT
    assert stream.deferred == 1
    stream.send(*ticks(off("2026-11-01T13:02:00Z") - 1))  # watermark 12:59:59.999 UTC
    assert stream.published == []
    stream.send(*ticks(off("2026-11-01T13:02:00Z")))  # watermark 13:00 UTC = 08:00 EST
    assert stream.moments() == ["cart_abandonment"]


def test_drop_instead_of_defer() -> None:
    stream = Stream(configured(quiet_hours={"enabled": True, "action": "drop"}, max_per_day=5))
    stream.send(fire("local_intent", EARLY), fire("price_comparison", EARLY + MINUTE))
    stream.flush()
    assert stream.published == []
    assert stream.deferred == 0
    assert stream.suppressed == {("local_intent", "quiet_hours"): 1, ("price_comparison", "quiet_hours"): 1}
    assert stream.states["c1"].sent == []
    assert stream.states["c1"].deferred == []


def test_a_deferred_trigger_is_released_with_the_same_id_and_bytes_at_the_end_of_the_night() -> None:
    """A cart abandoned at 22:30 goes out at 08:00, exactly as it would have at 22:30."""
    night = [ev("add_to_cart", "12h", product_id="p1", price=20.0, session_id="s1", channel="web")]
    night += [ev("checkout_step", "12h1m", step="shipping", session_id="s1", channel="web")]
    night += ticks("12h33m")  # the watermark passes the cart's deadline, 22:31
    daytime = Stream(configured())
    daytime.send(*night)
    (expected,) = daytime.published

    stream = Stream(QUIET)
    outcome = stream.send(*night)
    assert outcome.deferred == 1
    assert outcome.detections == []
    # The customer is woken at the end of the night (or earlier, for whatever else is pending).
    assert stream.processor.policy.next_release(stream.states["c1"]) == RELEASE
    assert outcome.deadlines["c1"] == stream.processor.deadlines["c1"] <= RELEASE
    assert stream.send(*ticks(AFTER_RELEASE - 1)).detections == []  # watermark 07:59:59.999
    released = stream.send(*ticks(AFTER_RELEASE)).detections
    assert trigger_bytes(released) == trigger_bytes([expected])  # same id, same times, same bytes
    assert stream.states["c1"].deferred == []
    assert "c1" not in stream.processor.deadlines


def test_the_customers_own_next_event_releases_their_deferred_trigger() -> None:
    """On a partition too quiet to move the watermark, the customer's next event does."""
    stream = Stream(QUIET)
    stream.send(fire("local_intent", EARLY))
    outcome = stream.send(ev("page_view", off("2026-11-26T08:30:00Z")))
    assert [d.moment for d in outcome.detections] == ["local_intent"]


def test_end_of_input_releases_what_is_still_deferred() -> None:
    stream = Stream(QUIET)
    stream.send(fire("local_intent", EARLY))
    assert stream.published == []
    stream.flush()
    assert stream.moments() == ["local_intent"]


def test_a_deferred_trigger_that_expires_first_is_dropped_as_expired() -> None:
    stream = Stream(configured(quiet_hours={"enabled": True}, max_per_day=5))
    # At 07:00 UTC, all wait until 08:00: frustration lives 15 minutes, price comparison 30,
    # a store search 2 hours.
    stream.send(fire("frustration", EARLY), fire("price_comparison", EARLY), fire("local_intent", EARLY))
    assert stream.deferred == 3
    stream.send(*ticks(AFTER_RELEASE))
    assert stream.moments() == ["local_intent"]
    assert stream.suppressed == {("frustration", "expired"): 1, ("price_comparison", "expired"): 1}


def test_a_trigger_expiring_exactly_at_release_is_expired() -> None:
    policy = Policy(QUIET.policy)
    state = CustomerState(customer_id="c1")
    found = detection("local_intent", off("2026-11-26T06:00:00Z"))  # lives 2 hours: until 08:00
    assert policy.judge(found, state).verdict is Verdict.DEFER
    assert found.expires_at == state.deferred[0].release_at
    assert policy.release(state, RELEASE) == [(found, Judgement(Verdict.SUPPRESS, "expired"))]
    later = detection("local_intent", off("2026-11-26T06:00:01Z"))
    policy.judge(later, state)
    assert policy.release(state, RELEASE - 1) == []
    assert policy.release(state, RELEASE) == [(later, PUBLISHED)]


@pytest.mark.parametrize(
    ("meanwhile", "reason"),
    [
        (lambda: revoked(EARLY + 30 * MINUTE), "no_consent"),
        (lambda: ev("suppression", EARLY + 30 * MINUTE, action="add"), "suppressed"),
        (lambda: ev("page_view", EARLY + 30 * MINUTE), None),  # nothing refused: released
    ],
)
def test_a_deferred_trigger_is_dropped_at_release_if_contact_was_refused_meanwhile(
    meanwhile: Any, reason: str | None
) -> None:
    stream = Stream(configured(consent="required", quiet_hours={"enabled": True}))
    stream.send(granted(EARLY - HOUR), fire("local_intent", EARLY))  # 07:00 UTC: deferred
    stream.send(meanwhile())  # 07:30 UTC
    stream.send(*ticks(AFTER_RELEASE))
    assert stream.moments() == ([] if reason else ["local_intent"])
    assert stream.suppressed == ({("local_intent", reason): 1} if reason else {})
    assert stream.states["c1"].deferred == []


def test_a_deferred_trigger_counts_towards_the_cap() -> None:
    stream = Stream(configured(quiet_hours={"enabled": True}, max_per_day=1))
    stream.send(fire("local_intent", "12h"), fire("price_comparison", "12h5m"))
    assert stream.deferred == 1
    assert stream.suppressed == {("price_comparison", "frequency_cap"): 1}


def test_deferrals_survive_a_restart() -> None:
    """The state carries the trigger; the checkpointed deadlines wake the new processor."""
    store = MemoryStateStore()
    catalogue = QUIET
    night = [fire("local_intent", EARLY, session_id="s1")]
    morning = ticks(AFTER_RELEASE)

    async def first_run() -> None:
        pipeline = Pipeline(Detector(catalogue), Policy(catalogue.policy), store)
        batch = await pipeline.run({"p0": night})
        assert batch.detections == []
        await pipeline.commit(batch)

    async def after_restart() -> tuple[list[Detection], dict[str, int]]:
        # A new process: nothing in memory.
        pipeline = Pipeline(Detector(catalogue), Policy(catalogue.policy), store)
        await pipeline.open(["p0"])
        deadlines = dict(pipeline.processor("p0").deadlines)
        batch = await pipeline.run({"p0": morning})
        await pipeline.commit(batch)
        return batch.detections, deadlines

    asyncio.run(first_run())
    (stored,) = asyncio.run(store.load({"p0": {"c1"}})).values()
    assert [d.release_at for d in stored.state.deferred] == [RELEASE]
    released, deadlines = asyncio.run(after_restart())
    assert deadlines.keys() == {"c1"}
    assert deadlines["c1"] <= RELEASE
    expected = Stream(configured())
    expected.send(*night)
    assert trigger_bytes(released) == trigger_bytes(expected.published)
    assert asyncio.run(store.deadlines("p0")) == {}

    # Without the checkpointed deadline nothing wakes the customer: the wake-up comes from it.
    orphan = Stream(QUIET, deadlines={})
    orphan.states["c1"] = stored.state
    orphan.send(*morning)
    assert orphan.published == []


# ============================================================================================
# Hashed customer ids
# ============================================================================================


def test_triggers_name_the_customer_by_a_salted_hash_when_configured() -> None:
    found = detection("local_intent", 0, "cust-secret-42")
    policy = Policy(configured(hash_customer_ids=True, customer_id_salt="pepper").policy)
    key, value = TriggerWriter("urn:test", policy.subject).record(found)
    event = orjson.loads(value)
    digest = sha256_hex("pepper" + "cust-secret-42")
    assert key == digest.encode()
    assert event["subject"] == event["data"]["customer_id"] == digest
    assert b"cust-secret-42" not in value
    assert event["id"] == trigger_id("local_intent", "cust-secret-42", found.anchor)  # ids do not change
    plain_key, plain = TriggerWriter("urn:test", Policy(configured().policy).subject).record(found)
    assert plain_key == b"cust-secret-42"
    assert orjson.loads(plain)["id"] == event["id"]


def test_a_replay_with_hashed_ids_never_writes_the_id(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [
        {
            "event_id": "x1",
            "customer_id": "cust-secret-42",
            "event_type": "store_locator_view",
            "occurred_at": "2026-11-25T10:00:00Z",
        },
        {
            "event_id": "x2",
            "customer_id": "cust-secret-42",
            "event_type": "compare_view",
            "occurred_at": "2026-11-25T10:01:00Z",
        },
    ]
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    holdout = {"share": {**NOBODY_HELD_OUT, "price_comparison": 1.0}}
    catalogue = configured(hash_customer_ids=True, customer_id_salt="pepper", holdout=holdout)
    out, held_out = io.BytesIO(), io.BytesIO()
    summary = asyncio.run(
        replay([path], catalogue, out=out, held_out=held_out, on_problem=print, show_progress=False)
    )
    assert dict(summary.triggers) == {"local_intent": 1}
    assert dict(summary.held_out) == {"price_comparison": 1}
    digest = sha256_hex("pepper" + "cust-secret-42")
    for written in (out.getvalue(), held_out.getvalue()):
        assert b"cust-secret-42" not in written
        assert orjson.loads(written)["subject"] == digest


# ============================================================================================
# Forget
# ============================================================================================


def _forget(offset: str | int, customer: str = "c1") -> ForgetRequest:
    request = ev("forget", offset, customer=customer, request_id="DSR-1")
    assert isinstance(request, ForgetRequest)
    return request


def test_forget_erases_the_state_and_deadlines_in_the_same_batch() -> None:
    catalogue = configured(consent="required", quiet_hours={"enabled": True})
    morning = off("2026-11-26T09:00:00Z")
    history = [
        granted(EARLY - HOUR),
        ev("add_to_cart", EARLY, product_id="p1", price=20.0),  # abandoned at 07:30: deferred
        fire("local_intent", EARLY + 10 * MINUTE),  # 07:10: deferred until 08:00
    ]
    kept = Stream(catalogue)  # the same history, not forgotten: both go out in the morning
    kept.send(*history)
    kept.send(*ticks(morning))
    assert sorted(kept.moments()) == ["cart_abandonment", "local_intent"]

    stream = Stream(catalogue)
    request = _forget(EARLY + 20 * MINUTE)
    outcome = stream.send(*history, request)
    assert outcome.deferred == 1
    assert outcome.statuses[-1] is Status.FORGOTTEN
    assert outcome.forgotten == [request]
    assert outcome.deadlines == {"c1": None}
    assert "c1" not in outcome.touched
    assert stream.states["c1"] == CustomerState(customer_id="c1")
    assert "c1" not in stream.processor.deadlines
    # Nothing of it comes back: no cart abandoned, nothing released, even at the end of input.
    stream.send(*ticks(morning))
    stream.flush()
    assert stream.published == []
    # A later event starts afresh: the consent went too.
    stream.send(fire("price_comparison", morning))
    assert stream.suppressed == {("price_comparison", "no_consent"): 1}
    assert len(stream.states["c1"].entries) == 1


def test_forget_is_never_late() -> None:
    stream = Stream(configured())
    stream.send(fire("local_intent", "10m"), *ticks("10m"))
    assert stream.send(_forget("1m")).statuses == [Status.FORGOTTEN]
    assert stream.states["c1"] == CustomerState(customer_id="c1")


def test_forget_through_the_pipeline_leaves_nothing_in_the_store() -> None:
    store = MemoryStateStore()
    catalogue = configured(quiet_hours={"enabled": True})
    request = _forget("11h50m")

    async def run() -> tuple[list[ForgetRequest], dict[str, Any], dict[str, int]]:
        pipeline = Pipeline(Detector(catalogue), Policy(catalogue.policy), store)
        batch = await pipeline.run(
            {
                "p0": [
                    granted("11h"),
                    ev("add_to_cart", "11h30m", product_id="p1"),
                    fire("local_intent", "11h40m"),
                ]
            }
        )
        await pipeline.commit(batch)
        assert (await store.load({"p0": {"c1"}})).keys() == {"c1"}
        assert (await store.deadlines("p0")).keys() == {"c1"}
        batch = await pipeline.run({"p0": [request, granted("11h55m", customer="c2")]})
        await pipeline.commit(batch)
        return batch.forgotten, await store.load({"p0": {"c1"}}), (await store.deadlines("p0"))

    forgotten, left, deadlines = asyncio.run(run())
    assert forgotten == [request]
    # Nothing but a tombstone: a blank state one version up, which a stale writer cannot pass.
    assert left["c1"].state == CustomerState(customer_id="c1")
    assert left["c1"].version == 2
    assert deadlines == {}
    # What the worker then confirms names the request and the customer.
    event = confirmation(request, source="urn:test", subject="c1")
    assert event["data"]["request_event_id"] == request.event_id
    assert event["data"]["request_id"] == "DSR-1"


def test_a_customer_back_in_the_same_batch_is_saved_as_new() -> None:
    store = MemoryStateStore()

    async def run() -> dict[str, Any]:
        pipeline = Pipeline(Detector(catalogue := configured()), Policy(catalogue.policy), store)
        batch = await pipeline.run({"p0": [revoked("1m"), fire("local_intent", "2m")]})
        await pipeline.commit(batch)
        batch = await pipeline.run({"p0": [_forget("3m"), fire("price_comparison", "4m")]})
        assert [d.moment for d in batch.detections] == ["price_comparison"]  # the revocation is gone
        await pipeline.commit(batch)
        return await store.load({"p0": {"c1"}})

    (stored,) = asyncio.run(run()).values()
    assert stored.version == 3  # saved at 1, erased at 2 (a tombstone), saved again over it at 3
    assert stored.state.consent == {}
    assert [e.ts for e in stored.state.entries] == [at("4m")]


# ============================================================================================
# The README documents the policy as it is
# ============================================================================================

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _policy_section() -> str:
    start = README.index("## Policy and privacy")
    return README[start : README.index("\n## ", start + 1)]


def test_the_readme_documents_every_policy_setting_with_its_default() -> None:
    shipped = tomllib.loads(default_config_text())["policy"]
    documented: dict[str, str] = {}
    for names, defaults in re.findall(
        r"^\| (`[a-z_.<>]+`(?:, `[a-z_.<>]+`)*) \| (.*?) \|", _policy_section(), re.M
    ):
        for name, default in zip(
            re.findall(r"`([^`]+)`", names), re.findall(r"`([^`]+)`", defaults), strict=True
        ):
            documented[name] = default
    settings = {name for name in PolicyConfig.__struct_fields__ if name not in ("quiet_hours", "holdout")}
    settings |= {f"quiet_hours.{name}" for name in QuietHours.__struct_fields__}
    settings |= {f"holdout.{name}" for name in Holdout.__struct_fields__ if name != "share"}
    assert set(documented) == settings | {"holdout.share.<moment>"}
    for name, default in documented.items():
        *tables, key = name.split(".")
        value: Any = shipped
        for table in tables:
            value = value[table]
        if key == "<moment>":
            assert set(value.values()) == {tomllib.loads(f"x = {default}")["x"]}
        else:
            assert value[key] == tomllib.loads(f"x = {default}")["x"], name


def test_the_readme_policy_example_is_a_valid_override(tmp_path: Path) -> None:
    (block,) = re.findall(r"```toml\n# policy.toml\n(.*?)```", README, re.S)
    path = tmp_path / "policy.toml"
    path.write_text(block)
    policy = load_catalogue(path).policy
    assert policy.consent == "implied"
    assert policy.max_per_day == 2
    assert policy.quiet_hours.enabled  # tables merge key by key: kept from the defaults
    assert (policy.quiet_hours.start, policy.quiet_hours.end, policy.quiet_hours.action) == (
        "22:00",
        "07:30",
        "drop",
    )
    assert policy.holdout.share["cart_abandonment"] == 0.2
    assert policy.holdout.share["price_comparison"] == 0.1
    assert Policy(policy).subject("c1") == sha256_hex("shared-with-the-crm" + "c1")
    listed = Policy(policy)
    assert (
        listed.judge(detection("local_intent", "1m", "cust-000042"), CustomerState(customer_id="cust-000042"))
        == SUPPRESSED
    )
    assert (
        listed.judge(detection("local_intent", "1m", "test"), CustomerState(customer_id="test")) == SUPPRESSED
    )
