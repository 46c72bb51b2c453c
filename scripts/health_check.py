#!/usr/bin/env python3
"""Check that a data_collector deployment is healthy; exit 0 when it is, 1 when not.

    python scripts/health_check.py [--config config.yaml] [--continuous 60] [--json]

Single shot, it prints a table and a last line naming every failed check, e.g.
``UNHEALTHY: postgresql: DOWN (connection refused 127.0.0.1:5432)``; suited to container
liveness probes. ``--continuous N`` checks every N seconds, prints only changes of state, keeps
running through failures and stops cleanly (exit 0) on Ctrl-C or SIGTERM. ``--json`` prints one
JSON object per run instead (one per line when continuous).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402

from data_collector.cli_parser import OneLineParser  # noqa: E402
from data_collector.config import load_config  # noqa: E402
from data_collector.errors import CollectorError  # noqa: E402
from data_collector.health import CHECKS, HealthReport, render_table, run_checks, watch  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="health_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config file (default: ./config.yaml if present)")
    parser.add_argument(
        "--continuous",
        type=float,
        metavar="SECONDS",
        default=None,
        help="repeat every SECONDS, print changes",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=CHECKS,
        metavar="CHECK",
        help=f"leave a check out (repeatable): {', '.join(CHECKS)}",
    )
    parser.add_argument(
        "--fail-on-warn", action="store_true", help="exit 1 on warnings too (stale data, no heartbeat)"
    )
    args = parser.parse_args(argv)
    if args.continuous is not None and args.continuous <= 0:
        parser.error("--continuous must be a positive number of seconds")
    return args


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


async def main_async(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    console = Console(highlight=False)
    if args.continuous is None:
        report = await run_checks(config, skip=args.skip)
        if args.json:
            print(json.dumps(report.to_dict()))
        else:
            console.print(render_table(report))
            print(report.summary_line(args.fail_on_warn))
        return report.exit_code(args.fail_on_warn)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def emit(report: HealthReport, changed: list[str]) -> None:
        if args.json:
            print(json.dumps(report.to_dict()), flush=True)
            return
        if len(changed) == len(report.checks) and all("->" not in line for line in changed):
            console.print(render_table(report))
            print(f"{stamp()} {report.summary_line(args.fail_on_warn)}")
        else:
            for line in changed:
                print(f"{stamp()} {line}")
            if changed:
                print(f"{stamp()} {report.summary_line(args.fail_on_warn)}")
        sys.stdout.flush()

    await watch(config, args.continuous, emit, stop, skip=args.skip)
    if not args.json:
        print(f"{stamp()} stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(main_async(args))
    except CollectorError as exc:
        print(f"health_check.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
