"""Engagement policy: whether, and when, a detected micro-moment may reach the customer.

Applied to every detection after the detector and before publishing, in this
order, each rule with the reason it suppresses under:

1. the do-not-contact list (``suppressed``): configured ids or hashed ids, or
   ``suppression`` events;
2. consent for the configured purpose (``no_consent``), unless consent is implied
   (then only an explicit revocation stops it);
3. the holdout split (``held_out``): a fixed share of customers per moment, chosen
   by a salted hash of the customer id, is recorded but not contacted, to measure lift;
4. the frequency cap across moments (``frequency_cap``) over a rolling day;
5. quiet hours in the customer's own time zone: the trigger is dropped
   (``quiet_hours``) or deferred to the end of the quiet period, keeping its id;
   when released it is checked again (consent, do-not-contact) and dropped if it
   has expired by then (``expired``).

Pure and deterministic: every time is event time, and the state it keeps
(triggers sent, deferred triggers) lives in the customer's state.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Final, Literal
from zoneinfo import ZoneInfo

import msgspec

from app.detection import Detection
from app.durations import Duration
from app.window import CustomerState, Deferred, suppressed

Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d\Z")]
DAY: Final = 86_400_000


class QuietHours(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool
    start: ClockTime
    end: ClockTime
    action: Literal["defer", "drop"]


class Holdout(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Changing the salt reshuffles who is held out: keep it for the life of an experiment.
    salt: str
    # moment -> share of customers held out of it
    share: dict[str, Share]


class PolicyConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    consent: Literal["required", "implied"]
    consent_purpose: str
    consent_retention: Duration
    max_per_day: Annotated[int, msgspec.Meta(ge=0)]
    suppressed_customers: list[str]
    suppressed_hashes: list[str]
    default_timezone: str
    quiet_hours: QuietHours
    holdout: Holdout
    hash_customer_ids: bool
    customer_id_salt: str


class Verdict(StrEnum):
    PUBLISH = "publish"
    HOLD_OUT = "held_out"
    DEFER = "deferred"
    SUPPRESS = "suppressed"


class Judgement(msgspec.Struct, frozen=True, gc=False):
    verdict: Verdict
    # Why it was suppressed (or dropped at release); None otherwise.
    reason: str | None = None


PUBLISH: Final = Judgement(Verdict.PUBLISH)
HOLD_OUT: Final = Judgement(Verdict.HOLD_OUT)
DEFER: Final = Judgement(Verdict.DEFER)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._suppressed = frozenset(config.suppressed_customers)
        self._suppressed_hashes = frozenset(h.lower() for h in config.suppressed_hashes)
        quiet = config.quiet_hours
        self._quiet = (_clock(quiet.start), _clock(quiet.end)) if quiet.enabled else None
        default_zone = _zone(config.default_timezone)
        if default_zone is None:
            raise ValueError(f"policy.default_timezone: unknown time zone {config.default_timezone!r}")
        self._default_zone = default_zone

    def judge(self, detection: Detection, state: CustomerState) -> Judgement:
        """The verdict on a fresh detection; records what the caps and quiet hours need."""
        refused = self._refusal(state)
        if refused is not None:
            return Judgement(Verdict.SUPPRESS, refused)
        if self.held_out(detection.moment, state.customer_id):
            return HOLD_OUT
        cfg = self.config
        now = detection.ts
        # Sends after ``now`` stay: a late event or a passed cart deadline can be judged
        # after triggers of later event time.
        sent = [t for t in state.sent if now - DAY < t]
        if cfg.max_per_day and _over_cap(sent, now, cfg.max_per_day):
            state.sent = sent
            return Judgement(Verdict.SUPPRESS, "frequency_cap")
        release_at = self._quiet_until(now, state.timezone)
        if release_at is not None and self.config.quiet_hours.action == "drop":
            return Judgement(Verdict.SUPPRESS, "quiet_hours")
        state.sent = [*sent, now]
        if release_at is None:
            return PUBLISH
        state.deferred.append(Deferred(release_at, detection))
        return DEFER

    def release(self, state: CustomerState, now: int) -> list[tuple[Detection, Judgement]]:
        """Deferred triggers whose quiet period has ended by ``now``, and what becomes of them."""
        due = [d for d in state.deferred if d.release_at <= now]
        if not due:
            return []
        state.deferred = [d for d in state.deferred if d.release_at > now]
        refused = self._refusal(state)
        out = []
        for deferred in due:
            detection = deferred.detection
            if refused is not None:
                out.append((detection, Judgement(Verdict.SUPPRESS, refused)))
            elif detection.expires_at <= deferred.release_at:
                out.append((detection, Judgement(Verdict.SUPPRESS, "expired")))
            else:
                out.append((detection, PUBLISH))
        return out

    def next_release(self, state: CustomerState) -> int | None:
        return min((d.release_at for d in state.deferred), default=None)

    def held_out(self, moment: str, customer: str) -> bool:
        """Whether ``customer`` is in the holdout group of ``moment``: stable everywhere, always."""
        share = self.config.holdout.share.get(moment, 0.0)
        if share <= 0.0:
            return False
        digest = hashlib.sha256(f"{self.config.holdout.salt}\x1f{moment}\x1f{customer}".encode()).digest()
        return int.from_bytes(digest[:8]) / 2**64 < share

    def retention_end(self, state: CustomerState) -> int | None:
        """Event time until which the customer's consent and suppression facts are kept."""
        latest = max(
            (t for t in (state.suppressed_since, state.unsuppressed_at) if t is not None), default=None
        )
        for consent in state.consent.values():
            if latest is None or consent.ts > latest:
                latest = consent.ts
        return None if latest is None else latest + self.config.consent_retention

    def subject(self, customer: str) -> str:
        """How triggers name the customer: the id, or its salted SHA-256 when configured."""
        if not self.config.hash_customer_ids:
            return customer
        return sha256_hex(self.config.customer_id_salt + customer)

    def _refusal(self, state: CustomerState) -> str | None:
        customer = state.customer_id
        if (
            suppressed(state)
            or customer in self._suppressed
            or (self._suppressed_hashes and sha256_hex(customer) in self._suppressed_hashes)
        ):
            return "suppressed"
        consent = state.consent.get(self.config.consent_purpose)
        if self.config.consent == "required":
            return None if consent is not None and consent.granted else "no_consent"
        return None if consent is None or consent.granted else "no_consent"

    def _quiet_until(self, now: int, timezone: str | None) -> int | None:
        """End of the quiet period ``now`` falls in (event time, ms), or None outside one."""
        if self._quiet is None:
            return None
        start, end = self._quiet
        zone = (_zone(timezone) if timezone else None) or self._default_zone
        local = datetime.fromtimestamp(now / 1000, zone)
        at = local.time()
        spans_midnight = start > end
        if spans_midnight:
            if at < end:
                release_day = local.date()
            elif at >= start:
                release_day = local.date() + timedelta(days=1)
            else:
                return None
        elif start <= at < end:
            release_day = local.date()
        else:
            return None
        # Wall-clock end of the period in the customer's zone (daylight saving included).
        release = datetime.combine(release_day, end, tzinfo=zone)
        return int(release.timestamp() * 1000)


def _over_cap(sent: list[int], now: int, cap: int) -> bool:
    """Whether one more trigger at ``now`` would put more than ``cap`` in some 24 hours."""
    # The periods (end - DAY, end] that hold ``now`` and end at ``now`` or at a later send.
    ends = [now, *(t for t in sent if now < t < now + DAY)]
    return any(sum(end - DAY < t <= end for t in sent) >= cap for end in ends)


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo | None:
    """The zone named ``name``, or None for anything that is not one.

    Events are checked against the zone database as they are decoded, but a state
    stored before that (or under another database) may name anything: whatever
    ZoneInfo raises for it (``IsADirectoryError`` for "Europe") means "no zone".
    """
    try:
        return ZoneInfo(name)
    except Exception:
        return None
