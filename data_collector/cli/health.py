"""Check that a data_collector deployment is healthy; exit 0 when it is, 1 when not.

    python scripts/health_check.py [--config config.yaml] [--continuous 60] [--json]

Single shot, it prints a table and a last line naming every failed check, e.g.
``UNHEALTHY: postgresql: DOWN (connection refused 127.0.0.1:5432)``; suited to container
liveness probes. ``--continuous N`` checks every N seconds, prints only changes of state, keeps
running through failures and stops on Ctrl-C or SIGTERM with exit code 130. ``--json`` prints one
JSON object per run instead (one per line when continuous).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console

from data_collector.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE, install_stop_signals, remove_signals
from data_collector.cli.parser import OneLineParser
from data_collector.config import Config, load_config
from data_collector.errors import CollectorError
from data_collector.health import SKIP_NAMES, HealthReport, run_checks


def parse_args(argv: list[str] | None, prog: str = "health_check.py") -> argparse.Namespace:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
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
        choices=SKIP_NAMES,
        metavar="CHECK",
        help=f"leave a check out by the name its table shows (repeatable): {', '.join(SKIP_NAMES)}",
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
    installed = install_stop_signals(loop, stop.set)

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

    try:
        await watch(config, args.continuous, emit, stop, skip=args.skip)
    finally:
        remove_signals(loop, installed)
    if not args.json:
        print(f"{stamp()} stopped", flush=True)
    # Only a signal ends the watch: the exit code says so, as every command's does.
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None, prog: str = "health_check.py") -> int:
    """Run the health check; ``prog`` names it in ``--help`` and errors."""
    args = parse_args(argv, prog)
    try:
        return asyncio.run(main_async(args))
    except CollectorError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def render_table(report: HealthReport) -> Any:
    """The report as a ``rich`` table."""
    from rich.table import Table

    colours = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title="data_collector health", title_justify="left")
    table.add_column("check")
    table.add_column("status")
    table.add_column("latency", justify="right")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        latency = f"{c.latency_ms:.1f} ms" if c.latency_ms is not None else ""
        table.add_row(c.name, f"[{colours[c.status]}]{c.status.upper()}[/]", latency, c.detail)
    return table


def changes(previous: HealthReport | None, current: HealthReport) -> list[str]:
    """Lines for checks whose status changed since ``previous`` (all of them when None), and for
    rows that are gone (a heartbeat's key expired, or a clean stop removed it)."""
    before = {c.name: c.status for c in previous.checks} if previous else {}
    out = []
    for c in current.checks:
        old = before.get(c.name)
        if old != c.status:
            arrow = f"{old} -> {c.status}" if old else c.status
            out.append(f"{c.name}: {arrow}: {c.detail}")
    now = {c.name for c in current.checks}
    for name, status in before.items():
        # A process's own heartbeat row (heartbeat:<component>:<instance>); the row that said
        # none runs goes quietly when one starts (its own row appears).
        if name not in now and name.count(":") >= 2:
            out.append(f"{name}: {status} -> gone: its heartbeat key expired (dead) or was removed (stopped)")
    return out


async def watch(
    config: Config,
    interval_s: float,
    emit: Callable[[HealthReport, list[str]], None],
    stop: asyncio.Event,
    *,
    skip: Iterable[str] = (),
) -> HealthReport | None:
    """Run the checks every ``interval_s`` until ``stop`` is set, calling ``emit(report, changes)``.

    Failures never end the loop. A check in flight when ``stop`` is set is cancelled.
    """
    previous: HealthReport | None = None
    skip = tuple(skip)
    while not stop.is_set():
        run = asyncio.ensure_future(run_checks(config, skip=skip))
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if run not in done:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            break
        stopper.cancel()
        report = run.result()
        emit(report, changes(previous, report))
        previous = report
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
    return previous
