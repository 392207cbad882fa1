"""Faults planted in the core, for events that must make it raise: detection, the policy, trigger building.

No input makes the shipped code raise while processing a valid event: that is
what the tests are for. To show that such an event could not stop a worker
anyway, :func:`planted` makes the core raise on events marked for it (by their
ids), after it has changed the customer's state, as a defect would:

- an event whose ``event_id`` contains ``boom-detect``: :meth:`Detector.observe`;
- a detection of a customer whose id contains ``boom-policy``: :meth:`Policy.judge`;
- a trigger anchored on an event whose id contains ``boom-render``: :meth:`TriggerWriter.record`.

And one that stalls rather than raises: a batch with a customer whose id contains
``boom-stall`` makes a worker stop itself (SIGSTOP) just before it saves, as a long GC
pause or a frozen VM would; a test then resumes it (replay ignores it).

``python tests/integration/faults.py worker`` is ``micromoments worker`` with them planted; a
replay in a test runs with them planted too (:func:`planted` as a context manager).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping

from app.detection import Detection
from app.detector import Detector, Observation
from app.events import Event
from app.pipeline import Batch, Pipeline
from app.policy import Judgement, Policy
from app.triggers import TriggerWriter
from app.window import CustomerState

DETECTION, POLICY, RENDERING, STALL = "boom-detect", "boom-policy", "boom-render", "boom-stall"
# A worker crashes (SIGKILL) just after saving a batch of this customer's, before the batch's
# offsets are committed (or its transaction): once, on the machine, then never again, which
# the file named by CRASH_MARKER remembers.
CRASH = "boom-crash"
CRASH_MARKER = "MICROMOMENTS_TEST_CRASHED"
# How many more stalls stop this process: one, in a worker started by this module (the batch
# redone after its stall must not stall again).
STALLS = 0
# Whether this process is a worker started by this module (stalls and crashes are for those only).
WORKER = False


class PlantedFault(RuntimeError):
    """What a planted fault raises."""


@contextlib.contextmanager
def planted() -> Iterator[None]:
    observe, judge, record, commit = Detector.observe, Policy.judge, TriggerWriter.record, Pipeline.commit

    def faulty_observe(self: Detector, state: CustomerState, event: Event, ts: int) -> Observation:
        observation = observe(self, state, event, ts)
        if DETECTION in event.event_id:
            raise PlantedFault(f"detection of {event.event_id}")
        return observation

    async def stalling_commit(
        self: Pipeline, batch: Batch, positions: Mapping[str, Mapping[str, int]] | None = None
    ) -> None:
        global STALLS
        if STALLS and any(STALL in customer for customer in batch.states):
            STALLS -= 1
            os.kill(os.getpid(), signal.SIGSTOP)
        await commit(self, batch, positions)
        marker = os.environ.get(CRASH_MARKER)
        if WORKER and marker and any(CRASH in customer for customer in batch.states):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # or it crashed before
                os.kill(os.getpid(), signal.SIGKILL)

    def faulty_judge(self: Policy, detection: Detection, state: CustomerState) -> Judgement:
        judgement = judge(self, detection, state)
        if POLICY in detection.customer_id:
            raise PlantedFault(f"the policy for {detection.moment}")
        return judgement

    def faulty_record(self: TriggerWriter, detection: Detection) -> tuple[bytes, bytes]:
        if RENDERING in detection.anchor:
            raise PlantedFault(f"the trigger anchored on {detection.anchor}")
        return record(self, detection)

    Detector.observe = faulty_observe  # type: ignore[method-assign]
    Policy.judge = faulty_judge  # type: ignore[method-assign]
    TriggerWriter.record = faulty_record  # type: ignore[method-assign]
    Pipeline.commit = stalling_commit  # type: ignore[method-assign]
    try:
        yield
    finally:
        Detector.observe, Policy.judge, TriggerWriter.record = observe, judge, record  # type: ignore[method-assign]
        Pipeline.commit = commit  # type: ignore[method-assign]


if __name__ == "__main__":
    from app import cli

    STALLS, WORKER = 1, True
    with planted():
        sys.exit(cli.main(sys.argv[1:]))
