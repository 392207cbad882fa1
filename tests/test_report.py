"""``micromoments report``: outcome rates of treated and held-out detections, and the lift's interval."""

from __future__ import annotations

import doctest
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers import ms, raw

import app.report
from app.cli import main
from app.config import load_catalogue
from app.learning.config import LearningConfig, OutcomeConfig
from app.policy import Policy
from app.replay import Summary
from app.report import (
    Exposure,
    build_report,
    followed,
    index_outcomes,
    measure,
    newcombe,
    wilson,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "fixtures" / "demo" / "day.jsonl"
HORIZON = ms("30m")
PURCHASE = frozenset({"purchase"})
OUTCOMES = LearningConfig().outcomes


def test_docstring_examples() -> None:
    result = doctest.testmod(app.report, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# --- the statistics ----------------------------------------------------------------------------

# Newcombe (1998), "Interval estimation for the difference between independent proportions",
# Statistics in Medicine 17, Table II, method 10 (the hybrid score interval).
NEWCOMBE_TABLE_II = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_TABLE_II)
def test_newcombe_interval_matches_the_published_values(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    interval = newcombe(*counts)
    assert interval is not None
    assert interval == pytest.approx(expected, abs=5e-5)


def test_wilson_interval() -> None:
    # Wilson (1927); the textbook 95 % interval for 0/10, 10/10 and 5/10.
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson(1, 1)[1] == 1.0
    assert wilson(0, 1)[0] == 0.0
    # A wider interval at a higher confidence.
    assert wilson(5, 10, 0.99)[0] < wilson(5, 10)[0]
    with pytest.raises(ValueError, match="successes"):
        wilson(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 2, 1.0)


def test_newcombe_has_no_interval_without_detections() -> None:
    assert newcombe(0, 0, 3, 10) is None
    assert newcombe(3, 10, 0, 0) is None
    assert newcombe(0, 0, 0, 0) is None
    # A single detection each is enough, and stays within [-1, 1].
    interval = newcombe(1, 1, 0, 1)
    assert interval is not None
    assert -1.0 <= interval[0] < interval[1] == 1.0


# --- outcomes ----------------------------------------------------------------------------------


def test_an_outcome_counts_strictly_after_the_detection_and_within_the_horizon() -> None:
    at = 1_000_000
    index = index_outcomes(
        [
            ("before", at - 1, "purchase"),
            ("same-ms", at, "purchase"),
            ("just-after", at + 1, "purchase"),
            ("at-horizon", at + HORIZON, "purchase"),
            ("past-horizon", at + HORIZON + 1, "purchase"),
            ("other-type", at + 60_000, "page_view"),
            # Out of order on input: sorted by the index.
            ("late-then-early", at + HORIZON + 5, "purchase"),
            ("late-then-early", at + 5, "purchase"),
        ]
    )
    outcome = {
        subject: followed(index, Exposure("m", subject, at), PURCHASE, HORIZON)
        for subject in [
            "before",
            "same-ms",
            "just-after",
            "at-horizon",
            "past-horizon",
            "other-type",
            "late-then-early",
            "nobody",
        ]
    }
    assert outcome == {
        "before": False,
        "same-ms": False,
        "just-after": True,
        "at-horizon": True,
        "past-horizon": False,
        "other-type": False,
        "late-then-early": True,
        "nobody": False,
    }
    # Any of several outcome types.
    assert followed(index, Exposure("m", "other-type", at), frozenset({"purchase", "page_view"}), HORIZON)


def test_censored_detections_are_counted() -> None:
    index = index_outcomes([("a", 10, "purchase")])
    detections = [Exposure("m", "a", 5), Exposure("m", "b", 5), Exposure("m", "c", 1_000)]
    arm = measure(detections, index, PURCHASE, horizon=100, end=1_050)
    # a: outcome; b: horizon over (5 + 100 <= 1050); c: no outcome yet, its horizon runs past the end.
    assert (arm.n, arm.outcomes, arm.rate, arm.censored) == (3, 1, 1 / 3, 1)
    assert measure([], index, PURCHASE, horizon=100).rate is None


def _hand_built(
    treated: tuple[int, int], held_out: tuple[int, int], moment: str = "cart_abandonment"
) -> tuple[Summary, list[Exposure], list[Exposure], dict[str, list[tuple[int, str]]]]:
    """``x/n`` treated and held-out detections of ``moment``, the outcome followed ``x`` of each arm."""
    at = 5_000_000
    outcomes: list[tuple[str, int, str]] = []
    arms: list[list[Exposure]] = []
    for arm, (x, n) in (("t", treated), ("h", held_out)):
        detections = [Exposure(moment, f"{arm}{i}", at) for i in range(n)]
        for i in range(n):
            if i < x:  # a purchase 10 minutes on
                outcomes.append((f"{arm}{i}", at + ms("10m"), "purchase"))
            elif i % 2:  # not quite: a purchase past the horizon, or something else
                outcomes.append((f"{arm}{i}", at + HORIZON + 1, "purchase"))
            else:
                outcomes.append((f"{arm}{i}", at + ms("10m"), "add_to_cart"))
        arms.append(detections)
    summary = Summary(files=1, read=1234, deferred=7)
    summary.triggers[moment] = treated[1]
    summary.held_out[moment] = held_out[1]
    summary.suppressed.update(
        {(moment, "no_consent"): 4, (moment, "cooldown"): 2, ("frustration", "expired"): 1}
    )
    return summary, arms[0], arms[1], index_outcomes(outcomes)


def test_report_on_a_hand_built_case() -> None:
    summary, treated, held_out, index = _hand_built((56, 70), (48, 80))

    report = build_report(summary, treated, held_out, index, OUTCOMES)

    assert [row.moment for row in report.moments] == list(OUTCOMES)
    row = next(row for row in report.moments if row.moment == "cart_abandonment")
    assert (row.triggers, row.held_out) == (70, 80)
    assert row.suppressed == {"cooldown": 2, "no_consent": 4}
    assert (row.treated.n, row.treated.outcomes, row.treated.rate) == (70, 56, 0.8)
    assert (row.holdout.n, row.holdout.outcomes, row.holdout.rate) == (80, 48, 0.6)
    assert (row.outcome, row.horizon) == (["purchase"], "30m")
    assert row.lift is not None
    assert row.lift.difference == pytest.approx(0.2)
    assert row.lift.relative == pytest.approx(0.2 / 0.6)
    assert (row.lift.low, row.lift.high) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert (report.triggers, report.held_out, report.deferred, report.events) == (70, 80, 7, 1234)
    assert (report.confidence, report.interval) == (0.95, "newcombe-wilson")
    frustration = next(row for row in report.moments if row.moment == "frustration")
    assert frustration.suppressed == {"expired": 1}
    assert frustration.lift is None

    text = report.render()
    assert "56/70  80.0%" in text
    assert "48/80  60.0%" in text
    assert "+20.0 pp" in text
    assert "[+5.2, +33.4]" in text
    assert "+33%" in text
    assert "Newcombe" in text

    as_json = orjson.loads(report.to_json())
    cart = next(m for m in as_json["moments"] if m["moment"] == "cart_abandonment")
    assert cart["treated"] == {"n": 70, "outcomes": 56, "rate": 0.8, "censored": 0}
    assert cart["lift"]["low"] == pytest.approx(0.0524, abs=5e-5)


@pytest.mark.parametrize(
    ("treated", "held_out", "lift"),
    [
        ((0, 5), (0, 3), (0.0, None)),  # no outcome at all: a lift of 0, no relative lift
        ((3, 5), (0, 4), (0.6, None)),  # none held out bought: no relative lift
        ((5, 5), (4, 4), (0.0, 0.0)),  # everybody did
        ((0, 5), (2, 2), (-1.0, -1.0)),
        ((1, 1), (0, 1), (1.0, None)),
    ],
)
def test_small_and_one_sided_counts(
    treated: tuple[int, int], held_out: tuple[int, int], lift: tuple[float, float | None]
) -> None:
    report = build_report(*_hand_built(treated, held_out), OUTCOMES)
    row = next(row for row in report.moments if row.moment == "cart_abandonment")
    assert row.lift is not None
    assert (row.lift.difference, row.lift.relative) == pytest.approx(lift)
    assert -1.0 <= row.lift.low <= row.lift.difference <= row.lift.high <= 1.0
    report.render()
    report.to_json()


@pytest.mark.parametrize(("treated", "held_out"), [((2, 5), (0, 0)), ((0, 0), (1, 3)), ((0, 0), (0, 0))])
def test_an_empty_arm_has_no_rate_and_no_lift(treated: tuple[int, int], held_out: tuple[int, int]) -> None:
    report = build_report(*_hand_built(treated, held_out), OUTCOMES)
    row = next(row for row in report.moments if row.moment == "cart_abandonment")
    assert row.lift is None
    empty = row.treated if treated[1] == 0 else row.holdout
    assert (empty.n, empty.rate) == (0, None)
    # The moment's line in the outcome table (the second one).
    line = [line for line in report.render().splitlines() if line.startswith("cart_abandonment  ")][-1]
    assert line.split()[-3:] == ["-", "-", "-"]
    cart = next(m for m in orjson.loads(report.to_json())["moments"] if m["moment"] == "cart_abandonment")
    assert cart["lift"] is None


def test_a_moment_without_outcome_configuration_gets_no_rates() -> None:
    summary, treated, held_out, index = _hand_built((1, 2), (1, 2))
    outcomes: dict[str, OutcomeConfig] = {"frustration": OUTCOMES["frustration"]}
    report = build_report(summary, treated, held_out, index, outcomes)
    assert [row.moment for row in report.moments] == ["frustration", "cart_abandonment"]
    assert report.moments[1].lift is None
    assert report.moments[1].outcome == []
    report.render()


# --- end to end --------------------------------------------------------------------------------

LOCAL = "local_intent"


def _config(tmp_path: Path, *, hashed: bool) -> Path:
    """The policy out of the way but for a half-and-half holdout of local_intent."""
    shares = "\n".join(f"{m} = {0.5 if m == LOCAL else 0.0}" for m in OUTCOMES)
    path = tmp_path / "report.toml"
    path.write_text(
        f"""
[policy]
consent = "implied"
max_per_day = 0
hash_customer_ids = {"true" if hashed else "false"}
customer_id_salt = "pepper"

[policy.quiet_hours]
enabled = false

[policy.holdout.share]
{shares}
"""
    )
    return path


def _store_visits(tmp_path: Path, customers: int = 24) -> tuple[Path, list[str], set[str]]:
    """Customers who look for a store (local intent), a minute apart; every third buys soon after,
    every third but one buys too late; a bad line in the middle. The customers who bought in time."""
    lines, bought = [], set()
    for i in range(customers):
        customer = f"shopper-{i:02d}"
        start = ms("1m") * i
        lines.append(orjson.dumps(raw("store_locator_view", start, customer=customer, page="/stores")))
        if i % 3 == 0:
            bought.add(customer)
            purchase = start + ms("20m")
        elif i % 3 == 1:
            purchase = start + ms("31m")
        else:
            continue
        lines.append(
            orjson.dumps(
                raw("purchase", purchase, customer=customer, order_id=f"o{i}", items=[{"product_id": "p1"}])
            )
        )
    lines.sort(key=lambda line: orjson.loads(line)["occurred_at"])
    lines.insert(5, b'{"not": "an event"}')
    path = tmp_path / "stores.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path, [f"shopper-{i:02d}" for i in range(customers)], bought


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed-ids"])
def test_cli_on_a_small_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str], hashed: bool) -> None:
    path, customers, bought = _store_visits(tmp_path)
    config = _config(tmp_path, hashed=hashed)
    policy = Policy(load_catalogue(config).policy)
    held = [c for c in customers if policy.held_out(LOCAL, c)]
    treated = [c for c in customers if c not in held]
    assert held, "both arms must be non-empty for this test"
    assert treated, "both arms must be non-empty for this test"

    assert main(["report", str(path), "--config", str(config), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)

    assert (report["files"], report["rejected"]) == (1, 1)
    row = next(m for m in report["moments"] if m["moment"] == LOCAL)
    assert (row["triggers"], row["held_out"]) == (len(treated), len(held))
    expected_treated = sum(c in bought for c in treated)
    expected_held = sum(c in bought for c in held)
    assert row["treated"] == {
        "n": len(treated),
        "outcomes": expected_treated,
        "rate": expected_treated / len(treated),
        "censored": 0,
    }
    assert (row["holdout"]["n"], row["holdout"]["outcomes"]) == (len(held), expected_held)
    interval = newcombe(expected_treated, len(treated), expected_held, len(held))
    assert interval is not None
    assert (row["lift"]["low"], row["lift"]["high"]) == pytest.approx(interval)
    assert row["lift"]["difference"] == pytest.approx(
        expected_treated / len(treated) - expected_held / len(held)
    )
    others = [m for m in report["moments"] if m["moment"] != LOCAL]
    assert all(m["triggers"] == m["held_out"] == 0 and m["lift"] is None for m in others)

    # The same triggers as `micromoments replay`.
    out, held_file = tmp_path / "triggers.jsonl", tmp_path / "held.jsonl"
    argv = ["replay", str(path), "--config", str(config), "--out", str(out), "--holdout", str(held_file)]
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    assert len(out.read_bytes().splitlines()) == len(treated)
    assert len(held_file.read_bytes().splitlines()) == len(held)

    assert main(["report", str(path), "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"{expected_treated}/{len(treated)}" in text
    assert "(1 rejected)" in text


def test_cli_on_the_demo_day(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(DEMO), "--out", "/dev/null"]) == 0
    replayed = capsys.readouterr().err

    assert main(["report", str(DEMO), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)

    assert (report["files"], report["events"], report["rejected"]) == (1, 5246, 0)
    assert f"triggers {report['triggers']:,}:" in replayed
    assert f"held out {report['held_out']:,}:" in replayed
    assert f"deferred by quiet hours {report['deferred']:,}" in replayed
    rows = {m["moment"]: m for m in report["moments"]}
    assert list(rows) == list(OUTCOMES)
    suppressed: Counter[str] = Counter()
    for moment, row in rows.items():
        assert f"{moment} {row['triggers']}" in replayed
        assert row["treated"]["n"] == row["triggers"]
        assert row["holdout"]["n"] == row["held_out"]
        assert row["held_out"] > 0, "the demo holds out 10 % of every moment's customers"
        for arm in (row["treated"], row["holdout"]):
            assert 0 <= arm["outcomes"] <= arm["n"]
        lift = row["lift"]
        assert lift is not None
        assert -1 <= lift["low"] <= lift["difference"] <= lift["high"] <= 1
        suppressed.update(row["suppressed"])
    # The demo has customers without consent; quiet hours defer some triggers.
    assert suppressed["no_consent"] > 0
    assert report["deferred"] > 0
    assert sum(row["triggers"] for row in rows.values()) == report["triggers"]

    assert main(["report", str(DEMO)]) == 0
    text = capsys.readouterr().out
    for moment in OUTCOMES:
        assert moment in text
    assert "95% CI" in text
    assert "no_consent" in text


def test_cli_report_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
