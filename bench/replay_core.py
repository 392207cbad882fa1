"""Benchmark: a generated event file replayed through the detection core.

Generates (once, cached under bench/out/) a file of synthetic traffic, then
replays it exactly as `micromoments replay` does — decoding, in-memory state,
all moments, trigger encoding — pinned to one CPU core, and prints events/s and
peak memory.

    .venv/bin/python bench/replay_core.py               # 1,000,000 events, 50,000 customers
    .venv/bin/python bench/replay_core.py --events 200000 --profile
    .venv/bin/python bench/replay_core.py --config fixtures/rules-only.toml   # learning off
    .venv/bin/python bench/replay_core.py --events 300000 --compare 3   # learning on vs off, alternating
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import time
from pathlib import Path

import orjson

from app.cli import tune_collector
from app.config import Catalogue, load_catalogue
from app.replay import Problem, Summary, replay
from app.traffic import TrafficGenerator

OUT = Path(__file__).parent / "out"
RULES_ONLY = Path(__file__).parent.parent / "fixtures" / "rules-only.toml"


def generate(path: Path, events: int, customers: int, seed: int) -> None:
    # Enough sessions per second that `customers` come and go over about two days.
    generator = TrafficGenerator(seed=seed, customers=customers, events_per_second=events / 172_800)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        for event in generator.events(count=events):
            fh.write(orjson.dumps(event) + b"\n")
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument(
        "--compare", type=int, metavar="ROUNDS", help="learning on against off, alternating, ROUNDS times"
    )
    parser.add_argument(
        "--config", type=Path, help="moment configuration merged over the defaults (e.g. learning off)"
    )
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    path = OUT / f"traffic-{args.events}-{args.customers}-{args.seed}.jsonl"
    if not path.exists():
        started = time.perf_counter()
        generate(path, args.events, args.customers, args.seed)
        print(f"generated {path.name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    tune_collector()  # as the command line does
    if args.compare:
        compare(path, args.compare)
        return
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    summary, _ = replay_once(path, load_catalogue(args.config))
    if profiler:
        profiler.disable()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(summary.render())
    print(f"events/s: {summary.read / summary.seconds:,.0f}")
    print(f"peak RSS: {peak_mib:,.0f} MiB")
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())


def replay_once(path: Path, catalogue: Catalogue) -> tuple[Summary, float]:
    """Replay ``path`` to nowhere: the summary, and the CPU seconds it took."""
    problems: list[Problem] = []
    cpu = time.process_time()
    with open(os.devnull, "wb") as sink:
        summary = asyncio.run(
            replay([path], catalogue, out=sink, on_problem=problems.append, show_progress=False)
        )
    return summary, time.process_time() - cpu


def compare(path: Path, rounds: int) -> None:
    """The default configuration (learning on) against rules alone, alternating, ``rounds`` times each."""
    catalogues = {"learning": load_catalogue(), "rules only": load_catalogue(RULES_ONLY)}
    ratios = []
    for round_ in range(1, rounds + 1):
        cpu: dict[str, float] = {}
        for name, catalogue in catalogues.items():
            summary, cpu[name] = replay_once(path, catalogue)
            print(
                f"round {round_} {name:<10} {summary.read / summary.seconds:>9,.0f} events/s"
                f" {summary.read / cpu[name]:>9,.0f} events/CPU-s"
            )
        ratios.append(cpu["learning"] / cpu["rules only"])
        print(f"round {round_} learning costs {ratios[-1]:.2f}x the rules-only CPU time")
    print(f"median: learning costs {statistics.median(ratios):.2f}x the rules-only CPU time")


if __name__ == "__main__":
    main()
