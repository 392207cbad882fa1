"""``micromoments replay``: event files in, triggers out, no servers.

The files are read in order as one stream through the same pipeline the
streaming worker uses, with the in-memory state store. Bad lines are reported
with file, line and reason and skipped (``strict`` makes the first one fatal);
when the input ends, pending absence deadlines are flushed. Same input and
configuration, byte-identical output.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from operator import attrgetter, eq
from pathlib import Path
from typing import IO, Final, cast

import msgspec
import orjson
from tqdm import tqdm

from app.config import Catalogue
from app.decoding import Rejection, decode_event
from app.detector import Detector
from app.events import TIE_RANK, Event
from app.learning.labels import LabelledExample
from app.pipeline import Batch, Pipeline
from app.policy import Policy
from app.processor import Status
from app.state.memory import MemoryStateStore
from app.state.store import StateStore
from app.triggers import TriggerWriter

# Big batches: a customer met in several of a batch's events is loaded and saved once
# (bench/replay_core.py: 8-10% faster than 2,000). The result does not depend on it.
BATCH_SIZE = 10_000
# The states kept as objects in replay's memory store (see app.state.memory): at about
# 1.8 KB each over their serialised form, at most 90 MB more for any number of customers.
# bench/replay_core.py's 50,000 customers all fit: 5% faster than 20,000, 60 MB more.
SHARED_STATES = 50_000
# A full pass of the (paused) cycle collector every this many batches.
COLLECT_EVERY = 100
REPLAY_STREAM = "replay"


class Problem(msgspec.Struct, frozen=True):
    """A line that was rejected."""

    file: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.detail}"


class ReplayError(Exception):
    """``--strict`` and a bad line."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class Summary(msgspec.Struct):
    files: int = 0
    read: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    forgotten: int = 0
    # Events (or deadlines) whose processing raised, and were skipped.
    failed: int = 0
    rejected: Counter[str] = msgspec.field(default_factory=Counter)
    # moment -> triggers published, and detections held out (the holdout groups)
    triggers: Counter[str] = msgspec.field(default_factory=Counter)
    held_out: Counter[str] = msgspec.field(default_factory=Counter)
    # (moment, reason) -> candidates that did not become triggers
    suppressed: Counter[tuple[str, str]] = msgspec.field(default_factory=Counter)
    deferred: int = 0
    # moment -> its model's examples learnt, progressive ROC AUC and log loss, drift alarms
    models: dict[str, dict[str, float | int | None]] = msgspec.field(default_factory=dict)
    seconds: float = 0.0

    def render(self) -> str:
        rate = self.read / self.seconds if self.seconds else 0.0
        lines = [
            f"replayed {self.files} file(s): {self.read:,} events in {self.seconds:.2f} s"
            f" ({rate:,.0f} events/s)",
            f"  applied {self.applied:,} | duplicates {self.duplicates:,} | late {self.late:,}"
            f" | rejected {sum(self.rejected.values()):,}"
            + (f" | failed {self.failed:,}" if self.failed else ""),
        ]
        if self.rejected:
            lines.append("  rejected by reason: " + _counts(self.rejected))
        lines.append(
            f"  triggers {sum(self.triggers.values()):,}"
            + (": " + _counts(self.triggers) if self.triggers else "")
        )
        if self.held_out:
            lines.append(f"  held out {sum(self.held_out.values()):,}: " + _counts(self.held_out))
        if self.deferred:
            lines.append(f"  deferred by quiet hours {self.deferred:,} (released or dropped later)")
        if self.suppressed:
            by_reason: Counter[str] = Counter()
            for (_, reason), n in self.suppressed.items():
                by_reason[reason] += n
            lines.append("  not triggered: " + _counts(by_reason))
        if self.forgotten:
            lines.append(f"  customers forgotten {self.forgotten:,}")
        if self.models:
            lines.append(
                "  models (progressive, test-then-train): "
                + "; ".join(
                    f"{moment} {q['examples']} examples"
                    + (f", AUC {q['auc']:.3f}" if q["auc"] is not None else "")
                    + (f", log loss {q['log_loss']:.3f}" if q["log_loss"] is not None else "")
                    + (f", {q['drift_alarms']} drift alarm(s)" if q["drift_alarms"] else "")
                    for moment, q in self.models.items()
                )
            )
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {n:,}" for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


Line = tuple[str, int, bytes]


def read_chunks(
    paths: Sequence[Path], lines: int, progress: Callable[[int], object] | None = None
) -> Iterator[tuple[str, int, list[bytes]]]:
    """Every file in turn, ``lines`` lines at a time: (file, number of the first line, lines).

    Whole chunks, so the per-line work left to callers can run at C speed.
    """
    for path in paths:
        with open(path, "rb") as fh:
            first = 1
            while chunk := list(islice(fh, lines)):
                if progress is not None:
                    progress(sum(map(len, chunk)))
                yield str(path), first, chunk
                first += len(chunk)


def read_lines(paths: Sequence[Path]) -> Iterator[Line]:
    """Non-blank lines of every file in turn, with their origin."""
    for file, first, chunk in read_chunks(paths, 4096):
        for number, raw in enumerate(chunk, start=first):
            if raw.strip():
                yield file, number, raw


async def replay(
    paths: Sequence[Path],
    catalogue: Catalogue,
    *,
    out: IO[bytes],
    on_problem: Callable[[Problem], None],
    strict: bool = False,
    show_progress: bool | None = None,
    batch_size: int = BATCH_SIZE,
    store: StateStore | None = None,
    held_out: IO[bytes] | None = None,
    examples: list[LabelledExample] | None = None,
) -> Summary:
    """Replay ``paths`` and write one trigger per line to ``out``; state in memory unless ``store``.

    Parameters
    ----------
    paths
        JSON Lines files of events, read in turn; events in time order within each
        (ties in any order: they are applied in the worker's tie order).
    catalogue
        The moments, windows, policy and learning configuration.
    out
        Where the triggers go, one CloudEvents JSON document per line.
    on_problem
        Called with each line not applied (invalid, late, too far ahead, or whose
        processing raised), in input order.
    strict
        Stop at the first problem (:class:`ReplayError`) instead of reporting it.
    show_progress
        Print progress to stderr; None: when stderr is a terminal.
    batch_size
        Events processed between two saves of the states.
    store
        Where customer states are kept; a fresh in-memory store if None.
    held_out
        Where detections of customers in holdout groups go, one per line; dropped if None.
    examples
        Labelled examples (learning) are appended to it when given.

    Returns
    -------
    Summary
        Counts of events, triggers, suppressions, problems, and the models' quality.
    """
    started = time.perf_counter()
    detector = Detector(catalogue)
    # Replay saves every state it changes and never redoes a batch, so the states of the
    # customers active now need no copies. (`is None`, not `or`: an empty store is falsy.)
    store = MemoryStateStore(shared=SHARED_STATES) if store is None else store
    policy = Policy(catalogue.policy)
    writer = TriggerWriter(catalogue.trigger.source, policy.subject)
    pipeline = Pipeline(detector, policy, store, render=writer.record)
    summary = Summary(files=len(paths))

    # Problems by position in the input: decoding finds some as lines are read, the core
    # others when their batch runs; they are reported in input order, up to where the
    # batches have run.
    found: list[tuple[int, Problem]] = []

    def report(before: int | None = None) -> None:
        found.sort(key=lambda item: item[0])
        cut = len(found) if before is None else bisect_left(found, before, key=lambda item: item[0])
        for _, problem in found[:cut]:
            if problem.reason == Status.LATE:
                summary.late += 1
            elif problem.reason == Status.INTERNAL_ERROR:
                summary.failed += 1
            else:
                summary.rejected[problem.reason] += 1
            if strict and problem.reason != Status.LATE:
                raise ReplayError(problem)
            on_problem(problem)
        del found[:cut]

    # Where each parked event (too far ahead, waiting for the stream's time) came from.
    parked: dict[int, tuple[str, int]] = {}

    def decided(file: str, line: int, event: Event, status: Status, why: str) -> None:
        """Count an event's fate, or report it as a problem."""
        if status is Status.APPLIED:
            summary.applied += 1
        elif status is Status.DUPLICATE:
            summary.duplicates += 1
        elif status is Status.PARKED:
            parked[id(event)] = (file, line)
        elif status in _PROBLEMS:
            detail = why or _PROBLEMS[status].format(at=event.occurred_at.isoformat())
            found.append((line, Problem(file, line, status.value, detail)))

    async def run(file: str, events: list[Event], lines: list[int]) -> None:
        batch = await pipeline.run({REPLAY_STREAM: events})
        outcome = batch.outcomes[REPLAY_STREAM]
        statuses = outcome.statuses
        counts = Counter(statuses)
        if len(statuses) == counts[Status.APPLIED]:
            summary.applied += len(statuses)  # the usual case, counted at once
        else:
            for i, (status, line, event) in enumerate(zip(statuses, lines, events, strict=True)):
                decided(file, line, event, status, outcome.failures.get(i, ""))
        await finish(batch, carried[1][0] if carried[1] else None)

    async def finish(batch: Batch, reported_before: int | None = None) -> None:
        outcome = batch.outcomes[REPLAY_STREAM]
        for event, status, why in outcome.unparked:
            decided(*parked.pop(id(event)), event, status, why)
        # Forgotten customers are counted with the outcome; late, failed and rejected
        # events are reported as problems, in the order of their lines.
        report(reported_before)
        for detection, (_, value) in zip(outcome.detections, outcome.triggers, strict=True):
            out.write(value + b"\n")
            summary.triggers[detection.moment] += 1
        for detection, (_, value) in zip(outcome.held_out, outcome.held_out_records, strict=True):
            if held_out is not None:
                held_out.write(value + b"\n")
            summary.held_out[detection.moment] += 1
        summary.suppressed.update(outcome.suppressed)
        summary.deferred += outcome.deferred
        summary.forgotten += len(outcome.forgotten)
        summary.failed += outcome.dropped[Status.INTERNAL_ERROR]
        if examples is not None:
            examples.extend(outcome.examples)
        await pipeline.commit(batch)

    # The last events of a chunk, of one time, wait for the next chunk of their file, which
    # may hold more events of that time: a tie is ordered whole (see in_tie_order).
    carried: tuple[list[Event], list[int]] = ([], [])
    total = sum(path.stat().st_size for path in paths)
    progress = tqdm(
        total=total, unit="B", unit_scale=True, desc="replay", disable=_disabled(show_progress), leave=False
    )
    with progress as bar, cycle_collector_paused():
        reading = ""
        for batches, (file, first, chunk) in enumerate(read_chunks(paths, batch_size, bar.update), 1):
            if batches % COLLECT_EVERY == 0:
                gc.collect()
            if file != reading and carried[0]:
                held, carried = carried, ([], [])
                await run(reading, *in_tie_order(*held))
            reading = file
            decoded = list(map(decode_event, chunk))
            lines = list(range(first, first + len(chunk)))
            events = cast(list[Event], decoded)
            blank = 0
            if Rejection in map(type, decoded):  # the rare case: sort the good from the bad
                events, lines = [], []
                for number, (raw, result) in enumerate(zip(chunk, decoded, strict=True), start=first):
                    if not isinstance(result, Rejection):
                        events.append(result)
                        lines.append(number)
                    elif raw.strip():
                        found.append((number, Problem(file, number, result.reason.value, result.detail)))
                    else:
                        blank += 1
            summary.read += len(chunk) - blank
            events, lines = carried[0] + events, carried[1] + lines
            cut = _last_tie(events)
            carried = (events[cut:], lines[cut:])
            events, lines = in_tie_order(events[:cut], lines[:cut])
            await run(file, events, lines)
        if carried[0]:
            held, carried = carried, ([], [])
            await run(reading, *in_tie_order(*held))
        await pipeline.open([REPLAY_STREAM])
        await finish(await pipeline.flush(REPLAY_STREAM))
    if detector.models is not None:
        detector.models.flush()
        summary.models = detector.models.quality()
    summary.seconds = time.perf_counter() - started
    return summary


# Statuses reported as problems, with their detail (an internal error's is its exception).
_PROBLEMS: Final = {
    Status.TOO_FAR_AHEAD: "occurred_at {at} is too far ahead of the stream's time, which did not come to it",
    Status.LATE: "occurred_at {at} is later than the allowed lateness behind its customer's latest event"
    " (or, for a customer with nothing held, the stream's time)",
    Status.INTERNAL_ERROR: "",
}


def _last_tie(events: Sequence[Event]) -> int:
    """Where the run of events at the time of the last one starts."""
    cut = len(events)
    while cut and events[cut - 1].occurred_at == events[-1].occurred_at:
        cut -= 1
    return cut


def in_tie_order(events: list[Event], lines: list[int]) -> tuple[list[Event], list[int]]:
    """``events`` (and their ``lines``) with each run of one ``occurred_at`` in :data:`TIE_RANK` order.

    So that replay takes events of one time as the worker does, which merges its input
    topics by time and then topic, whatever their order in the file. Runs are rare, and
    the order of any other event is left as it is.
    """
    times = list(map(_occurred_at, events))
    if not any(map(eq, times, islice(times, 1, None))):
        return events, lines
    order: list[int] = []
    start = 0
    for i in range(1, len(events) + 1):
        if i == len(events) or times[i] != times[start]:
            order += sorted(range(start, i), key=lambda j: TIE_RANK[events[j].kind])
            start = i
    return [events[i] for i in order], [lines[i] for i in order]


_occurred_at = attrgetter("occurred_at")


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector; restore it as it was after.

    Events, windows and triggers are acyclic and freed by reference counting as
    soon as they go: the collector's passes over the states a replay holds only
    cost time (5% of bench/replay_core.py; a million events leave 72 objects in
    cycles). Callers collect now and then, for whatever cycles other code makes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _disabled(show: bool | None) -> bool | None:
    # None lets tqdm decide: shown on a terminal, silent in pipes and CI logs.
    return None if show is None else not show


def problem_record(problem: Problem) -> bytes:
    return orjson.dumps(msgspec.to_builtins(problem)) + b"\n"
