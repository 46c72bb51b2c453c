"""What ``scripts/optimized_collection.py`` runs: a collection with progress, monitor and signals.

Exit codes: 0 every pair complete; 1 some pairs failed (listed) or a server is unreachable;
2 usage or configuration error; 130 stopped by Ctrl-C/SIGTERM (what was fetched is stored, the
next run resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, NoReturn

from data_collector.backfill.report import CollectionReport
from data_collector.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    error_exit_code,
    install_stop_signals,
    remove_signals,
)
from data_collector.cli.logging_setup import setup_logging
from data_collector.cli.progress import PlainProgress, RichProgress, monitor_line
from data_collector.config import DEFAULT_CONFIG_PATH, Config, load_config
from data_collector.errors import CollectorError, ConfigError, UsageError
from data_collector.heartbeat import running_heartbeat
from data_collector.optimized_collector import OptimizedDataCollector
from utils.performance_monitor import get_default_monitor, serve_metrics

log = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 10.0


def exit_code(report: CollectionReport) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if not report.failures else EXIT_FAILED


def make_progress(stream: IO[str]) -> RichProgress | PlainProgress:
    if stream.isatty():
        from rich.console import Console

        return RichProgress(Console(file=stream))
    return PlainProgress(stream)


async def run_collection(
    config: Config,
    *,
    monitor: bool = False,
    stream: IO[str] | None = None,
    after: Callable[[OptimizedDataCollector, CollectionReport], Awaitable[None]] | None = None,
) -> int:
    """Collect the configured symbols, timeframes and range; print the summary; return the exit code.

    Errors that the user can act on are printed as one line on stderr (never a traceback).
    """
    out = stream or sys.stdout
    display = make_progress(out)
    collector = OptimizedDataCollector(config, progress=display)
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            print(
                "stopping: finishing the pages in flight and writing them (Ctrl-C again to abort)",
                file=sys.stderr,
            )
            collector.request_stop()
        elif main_task is not None:
            main_task.cancel()

    installed = install_stop_signals(loop, on_signal)
    monitor_task: asyncio.Task[None] | None = None
    try:
        async with collector, running_heartbeat(config, "collector", get_default_monitor()):
            if monitor:
                monitor_task = asyncio.create_task(_monitor(collector, out))
            with display:
                report = await collector.collect()
            print(report.summary(), file=out, flush=True)
            if monitor:
                _print_monitor_summary(collector, out)
            if after is not None:
                await after(collector, report)
            return exit_code(report)
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return error_exit_code(exc)
    except asyncio.CancelledError:
        print("aborted: pages in flight were dropped; the next run fetches them", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if monitor_task is not None:
            monitor_task.cancel()
            await asyncio.gather(monitor_task, return_exceptions=True)
        remove_signals(loop, installed)


async def _monitor(collector: OptimizedDataCollector, out: IO[str]) -> None:
    started = time.monotonic()
    ticks = 0
    while True:
        await asyncio.sleep(MONITOR_INTERVAL_S)
        ticks += 1
        client: Any = collector._client
        print(monitor_line(collector.current_report, client, started), file=out, flush=True)
        if ticks % 3 == 0:
            _print_monitor_summary(collector, out)


def _print_monitor_summary(collector: OptimizedDataCollector, out: IO[str]) -> None:
    summary = getattr(collector.monitor, "format_summary", None)
    if summary is not None:
        print(summary(), file=out, flush=True)


COLLECT_HELP = """Backfill historical OHLCV candles into the configured database.

    python scripts/optimized_collection.py [--config config.yaml] [--symbols SOL/USDT,BTC/USDT]
        [--timeframes 1m,1h] [--start 2024-01-01|180d] [--end ...] [--demo] [--monitor]
        [--stream] [--metrics-port 9108] [--log-level INFO]

With --stream, the live streams (config streaming.channels) are written into Redis after the
backfill, until Ctrl-C.

Exit codes: 0 done; 1 some pairs failed (listed) or a server is unreachable; 2 usage or
configuration error; 130 stopped by Ctrl-C (the next run resumes).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=COLLECT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"YAML config (default: ./{DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--symbols", help="comma-separated, e.g. SOL/USDT,BTC/USDT")
    parser.add_argument("--timeframes", help="comma-separated, e.g. 1m,1h")
    parser.add_argument("--start", help="ISO date (2024-01-01) or relative (180d)")
    parser.add_argument("--end", help="ISO date or relative; default now")
    parser.add_argument("--demo", action="store_true", help="run against the built-in simulator")
    parser.add_argument("--monitor", action="store_true", help="print a live performance line every 10 s")
    parser.add_argument(
        "--stream", action="store_true", help="after the backfill, stream live data into Redis until Ctrl-C"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics on this port (default: metrics.port)"
    )
    parser.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )
    args = parser.parse_args(argv)
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        parser.error("--metrics-port must be between 1 and 65535")
    return args


def build_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    overrides = {
        "symbols": args.symbols.split(",") if args.symbols else None,
        "timeframes": args.timeframes.split(",") if args.timeframes else None,
        "start": args.start,
        "end": args.end,
    }
    for key, value in overrides.items():
        if value is None:
            continue
        try:
            setattr(config, key, value)
        except ValueError as exc:  # pydantic's ValidationError
            first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            raise ConfigError(f"--{key}: {first.replace('Value error, ', '')}") from None
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config, args.log_level)
    try:
        server = serve_metrics(args.metrics_port or config.metrics.port, host=config.metrics.host)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.demo:
            from data_collector.cli.demo import run_demo  # it builds on run_collection

            code = asyncio.run(run_demo(config, monitor=args.monitor))
        else:
            code = asyncio.run(run_collection(config, monitor=args.monitor))
        if args.stream and code in (0, 1):
            code = max(code, run_streaming(config, demo=args.demo))
        return code
    finally:
        if server is not None:
            server.close()


def run_streaming(config: Config, *, demo: bool) -> int:
    """Stream the configured symbols into Redis until Ctrl-C; return the exit code."""
    from data_collector.cli.stream import run_stream_main

    return run_stream_main(config=config, demo=demo, monitor=get_default_monitor())
