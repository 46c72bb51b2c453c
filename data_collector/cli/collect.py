"""What ``scripts/optimized_collection.py`` runs: a collection with progress, monitor and signals.

Exit codes: 0 every pair complete; 1 some pairs failed (listed) or a server is unreachable;
2 usage or configuration error; 130 stopped by Ctrl-C/SIGTERM (what was fetched is stored, the
next run resumes).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

from data_collector.backfill.multi_venue import MultiVenueCollector
from data_collector.backfill.report import CollectionReport
from data_collector.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    error_exit_code,
    install_stop_signals,
    remove_signals,
)
from data_collector.cli.logging_setup import log_outcome
from data_collector.cli.progress import PlainProgress, RichProgress, monitor_line
from data_collector.config import Config
from data_collector.errors import CollectorError
from data_collector.heartbeat import running_heartbeat
from data_collector.optimized_collector import OptimizedDataCollector
from utils.performance_monitor import get_default_monitor

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
    With ``venues`` in the config, every venue is collected concurrently (``after`` is not called).
    """
    out = stream or sys.stdout
    display = make_progress(out)
    collector: OptimizedDataCollector | MultiVenueCollector = (
        MultiVenueCollector(config, progress=display)
        if config.venues
        else OptimizedDataCollector(config, progress=display)
    )
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0
    collecting = False

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if not collecting and main_task is not None:
            # Nothing fetched yet (connecting, loading markets, creating the schema): stop now.
            main_task.cancel()
        elif signals_seen == 1:
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
            await collector.initialize()
            universe = await collector.resolve_symbols()
            print(universe.describe(), file=out, flush=True)
            collecting = True
            with display:
                report = await collector.collect(symbols=universe.symbols)
            collecting = False
            print(report.summary(), file=out, flush=True)
            log_outcome(report.summary(), logging.INFO if report.ok else logging.WARNING)
            if monitor:
                _print_monitor_summary(collector, out)
            if after is not None and isinstance(collector, OptimizedDataCollector):
                await after(collector, report)
            return exit_code(report)
    except CollectorError as exc:
        report_error(f"error: {exc}")
        return error_exit_code(exc)
    except asyncio.CancelledError:
        if collecting:
            report_error("aborted: pages in flight were dropped; the next run fetches them")
        else:
            report_error("stopped before the backfill started; nothing was written")
        return EXIT_INTERRUPTED
    finally:
        if monitor_task is not None:
            monitor_task.cancel()
            await asyncio.gather(monitor_task, return_exceptions=True)
        remove_signals(loop, installed)


def report_error(line: str) -> None:
    """Print ``line`` on stderr and record it in the log file (``logging.file``)."""
    print(line, file=sys.stderr, flush=True)
    log_outcome(line, logging.ERROR)


async def _monitor(collector: OptimizedDataCollector | MultiVenueCollector, out: IO[str]) -> None:
    started = time.monotonic()
    ticks = 0
    while True:
        await asyncio.sleep(MONITOR_INTERVAL_S)
        ticks += 1
        client: Any = collector._client
        print(monitor_line(collector.current_report, client, started), file=out, flush=True)
        if ticks % 3 == 0:
            _print_monitor_summary(collector, out)


def _print_monitor_summary(collector: OptimizedDataCollector | MultiVenueCollector, out: IO[str]) -> None:
    summary = getattr(collector.monitor, "format_summary", None)
    if summary is not None:
        print(summary(), file=out, flush=True)
