"""Fault injection at full size: real broker, real redis-server, real workers, against replay.

Each run pre-produces realistic shop traffic (with what the run adds: bad records of
every kind, devices whose clocks are wrong, events planted to make the core raise,
huge records that make one topic slow, a partition quiet for a week, ties across
topics), runs ``micromoments worker`` processes while injecting the run's faults
(SIGKILLs at random instants during start-up, processing and rebalances; Redis
paused, or killed and restarted from its append-only file) and prints what they
published against what ``micromoments replay`` makes of the same input: triggers
lost, extra, duplicated and whose bytes differ, and dead letters by reason.
The library is tests/integration/chaos.py, whose short runs are in the test suite.

    .venv/bin/python bench/chaos.py                     # every run, 218,000 events, 12 partitions
    .venv/bin/python bench/chaos.py --runs kills,redis-restart --kills 10
    .venv/bin/python bench/chaos.py --events 50000 --customers 1000

Exit code 1 if any run loses a trigger or publishes one replay does not.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests")]

from chaos import (  # noqa: E402  (the library lives with the tests)
    BAD,
    Fault,
    Report,
    chaos_run,
    kills,
    no_fault,
    redis_paused,
    redis_restarted,
    shop,
    with_bad_records,
    with_planted_faults,
    with_slow_topic,
    with_ties,
    with_wrong_clocks,
    without_partition_for,
)
from harness import Workers  # noqa: E402

from app.embedded import EmbeddedBroker, EmbeddedRedis  # noqa: E402

RUNS = ("clean", "bad-input", "kills", "redis-pause", "redis-restart", "slow-topic", "quiet-and-ties")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=218_000)
    parser.add_argument("--customers", type=int, default=4_200)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs in the kills run")
    parser.add_argument(
        "--bad-per-kind", type=int, default=1_000, help=f"bad records of each of {len(BAD)} kinds"
    )
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {', '.join(RUNS)}")
    args = parser.parse_args()
    runs = [r for r in args.runs.split(",") if r]
    unknown = set(runs) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")

    traffic = shop(args.events, args.customers, seed=args.seed)
    rng = random.Random(args.seed)

    def bad_input() -> list[bytes]:
        lines = with_wrong_clocks(
            traffic,
            rng,
            ahead=[timedelta(days=800), timedelta(days=30), timedelta(days=9), timedelta(hours=5)],
            behind=[timedelta(days=3), timedelta(hours=5), timedelta(hours=2)],
        )
        lines, _ = with_planted_faults(lines, per_kind=100, rng=rng)
        lines, _ = with_bad_records(lines, per_kind=args.bad_per_kind, rng=rng)
        return lines

    def quiet_and_ties() -> list[bytes]:
        lines = shop(args.events, args.customers, seed=args.seed, days=10)
        lines = without_partition_for(lines, 1, args.partitions, timedelta(days=1), timedelta(days=9))
        return with_ties(lines, rng, share=0.2)

    plans: dict[str, tuple[Callable[[], list[bytes]], Fault, dict[str, str], bool]] = {
        "clean": (lambda: traffic, no_fault, {}, False),
        "bad-input": (bad_input, no_fault, {}, True),
        "kills": (lambda: traffic, kills(args.kills), {"MM_BATCH_MAX": "1000"}, False),
        "redis-pause": (lambda: traffic, redis_paused(10.0, after=3.0), {"MM_BATCH_MAX": "1000"}, False),
        "redis-restart": (
            lambda: traffic,
            redis_restarted(down=3.0, after=3.0),
            {"MM_BATCH_MAX": "1000"},
            False,
        ),
        "slow-topic": (lambda: with_slow_topic(traffic, rng, count=300, size=600_000), no_fault, {}, False),
        "quiet-and-ties": (quiet_and_ties, no_fault, {}, False),
    }
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="micromoments-chaos-") as tmp, EmbeddedBroker() as broker:
        for name in runs:
            make, fault, env, planted = plans[name]
            directory = Path(tmp) / name
            directory.mkdir()
            workers = Workers(directory)
            # Redis of the run's own, writing every change to disk: it may be killed and restarted.
            with EmbeddedRedis(appendfsync="always") as redis:
                try:
                    report = chaos_run(
                        name,
                        make(),
                        broker=broker,
                        redis=redis,
                        workers=workers,
                        directory=directory,
                        fault=fault,
                        faults_planted=planted,
                        seed=args.seed,
                        env={"MM_LOG_LEVEL": "warning", **env},
                        partitions=args.partitions,
                        within=900.0,
                    )
                finally:
                    for worker in workers.started:
                        worker.terminate(timeout=30)
            print(report, flush=True)
            reports.append(report)
    failed = [r.name for r in reports if not r.ok]
    print(
        f"{len(reports) - len(failed)} of {len(reports)} runs lost nothing and published nothing unexpected"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
