r"""Scenario fixtures: small hand-written cases per micro-moment, checked two ways.

- ``fixtures/scenarios/<moment>.<case>.jsonl``: a few events each, positive cases and
  near misses, plus cooldowns, lateness, duplicates, several customers and bad input.
- ``fixtures/scenarios/manifest.toml``: the intent of each file: the moments that must
  fire (``fires``, optionally with counts), those that must not (``silent``), what
  passes a cart deadline, late and duplicate counts, and the bad lines with their reasons.
- ``fixtures/golden/<file name without .jsonl>.triggers.jsonl``: the exact output of
  ``micromoments replay fixtures/scenarios/<file> --quiet``; ``<name>.errors.jsonl`` is
  what ``--errors`` writes for a file with bad lines.

Detection scenarios run with ``fixtures/scenarios/detection-only.toml``, which sets
the engagement policy aside; ``policy.*.jsonl`` run with the shipped defaults.

The golden files pin every byte (scores, explanations, evidence, journey stages, ids);
the manifest says what the bytes are meant to show, so a regenerated golden that no
longer shows it still fails here.

After an intended behaviour change, regenerate the goldens from the repository root:

    for f in fixtures/scenarios/*.jsonl; do
      n=$(basename "$f" .jsonl)
      case $n in policy.*) c= ;; *) c="--config fixtures/scenarios/detection-only.toml" ;; esac
      .venv/bin/micromoments replay "$f" $c --quiet \
        --out "fixtures/golden/$n.triggers.jsonl" --errors "fixtures/golden/$n.errors.jsonl"
    done
    find fixtures/golden -name '*.errors.jsonl' -empty -delete

then read ``git diff fixtures/golden`` line by line: a golden file is only worth its review.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import io
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import run

from app.cli import main
from app.config import load_catalogue
from app.decoding import Rejection, decode_event
from app.moments import MOMENT_TYPES
from app.replay import Problem, Summary, replay

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "fixtures" / "scenarios"
GOLDEN = ROOT / "fixtures" / "golden"
MANIFEST: dict[str, dict[str, Any]] = tomllib.loads((SCENARIOS / "manifest.toml").read_text())
NAMES = sorted(MANIFEST)
MOMENTS = [moment.name for moment in MOMENT_TYPES]
KEYS = {"description", "fires", "silent", "cart_deadline", "late", "duplicates", "rejected"}
KEYS |= {"held_out", "suppressed", "deferred"}
# Why the detector itself lets a candidate go; every other reason is the engagement policy's.
DETECTOR_REASONS = {"below_threshold", "cooldown"}
FIRES = re.compile(r"(?P<moment>[a-z_]+)(?::(?P<count>[1-9][0-9]*))?\Z")

DETECTION_ONLY = SCENARIOS / "detection-only.toml"
REGENERATE = (
    'for f in fixtures/scenarios/*.jsonl; do n=$(basename "$f" .jsonl); case $n in policy.*) c= ;;'
    ' *) c="--config fixtures/scenarios/detection-only.toml" ;; esac; .venv/bin/micromoments replay'
    ' "$f" $c --quiet --out "fixtures/golden/$n.triggers.jsonl" --errors "fixtures/golden/$n.errors.jsonl";'
    " done; find fixtures/golden -name '*.errors.jsonl' -empty -delete"
)


def config_of(name: str) -> Path | None:
    """The configuration a scenario runs with: see the module docstring."""
    return None if name.startswith("policy.") else DETECTION_ONLY


HOW_TO_REGENERATE = (
    "If the behaviour change is intended, regenerate the goldens from the repository root:\n"
    f"    {REGENERATE}\n"
    "then review `git diff fixtures/golden` line by line (and the manifest, if the intent changed)."
)


def stem(name: str) -> str:
    return name.removesuffix(".jsonl")


def triggers_golden(name: str) -> Path:
    return GOLDEN / f"{stem(name)}.triggers.jsonl"


def errors_golden(name: str) -> Path:
    return GOLDEN / f"{stem(name)}.errors.jsonl"


def expected_fires(name: str) -> dict[str, int | None]:
    """``fires`` as moment -> exact count, or ``None`` for "at least once"."""
    found: dict[str, int | None] = {}
    for spec in MANIFEST[name]["fires"]:
        match = FIRES.match(spec)
        assert match, f"{name}: fires entry {spec!r} is not 'moment' or 'moment:N'"
        count = match["count"]
        found[match["moment"]] = int(count) if count else None
    return found


class Replayed:
    def __init__(self, triggers: bytes, problems: list[Problem], summary: Summary) -> None:
        self.triggers = triggers
        self.problems = problems
        self.summary = summary

    def moments(self) -> Counter[str]:
        return Counter(orjson.loads(line)["data"]["moment"] for line in self.triggers.splitlines())


@functools.cache
def replayed(name: str) -> Replayed:
    """The scenario replayed in-process, as ``micromoments replay`` does it (cached: files are tiny)."""
    problems: list[Problem] = []
    out = io.BytesIO()
    summary = asyncio.run(
        replay(
            [SCENARIOS / name],
            load_catalogue(config_of(name)),
            out=out,
            on_problem=problems.append,
            show_progress=False,
        )
    )
    return Replayed(out.getvalue(), problems, summary)


def describe_difference(expected: bytes, actual: bytes) -> str:
    def lines(data: bytes) -> list[str]:
        return data.decode("utf-8", "replace").splitlines()

    diff = list(difflib.unified_diff(lines(expected), lines(actual), "golden", "replay", lineterm="", n=0))
    return "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")


# (d) the manifest, the scenario files and the golden files agree


def test_every_scenario_file_is_in_the_manifest() -> None:
    files = {path.name for path in SCENARIOS.glob("*.jsonl")}
    assert sorted(files - MANIFEST.keys()) == [], "scenario files missing from manifest.toml"


def test_every_manifest_entry_has_a_scenario_file() -> None:
    files = {path.name for path in SCENARIOS.glob("*.jsonl")}
    assert sorted(MANIFEST.keys() - files) == [], "manifest.toml entries without a scenario file"


def test_every_golden_file_belongs_to_a_scenario() -> None:
    expected = {triggers_golden(name).name for name in NAMES} | {
        errors_golden(name).name for name in NAMES if "rejected" in MANIFEST[name] or "late" in MANIFEST[name]
    }
    actual = {path.name for path in GOLDEN.iterdir()}
    assert sorted(actual - expected) == [], "golden files without a scenario (or stray errors files)"
    assert sorted(expected - actual) == [], f"golden files missing. {HOW_TO_REGENERATE}"


@pytest.mark.parametrize("name", NAMES)
def test_manifest_entry_is_well_formed(name: str) -> None:
    entry = MANIFEST[name]
    assert entry.keys() <= KEYS, f"{name}: unknown keys {sorted(entry.keys() - KEYS)}"
    assert isinstance(entry.get("description"), str), f"{name}: a one-line description is required"
    assert entry["description"].strip(), name
    assert "\n" not in entry["description"], name
    fires = expected_fires(name)
    silent = entry["silent"]
    assert len(set(silent)) == len(silent), f"{name}: silent lists a moment twice"
    assert len(fires) == len(entry["fires"]), f"{name}: fires lists a moment twice"
    assert not fires.keys() & set(silent), f"{name}: a moment both fires and is silent"
    assert sorted([*fires, *silent]) == sorted(MOMENTS), (
        f"{name}: fires and silent together must name every moment exactly once: {MOMENTS}"
    )
    assert ("cart_deadline" in entry) == ("cart_abandonment" in fires), (
        f"{name}: say what passes the cart deadline (cart_deadline) exactly when cart_abandonment fires"
    )
    assert entry.get("cart_deadline", "flush") in {"flush", "watermark"}, name
    held_out = held_out_counts(name)
    assert held_out.keys() <= set(MOMENTS), f"{name}: held_out names an unknown moment"
    assert len(held_out) == len(entry.get("held_out", [])), f"{name}: held_out lists a moment twice"
    suppressed = entry.get("suppressed", {})
    assert all(isinstance(n, int) and n > 0 for n in suppressed.values()), name
    assert not suppressed.keys() & DETECTOR_REASONS, f"{name}: suppressed counts the policy's reasons only"
    assert isinstance(entry.get("deferred", 0), int), name


def held_out_counts(name: str) -> dict[str, int]:
    """``held_out`` as moment -> exact count."""
    found = {}
    for spec in MANIFEST[name].get("held_out", []):
        match = FIRES.match(spec)
        assert match, f"{name}: held_out entry {spec!r} is not 'moment:N'"
        assert match["count"], f"{name}: held_out entry {spec!r} needs a count"
        found[match["moment"]] = int(match["count"])
    return found


# (a) replaying each scenario gives exactly the golden bytes


@pytest.mark.parametrize("name", NAMES)
def test_replay_output_equals_the_golden_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exactly the command that made the golden files, run from the repository root so
    # that the file names in error records read the same.
    monkeypatch.chdir(ROOT)
    out, errors = tmp_path / "triggers.jsonl", tmp_path / "errors.jsonl"
    argv = ["replay", f"fixtures/scenarios/{name}", "--quiet", "--out", str(out), "--errors", str(errors)]
    config = config_of(name)
    if config is not None:
        argv += ["--config", str(config.relative_to(ROOT))]

    assert main(argv) == 0

    for produced, golden in ((out, triggers_golden(name)), (errors, errors_golden(name))):
        expected = golden.read_bytes() if golden.exists() else b""
        actual = produced.read_bytes()
        assert actual == expected, (
            f"{name}: `micromoments replay` output differs from {golden.relative_to(ROOT)}:\n"
            f"{describe_difference(expected, actual)}\n{HOW_TO_REGENERATE}"
        )


# (b) the triggers show what the manifest says the scenario is about


@pytest.mark.parametrize("name", NAMES)
def test_triggers_fire_and_stay_silent_as_the_manifest_says(name: str) -> None:
    entry = MANIFEST[name]
    result = replayed(name)
    found = result.moments()
    intent = f"{name} ({entry['description']})"
    for moment, count in expected_fires(name).items():
        if count is None:
            assert found[moment] >= 1, f"{intent}: expected {moment} to fire; triggers: {dict(found)}"
        else:
            assert found[moment] == count, (
                f"{intent}: expected {moment} exactly {count} time(s); triggers: {dict(found)}"
            )
    unexpected = sorted(moment for moment in entry["silent"] if found[moment])
    assert unexpected == [], f"{intent}: these must stay silent; triggers: {dict(found)}"
    assert result.summary.late == entry.get("late", 0), f"{intent}: events skipped as late"
    assert result.summary.duplicates == entry.get("duplicates", 0), f"{intent}: duplicates skipped"


@pytest.mark.parametrize("name", [name for name in NAMES if "cart_deadline" in MANIFEST[name]])
def test_cart_deadlines_pass_the_way_the_manifest_says(name: str) -> None:
    """A "watermark" deadline fires while the input is read; a "flush" one only at the end of input."""
    events = []
    for raw in (SCENARIOS / name).read_bytes().splitlines():
        decoded = decode_event(raw)
        if raw.strip() and not isinstance(decoded, Rejection):
            events.append(decoded)
    expected = replayed(name).moments()["cart_abandonment"]

    catalogue = load_catalogue(config_of(name))
    without_flush = run(events, catalogue).moments().count("cart_abandonment")
    with_flush = run(events, catalogue, flush=True).moments().count("cart_abandonment")

    assert with_flush == expected
    if MANIFEST[name]["cart_deadline"] == "watermark":
        assert without_flush == expected, f"{name}: the deadline should pass before the input ends"
    else:
        assert without_flush == 0, f"{name}: nothing in the input should pass the deadline; only the flush"


@pytest.mark.parametrize("name", NAMES)
def test_the_engagement_policy_acts_as_the_manifest_says(name: str) -> None:
    """Held out, suppressed by reason and deferred, exactly; none of it in detection-only scenarios."""
    entry = MANIFEST[name]
    summary = replayed(name).summary
    intent = f"{name} ({entry['description']})"
    assert dict(summary.held_out) == held_out_counts(name), f"{intent}: held out"
    by_reason: Counter[str] = Counter()
    for (_, reason), n in summary.suppressed.items():
        if reason not in DETECTOR_REASONS:
            by_reason[reason] += n
    assert dict(by_reason) == entry.get("suppressed", {}), f"{intent}: suppressed by the policy"
    assert summary.deferred == entry.get("deferred", 0), f"{intent}: deferred by quiet hours"


# (c) bad lines: the reported problems are the ones the manifest lists


@pytest.mark.parametrize("name", NAMES)
def test_reported_problems_are_the_ones_the_manifest_lists(name: str) -> None:
    result = replayed(name)
    expected = [(bad["line"], bad["reason"]) for bad in MANIFEST[name].get("rejected", [])]
    reported = sorted((p.line, p.reason) for p in result.problems if p.reason != "late")
    assert reported == expected, f"{name}: reported problems (line, reason)"
    late = [p for p in result.problems if p.reason == "late"]
    assert len(late) == MANIFEST[name].get("late", 0), f"{name}: late events are reported as such"
    assert {problem.file for problem in result.problems} <= {str(SCENARIOS / name)}
    assert all(problem.detail for problem in result.problems)
    assert sum(result.summary.rejected.values()) == len(expected)
