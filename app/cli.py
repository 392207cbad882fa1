"""The ``micromoments`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from app import __version__
from app.config import ConfigError, load_catalogue
from app.replay import Problem, ReplayError, problem_record, replay
from app.settings import SettingsError, describe, load_settings

# Bad lines echoed to stderr before the rest are only counted (all go to --errors).
MAX_ERRORS_SHOWN = 50


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
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
    rp.add_argument("--strict", action="store_true", help="stop at the first bad line (exit 1)")
    rp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only on a terminal)",
    )
    rp.add_argument("--quiet", action="store_true", help="no summary on stderr")
    rp.set_defaults(run=_replay)

    wk = commands.add_parser(
        "worker",
        help="run the streaming worker (Kafka in, Redis state, triggers out)",
        description="Consume the event topics, keep state in Redis, publish triggers. Configured by"
        " MM_* environment variables; see `micromoments settings` and the README.",
    )
    wk.set_defaults(run=_worker)

    st = commands.add_parser("settings", help="print the worker's effective settings (secrets masked)")
    st.set_defaults(run=_settings)
    return parser


def _worker(args: argparse.Namespace) -> int:
    from app.worker.runtime import run_worker  # Faust is slow to import; only the worker needs it

    return run_worker(load_settings())


def _settings(args: argparse.Namespace) -> int:
    for name, value in describe(load_settings()).items():
        print(f"{name}={'' if value is None else value}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"micromoments replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    catalogue = load_catalogue(args.config)
    shown = 0
    errors_file = open(args.errors, "wb") if args.errors else None  # noqa: SIM115

    def on_problem(problem: Problem) -> None:
        nonlocal shown
        if errors_file is not None:
            errors_file.write(problem_record(problem))
        elif shown < MAX_ERRORS_SHOWN:
            shown += 1
            print(problem, file=sys.stderr)
            if shown == MAX_ERRORS_SHOWN:
                print("... further bad lines are only counted; use --errors FILE for all", file=sys.stderr)

    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        summary = asyncio.run(
            replay(
                args.files,
                catalogue,
                out=out,
                on_problem=on_problem,
                strict=args.strict,
                show_progress=args.progress,
            )
        )
    except ReplayError as exc:
        print(f"micromoments replay: {exc} (--strict)", file=sys.stderr)
        return 1
    finally:
        out.flush()
        if args.out:
            out.close()
        if errors_file is not None:
            errors_file.close()
    if not args.quiet:
        print(summary.render(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
