"""Replay and the ``micromoments replay`` command: bad lines are reported, never fatal unless strict."""

from __future__ import annotations

import gc
import io
from pathlib import Path

import orjson
import pytest
from helpers import BAD_LINES, DEFAULTS, DETECTION_ONLY, decode, random_objects, raw, run, trigger_bytes

from app.cli import main
from app.decoding import Reason
from app.events import EVENT_TYPES, TIE_RANK, Kind
from app.replay import Problem, ReplayError, replay
from app.settings import load_settings
from app.state.memory import MemoryStateStore
from app.worker.feed import topic_for

GOOD = [raw("compare_view", "0s", event_id="g1"), raw("add_to_cart", "1m", event_id="g2", product_id="p1")]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Line 1 good, line 2 blank, then every kind of bad line, then two good ones, then too far ahead."""
    third = orjson.dumps(raw("page_view", "1m", event_id="g3", customer="c3"))  # the clock needs three
    far = orjson.dumps(raw("page_view", "8d", event_id="g9"))
    lines = [orjson.dumps(GOOD[0]), b"   ", *BAD_LINES.values(), orjson.dumps(GOOD[1]), third, far]
    return write_lines(tmp_path / "mixed.jsonl", lines)


EXPECTED_PROBLEMS = [(line, reason.value) for line, reason in enumerate(BAD_LINES, start=3)] + [
    (3 + len(BAD_LINES) + 2, "timestamp_out_of_range")
]


async def test_replay_reports_every_bad_line_and_carries_on(mixed: Path) -> None:
    problems: list[Problem] = []
    out = io.BytesIO()

    summary = await replay([mixed], DEFAULTS, out=out, on_problem=problems.append, show_progress=False)

    assert [(p.line, p.reason) for p in problems] == EXPECTED_PROBLEMS
    assert {p.file for p in problems} == {str(mixed)}
    assert all(p.detail for p in problems)
    assert (summary.read, summary.applied, summary.late, summary.duplicates) == (len(BAD_LINES) + 4, 3, 0, 0)
    assert sum(summary.rejected.values()) == len(BAD_LINES) + 1
    assert dict(summary.triggers) == {"price_comparison": 1, "cart_abandonment": 1}  # the cart is flushed
    triggers = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [t["type"] for t in triggers] == [
        "micromoment.price_comparison.v1",
        "micromoment.cart_abandonment.v1",
    ]


async def test_strict_replay_stops_at_the_first_bad_line(mixed: Path) -> None:
    problems: list[Problem] = []
    with pytest.raises(ReplayError) as raised:
        await replay(
            [mixed], DEFAULTS, out=io.BytesIO(), on_problem=problems.append, strict=True, show_progress=False
        )
    assert (raised.value.problem.line, raised.value.problem.reason) == (3, Reason.TOO_LARGE.value)
    assert problems == []


async def test_replay_output_matches_the_core_whatever_the_batch_size(tmp_path: Path) -> None:
    objects = random_objects(seed=11, count=150)
    path = write_lines(tmp_path / "s.jsonl", [orjson.dumps(obj) for obj in objects])
    expected = trigger_bytes(run([decode(obj) for obj in objects], flush=True).detections)
    assert expected
    for size in (1, 7, 1000):
        out = io.BytesIO()
        await replay([path], DEFAULTS, out=out, on_problem=pytest.fail, show_progress=False, batch_size=size)
        assert out.getvalue() == expected


async def test_replay_keeps_its_states_in_the_store_it_is_given_even_an_empty_one(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [orjson.dumps(raw("page_view", "0s", customer="c1"))])
    store = MemoryStateStore()
    await replay([path], DEFAULTS, out=io.BytesIO(), on_problem=pytest.fail, show_progress=False, store=store)
    assert set(await store.load({"replay": ["c1"]})) == {"c1"}


# the command line


def test_cli_replay_writes_triggers_and_errors(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"

    code = main(
        [
            "replay",
            str(mixed),
            "--out",
            str(out),
            "--errors",
            str(errors),
            "--no-progress",
            "--config",
            str(DETECTION_ONLY),
        ]
    )

    assert code == 0
    assert len(out.read_bytes().splitlines()) == 2
    records = [orjson.loads(line) for line in errors.read_bytes().splitlines()]
    assert [(r["line"], r["reason"]) for r in records] == EXPECTED_PROBLEMS
    assert records[0]["file"] == str(mixed)
    assert "triggers 2" in capsys.readouterr().err


def test_cli_strict_exits_1_on_a_bad_line(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["replay", str(mixed), "--strict", "--out", str(tmp_path / "o.jsonl"), "--no-progress"])
    assert code == 1
    assert f"{mixed}:3: too_large" in capsys.readouterr().err


def test_cli_strict_exits_0_on_clean_input(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "ok.jsonl", [orjson.dumps(e) for e in GOOD])
    assert main(["replay", str(path), "--strict", "--quiet", "--out", str(tmp_path / "o.jsonl")]) == 0


def test_cli_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config", ['[moments.frustration]\nwindow = "soon"\n', "[moments.review_seeking.weights]\nstars = 0.5\n"]
)
def test_cli_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str) -> None:
    path = write_lines(tmp_path / "ok.jsonl", [orjson.dumps(e) for e in GOOD])
    bad = tmp_path / "bad.toml"
    bad.write_text(config)
    assert main(["replay", str(path), "--config", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "invalid moment configuration" in capsys.readouterr().err


def test_cli_config_changes_the_output(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [orjson.dumps(raw("store_locator_view"))])
    config = tmp_path / "strict.toml"
    config.write_text(DETECTION_ONLY.read_text() + "\n[moments.local_intent]\nthreshold = 0.9\n")
    default_out, strict_out = tmp_path / "default.jsonl", tmp_path / "strict.jsonl"

    assert (
        main(["replay", str(path), "--quiet", "--out", str(default_out), "--config", str(DETECTION_ONLY)])
        == 0
    )
    assert main(["replay", str(path), "--quiet", "--out", str(strict_out), "--config", str(config)]) == 0

    assert b"micromoment.local_intent.v1" in default_out.read_bytes()
    assert strict_out.read_bytes() == b""


async def test_replay_pauses_the_cycle_collector_and_restores_it(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [b"not json"])
    enabled_while_replaying: list[bool] = []
    assert gc.isenabled()
    await replay(
        [path],
        DEFAULTS,
        out=io.BytesIO(),
        on_problem=lambda _: enabled_while_replaying.append(gc.isenabled()),
        show_progress=False,
    )
    assert enabled_while_replaying == [False]
    assert gc.isenabled()


async def test_events_of_one_time_are_taken_in_the_order_of_their_topics(tmp_path: Path) -> None:
    # The worker merges its input topics by time, then in topic order (clickstream before
    # search): replay takes a tie the same way, whatever the order of the lines.
    search = raw("search", "0s", event_id="s1", query="headphones")
    compare = raw("compare_view", "0s", event_id="c1")
    later = [raw("page_view", "1m", event_id=f"p{i}", customer=f"x{i}") for i in range(3)]
    as_worker = write_lines(tmp_path / "worker.jsonl", [orjson.dumps(o) for o in (compare, search, *later)])
    as_written = write_lines(tmp_path / "file.jsonl", [orjson.dumps(o) for o in (search, compare, *later)])
    expected = io.BytesIO()
    await replay([as_worker], DEFAULTS, out=expected, on_problem=pytest.fail, show_progress=False)
    assert b'"searches":0' in expected.getvalue()  # the comparison came first
    for size in (1, 2, 1000):  # a tie may straddle two chunks of the file
        out = io.BytesIO()
        await replay(
            [as_written], DEFAULTS, out=out, on_problem=pytest.fail, show_progress=False, batch_size=size
        )
        assert out.getvalue() == expected.getvalue(), size


def test_ties_follow_the_order_of_the_workers_input_topics() -> None:
    settings = load_settings({})
    for event_type in EVENT_TYPES:
        topic = topic_for(event_type, settings)
        assert TIE_RANK[Kind.of(event_type)] == settings.input_topics.index(topic), event_type


async def test_late_events_are_reported_not_rejected(tmp_path: Path) -> None:
    lines = [raw("page_view", "10m"), raw("compare_view", "7m"), raw("page_view", "7m", customer="new")]
    lines += [raw("page_view", "10m", customer=f"t{i}") for i in range(3)]
    path = write_lines(tmp_path / "late.jsonl", [orjson.dumps(o) for o in lines[3:] + lines[:3]])
    problems: list[Problem] = []
    summary = await replay(
        [path], DEFAULTS, out=io.BytesIO(), on_problem=problems.append, strict=True, show_progress=False
    )
    assert [(p.line, p.reason) for p in problems] == [(5, "late"), (6, "late")]
    assert (summary.late, sum(summary.rejected.values())) == (2, 0)


@pytest.mark.parametrize("start", ["2026-11-25T12:00", "2026-11-25T12:00Z", "2026-11-25T13:00+01:00"])
def test_cli_generate_starts_where_asked_utc_without_an_offset(tmp_path: Path, start: str) -> None:
    out = tmp_path / "events.jsonl"
    assert main(["generate", "--events", "5", "--start", start, "--out", str(out)]) == 0
    first = orjson.loads(out.read_bytes().splitlines()[0])
    assert first["occurred_at"].startswith("2026-11-25T12:00:00")
