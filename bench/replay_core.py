"""Benchmark: a generated event file replayed through the detection core.

Generates (once, cached under bench/out/) a file of synthetic traffic, then
replays it exactly as `micromoments replay` does — decoding, in-memory state,
all moments, trigger encoding — pinned to one CPU core, and prints events/s and
peak memory.

    .venv/bin/python bench/replay_core.py               # 1,000,000 events, 50,000 customers
    .venv/bin/python bench/replay_core.py --events 200000 --profile
    .venv/bin/python bench/replay_core.py --config fixtures/rules-only.toml   # learning off
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import sys
import time
from pathlib import Path

import orjson

from app.cli import tune_collector
from app.config import load_catalogue
from app.replay import Problem, replay
from app.traffic import TrafficGenerator

OUT = Path(__file__).parent / "out"


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
    problems: list[Problem] = []
    profiler = cProfile.Profile() if args.profile else None
    with open(os.devnull, "wb") as sink:
        if profiler:
            profiler.enable()
        summary = asyncio.run(
            replay(
                [path], load_catalogue(args.config), out=sink, on_problem=problems.append, show_progress=False
            )
        )
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


if __name__ == "__main__":
    main()
