"""The :class:`~app.worker.alignment.Aligner` on its own (fake clock), and the agent's flow control."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from aiokafka import ConsumerRecord
from faust.types import TP
from helpers import T0
from hypothesis import given, settings
from hypothesis import strategies as st

from app.clock import QUORUM
from app.config import load_catalogue
from app.detector import Detector
from app.pipeline import Pipeline
from app.policy import Policy
from app.settings import load_settings
from app.state.memory import MemoryStateStore
from app.triggers import format_time
from app.worker.agent import DetectorAgent
from app.worker.alignment import LOOKAHEAD, Aligner
from app.worker.faust_batch import BatchApp, BatchConsumer


class R(NamedTuple):
    topic: str
    timestamp: int
    offset: int


def recs(topic: str, *timestamps: int, first_offset: int = 0) -> list[R]:
    return [R(topic, ts, first_offset + i) for i, ts in enumerate(timestamps)]


def stamps(records: list[R]) -> list[tuple[str, int]]:
    return [(r.topic, r.timestamp) for r in records]


def caught_up(*topics: str, behind: tuple[str, ...] = ()) -> Callable[[str], bool | None]:
    """Only ``topics`` are caught up with their log end; ``behind`` are known to have more; others unknown."""
    return lambda topic: True if topic in topics else (False if topic in behind else None)


ALL = caught_up("a", "b", "c")
NONE = caught_up()


class V(NamedTuple):
    """A record with its customer: the aligner's voter."""

    topic: str
    timestamp: int
    offset: int
    customer: str


def place(buffer: list[V], quorum: int = QUORUM) -> tuple[int, bool]:
    """A topic's place, as the aligner's docstring defines it, with no shortcut."""
    head, needed = buffer[0], quorum - 1
    others: dict[str, int] = {}
    earliest, seen = head.timestamp, 1
    for record in buffer[1:LOOKAHEAD]:
        seen += 1
        earliest = min(earliest, record.timestamp)
        if record.customer != head.customer and record.customer not in others:
            others[record.customer] = record.timestamp
            if len(others) == needed:
                break
    ahead = len(others) == needed and all(t < head.timestamp for t in others.values())
    return (earliest if ahead else head.timestamp), (len(others) == needed or seen >= LOOKAHEAD)


def release_one_at_a_time(
    aligner: Aligner[V], caught_up: Callable[[str], bool | None], forced: bool
) -> list[V]:
    """What release gives, found the plain way: every topic's place worked out before each record."""
    out: list[V] = []
    buffers = aligner._buffers
    while True:
        heads = []
        for i, (topic, buffer) in enumerate(buffers.items()):
            if buffer:
                at, placed = place(list(buffer))
                if not (placed or forced or caught_up(topic) is True):
                    return out
                heads.append((at, i, topic))
            elif not forced and caught_up(topic) is not True:
                return out
        if not heads:
            return out
        topic = min(heads)[2]
        out.append(buffers[topic].popleft())


@settings(max_examples=300, deadline=None)
@given(
    fetches=st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["u", "v", "w", "x", "y"])), max_size=12),
        ),
        max_size=8,
    ),
    states=st.lists(st.sampled_from([True, False, None]), min_size=3, max_size=3),
    max_buffered=st.integers(1, 40),
)
def test_release_takes_runs_of_a_topic_exactly_as_one_record_at_a_time(
    fetches: list[tuple[str, list[tuple[int, str]]]], states: list[bool | None], max_buffered: int
) -> None:
    known = dict(zip("abc", states, strict=True))
    fast: Aligner[V] = Aligner(["a", "b", "c"], max_buffered=max_buffered, voter=attrgetter("customer"))
    plain: Aligner[V] = Aligner(["a", "b", "c"], max_buffered=max_buffered, voter=attrgetter("customer"))
    offsets = dict.fromkeys("abc", 0)
    for topic, records in fetches:
        batch = [V(topic, ts, offsets[topic] + i, who) for i, (ts, who) in enumerate(records)]
        offsets[topic] += len(batch)
        fast.add(topic, batch, now=0.0)
        plain.add(topic, batch, now=0.0)
        forced = len(plain) > max_buffered
        assert fast.release(known.get, now=0.0) == release_one_at_a_time(plain, known.get, forced)


def test_releases_in_timestamp_order_across_topics() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b", "c"])
    aligner.add("a", recs("a", 10, 40, 70), now=0.0)
    aligner.add("b", recs("b", 20, 50), now=0.0)
    aligner.add("c", recs("c", 5, 60), now=0.0)
    released = aligner.release(ALL, now=0.0)
    assert stamps(released) == [("c", 5), ("a", 10), ("b", 20), ("a", 40), ("b", 50), ("c", 60), ("a", 70)]
    assert len(aligner) == 0


def test_records_of_one_topic_keep_their_order() -> None:
    # Timestamps within a topic need not be sorted: the aligner merges heads, it does not sort.
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"])
    aligner.add("a", recs("a", 30, 10), now=0.0)
    aligner.add("b", recs("b", 20), now=0.0)
    assert stamps(aligner.release(ALL, now=0.0)) == [("b", 20), ("a", 30), ("a", 10)]


def test_holds_back_while_a_topic_is_behind_with_nothing_buffered() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"])
    aligner.add("a", recs("a", 10, 20), now=0.0)
    # b may still deliver something older than 10: nothing goes.
    assert aligner.release(caught_up("a"), now=0.1) == []
    assert len(aligner) == 2
    # A topic that is behind but has records buffered does not hold anything back.
    aligner.add("b", recs("b", 15), now=0.2)
    assert stamps(aligner.release(caught_up("a"), now=0.2)) == [("a", 10), ("b", 15)]
    # b is empty again and still behind: 20 waits.
    assert aligner.release(caught_up("a"), now=0.3) == []
    assert stamps(aligner.release(ALL, now=0.3)) == [("a", 20)]


def test_releases_once_the_lagging_topic_caught_up() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"])
    aligner.add("a", recs("a", 10, 20), now=0.0)
    assert aligner.release(NONE, now=0.0) == []
    # The lagging topic turns out to have nothing more: it is caught up.
    assert stamps(aligner.release(caught_up("b"), now=0.1)) == [("a", 10), ("a", 20)]


def test_ties_go_in_topic_order() -> None:
    for order in (["a", "b", "c"], ["c", "b", "a"]):
        aligner: Aligner[R] = Aligner(order, quorum=1)
        for topic in ("b", "a", "c"):
            aligner.add(topic, recs(topic, 10, 20), now=0.0)
        released = aligner.release(ALL, now=0.0)
        assert stamps(released) == [(t, 10) for t in order] + [(t, 20) for t in order]


def test_forced_release_after_max_wait_without_arrival() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10, 20), now=1.0)
    assert aligner.release(caught_up("a"), now=1.0) == []
    assert aligner.release(caught_up("a"), now=1.375) == []  # not before max_wait
    # Stuck for max_wait: order gives way to progress, everything waiting goes.
    assert stamps(aligner.release(caught_up("a"), now=1.5)) == [("a", 10), ("a", 20)]


def test_a_topic_known_to_have_records_is_waited_for_however_long() -> None:
    # A slow topic (large records, a slow broker) must not be overtaken: its events would
    # all come after the stream had moved on.
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10, 20), now=1.0)
    slow = caught_up("a", behind=("b",))
    assert aligner.release(slow, now=3600.0) == []
    aligner.add("b", recs("b", 15), now=3601.0)
    assert stamps(aligner.release(slow, now=3601.0)) == [("a", 10), ("b", 15)]


def test_hold_says_how_far_a_topic_that_is_behind_has_come() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b", "c"], max_wait=0.5)
    assert aligner.hold(NONE) == 0
    aligner.add("a", recs("a", 10, 40), now=0.0)
    aligner.add("b", recs("b", 20), now=0.0)
    aligner.release(caught_up("c"), now=0.0)  # 10, 20 go; b is empty and behind
    assert aligner.hold(caught_up("c")) == 20
    assert stamps(aligner.release(caught_up("c"), now=0.5)) == [("a", 40)]  # forced past b
    assert aligner.hold(caught_up("c")) == 20
    assert aligner.hold(ALL) is None


def test_an_event_far_ahead_does_not_hold_its_topic_back() -> None:
    # A device whose clock is years ahead, at the head of topic a: its topic's place in the merge
    # is that of the customers after it, so it goes out in a's order, not after all of b.
    aligner: Aligner[V] = Aligner(["a", "b"], voter=attrgetter("customer"))
    year = 365 * 86_400_000
    aligner.add("a", [V("a", year, 0, "wrong"), *(V("a", 10 * i, i, f"c{i}") for i in range(1, 4))], now=0.0)
    aligner.add("b", [V("b", 15, 0, "x"), V("b", 25, 1, "y"), V("b", 35, 2, "z")], now=0.0)
    released = aligner.release(caught_up("a", "b"), now=0.0)
    assert [(r.topic, r.customer) for r in released] == [
        ("a", "wrong"),
        ("a", "c1"),
        ("b", "x"),
        ("a", "c2"),
        ("b", "y"),
        ("a", "c3"),
        ("b", "z"),
    ]


def test_three_events_of_one_device_do_not_hold_a_topic_back_either() -> None:
    aligner: Aligner[V] = Aligner(["a", "b"], voter=attrgetter("customer"))
    ahead = [V("a", 5 * 3_600_000 + i, i, "local-time-as-utc") for i in range(3)]
    aligner.add("a", [*ahead, V("a", 40, 3, "c1"), V("a", 50, 4, "c2"), V("a", 60, 5, "c3")], now=0.0)
    aligner.add("b", [V("b", 45, 0, "x")], now=0.0)
    released = aligner.release(caught_up("b", behind=("a",)), now=0.0)
    # Then a holds two customers' records only, and more may come: it is waited for.
    assert [r.customer for r in released] == ["local-time-as-utc"] * 3 + ["c1"]


def test_a_device_ahead_does_not_let_its_own_customers_next_events_be_overtaken() -> None:
    # c1's cart, then a copy of it from a device years ahead, then c1's checkout; c1's purchase
    # is on topic b. Past the wrong one, a's place is c1's checkout, before the purchase.
    aligner: Aligner[V] = Aligner(["a", "b"], voter=attrgetter("customer"))
    year = 365 * 86_400_000
    a = [
        V("a", 10, 0, "c1"),
        V("a", year, 1, "c1"),
        V("a", 20, 2, "c1"),
        V("a", 40, 3, "x"),
        V("a", 50, 4, "y"),
    ]
    aligner.add("a", a, now=0.0)
    aligner.add("b", [V("b", 30, 0, "c1"), V("b", 60, 1, "z"), V("b", 70, 2, "w")], now=0.0)
    released = aligner.release(caught_up("a", "b"), now=0.0)
    assert [(r.topic, r.timestamp) for r in released][:4] == [("a", 10), ("a", year), ("a", 20), ("b", 30)]


def test_a_topic_with_records_of_too_few_customers_is_waited_for() -> None:
    # Its next fetch may bring earlier events of other customers: like an empty topic.
    aligner: Aligner[V] = Aligner(["a", "b"], voter=attrgetter("customer"))
    aligner.add("a", [V("a", 100, 0, "c1"), V("a", 200, 1, "c1")], now=0.0)
    aligner.add("b", [V("b", 10, 0, "x"), V("b", 150, 1, "y"), V("b", 300, 2, "z")], now=0.0)
    assert aligner.release(caught_up("b", behind=("a",)), now=0.0) == []
    assert [r.timestamp for r in aligner.release(caught_up("a", "b"), now=0.0)] == [10, 100, 150, 200, 300]


def test_an_arrival_restarts_the_wait() -> None:
    # Times are binary fractions, so that "exactly max_wait later" is exact.
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10), now=0.0)
    aligner.add("a", recs("a", 20, first_offset=1), now=0.25)
    assert aligner.release(caught_up("a"), now=0.625) == []
    assert stamps(aligner.release(caught_up("a"), now=0.75)) == [("a", 10), ("a", 20)]
    # An empty add is no arrival.
    aligner.add("a", recs("a", 30, first_offset=2), now=1.0)
    aligner.add("a", [], now=1.25)
    assert stamps(aligner.release(caught_up("a"), now=1.5)) == [("a", 30)]


def test_progress_restarts_the_wait() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10, 30), now=0.0)
    aligner.add("b", recs("b", 20), now=0.0)
    # 10 and 20 go at 0.25; then b is empty and behind, so 30 waits.
    assert stamps(aligner.release(caught_up("a"), now=0.25)) == [("a", 10), ("b", 20)]
    # 0.5 is max_wait after the arrival, but not after the progress at 0.25.
    assert aligner.release(caught_up("a"), now=0.5) == []
    assert aligner.release(caught_up("a"), now=0.625) == []
    assert stamps(aligner.release(caught_up("a"), now=0.75)) == [("a", 30)]


def test_a_release_of_nothing_is_no_progress() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10), now=0.0)
    for now in (0.125, 0.25, 0.375):
        assert aligner.release(NONE, now=now) == []
    assert stamps(aligner.release(NONE, now=0.5)) == [("a", 10)]


def test_an_empty_aligner_never_forces() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    assert aligner.release(NONE, now=100.0) == []
    aligner.add("a", recs("a", 10), now=100.0)
    assert aligner.release(caught_up("a"), now=100.1) == []


def test_forced_release_over_max_buffered() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=60.0, max_buffered=3)
    aligner.add("a", recs("a", 10, 20, 30), now=0.0)
    assert aligner.release(caught_up("a"), now=0.0) == []  # 3 is not over the limit
    aligner.add("a", recs("a", 40, first_offset=3), now=0.0)
    assert stamps(aligner.release(caught_up("a"), now=0.0)) == [("a", 10), ("a", 20), ("a", 30), ("a", 40)]


def test_a_forced_release_still_goes_in_timestamp_order() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b", "c"], max_wait=0.5)
    aligner.add("a", recs("a", 10, 40), now=0.0)
    aligner.add("b", recs("b", 20, 30), now=0.0)
    released = aligner.release(NONE, now=0.5)
    assert stamps(released) == [("a", 10), ("b", 20), ("b", 30), ("a", 40)]


def test_next_offsets_are_the_first_records_still_waiting() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b", "c"])
    assert aligner.next_offsets() == {}
    aligner.add("a", recs("a", 10, 30, first_offset=100), now=0.0)
    aligner.add("b", recs("b", 20, first_offset=7), now=0.0)
    assert aligner.next_offsets() == {"a": 100, "b": 7}
    assert aligner.sizes() == {"a": 2, "b": 1, "c": 0}
    # Released: a@100 (10), b@7 (20); then b is empty and behind, a@101 (30) waits.
    assert stamps(aligner.release(caught_up("a", "c"), now=0.0)) == [("a", 10), ("b", 20)]
    assert aligner.next_offsets() == {"a": 101}
    aligner.release(ALL, now=0.0)
    assert aligner.next_offsets() == {}


def test_clear_drops_everything_and_the_wait() -> None:
    aligner: Aligner[R] = Aligner(quorum=1, topics=["a", "b"], max_wait=0.5)
    aligner.add("a", recs("a", 10, 20), now=0.0)
    aligner.add("b", recs("b", 15), now=0.0)
    aligner.clear()
    assert len(aligner) == 0
    assert aligner.next_offsets() == {}
    assert aligner.release(ALL, now=10.0) == []
    # And it works as new afterwards.
    aligner.add("a", recs("a", 30, first_offset=2), now=10.0)
    assert aligner.release(caught_up("a"), now=10.25) == []
    assert stamps(aligner.release(caught_up("a"), now=10.5)) == [("a", 30)]


# --- the detector agent's flow control around its aligners -------------------------------------


def consumer_record(topic: str, partition: int, offset: int, timestamp: int) -> ConsumerRecord[bytes, bytes]:
    """A page view of a customer of its own that occurred ``timestamp`` ms after T0 (its record is
    stamped 0: the worker aligns by the event's time)."""
    customer = f"c{offset}"
    event = {
        "event_id": f"{topic}-{offset}",
        "customer_id": customer,
        "event_type": "page_view",
        "occurred_at": format_time(T0 + timestamp),
    }
    return ConsumerRecord(
        topic, partition, offset, 0, 0, customer.encode(), orjson.dumps(event), None, 2, 2, ()
    )


async def test_agent_pauses_topic_partitions_that_pile_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records of one topic that pile up, waiting for another topic, stop its fetching; not their order.

    Without the pause, a backlog's fetches could bring more than ``max_buffered`` records
    of one topic before the first of another, and the aligner would force them out of
    event-time order. No broker: the app is never started, its consumer only records pauses.
    """
    settings = load_settings({}, batch_max=10, partitions=2)
    app = BatchApp("flow-control", broker="kafka://127.0.0.1:9", web_enabled=False, datadir=str(tmp_path))
    agent = DetectorAgent(
        app,
        settings,
        Pipeline(Detector(catalogue := load_catalogue()), Policy(catalogue.policy), MemoryStateStore()),
        source="t",
    )
    consumer = app.consumer
    assert isinstance(consumer, BatchConsumer)
    clicks, search = settings.topic_clickstream, settings.topic_search
    handled: list[dict[int, list[Any]]] = []

    async def handle(released: dict[int, list[Any]], quiet: dict[str, int]) -> None:
        handled.append(released)

    monkeypatch.setattr(agent, "_handle", handle)
    lag: dict[str, int | None] = {}  # unknown (None) unless set: not caught up
    monkeypatch.setattr(consumer, "lag", lambda tp: lag.get(tp.topic))
    assigned = {
        TP(topic, p) for topic in [*settings.input_topics, settings.topic_repartition] for p in (0, 1)
    }
    monkeypatch.setattr(consumer, "assignment", lambda: assigned)

    # 9 clicks of partition 0 wait for the other topics: under batch_max, nothing paused.
    await agent({TP(clicks, 0): [consumer_record(clicks, 0, i, 1000 + i) for i in range(9)]})
    assert handled == []
    assert consumer._paused_partitions == set()
    # The 10th: clicks of partition 0 stop being fetched; nothing else does.
    await agent({TP(clicks, 0): [consumer_record(clicks, 0, 9, 1009)]})
    assert handled == []
    assert consumer._paused_partitions == {TP(clicks, 0)}
    # Search's first records come, and the other topics turn out to be caught up. Everything
    # up to the first goes, in event-time order (a tie goes to clicks, the first topic); then
    # search holds records of too few customers to know its place, and the rest waits.
    lag.update(
        {t: 0 for t in (*settings.input_topics, settings.topic_repartition) if t not in (clicks, search)}
    )
    await agent(
        {TP(search, 0): [consumer_record(search, 0, i, ts) for i, ts in enumerate((1004, 1030, 1031))]}
    )
    assert [(a.record.topic, a.timestamp - T0) for a in handled.pop()[0]] == [
        *[(clicks, ts) for ts in range(1000, 1005)],
        (search, 1004),
    ]
    # 5 clicks wait now, under batch_max: fetching them resumes.
    assert consumer._paused_partitions == set()
    assert agent._committable()[TP(clicks, 0)] == 5, "commits stop at the first record still waiting"
    # Everything caught up: the rest goes.
    lag[search] = lag[clicks] = 0
    await agent({})
    assert [a.timestamp - T0 for a in handled.pop()[0]] == [*range(1005, 1010), 1030, 1031]
    assert consumer._paused_partitions == set()
