"""Backfill historical OHLCV candles into the configured database.

    python scripts/optimized_collection.py [--config config.yaml] [--symbols SOL/USDT,BTC/USDT]
        [--timeframes 1m,1h] [--start 2024-01-01|180d] [--end ...] [--demo [--demo-db URL]]
        [--monitor] [--stream] [--metrics-port 9108] [--log-level INFO]
        [--distributed [--window-days 30] [--queue URL] [--queue-schema dc_jobs]]
    python scripts/optimized_collection.py --migrate-demo-rows [--apply] [--config config.yaml]

With --stream, the live streams (config streaming.channels) are written into Redis after the
backfill, until Ctrl-C.

--demo never writes into the configured database: it stores in SQLite at data/demo.db (relative to
the current directory) or in --demo-db, labelled 'sim-binance'. --migrate-demo-rows finds the
simulated rows that older versions' --demo stored under 'binance' in the configured database
(a dry run); with --apply it removes them and their coverage.

Exit codes: 0 done; 1 some pairs failed (listed) or a server is unreachable; 2 usage or
configuration error; 130 stopped by Ctrl-C (the next run resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from data_collector.cli.collect import report_error, run_collection
from data_collector.cli.demo import DEMO_SCHEMA, demo_database, run_demo, run_demo_migration
from data_collector.cli.distributed import DEFAULT_WINDOW_DAYS, add_queue_options, run_producer
from data_collector.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from data_collector.cli.logging_setup import setup_logging
from data_collector.cli.parser import LOG_LEVELS, OneLineParser, log_level
from data_collector.config import DEFAULT_CONFIG_PATH, Config, config_origin, load_config, setting_source
from data_collector.errors import ConfigError, UsageError
from utils.performance_monitor import get_default_monitor, serve_metrics


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help=f"YAML config (default: ./{DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument("--symbols", help="comma-separated, e.g. SOL/USDT,BTC/USDT")
    parser.add_argument("--timeframes", help="comma-separated, e.g. 1m,1h")
    parser.add_argument("--start", help="ISO date (2024-01-01) or relative (180d)")
    parser.add_argument("--end", help="ISO date or relative; default now")
    parser.add_argument("--demo", action="store_true", help="run against the built-in simulator")
    parser.add_argument(
        "--demo-db",
        metavar="URL",
        help="with --demo: store here instead of SQLite at data/demo.db (never the configured database)",
    )
    parser.add_argument(
        "--demo-schema", default=DEMO_SCHEMA, help=f"PostgreSQL schema of --demo-db (default {DEMO_SCHEMA})"
    )
    parser.add_argument(
        "--migrate-demo-rows",
        action="store_true",
        help="report the simulated rows an old --demo stored under 'binance' in the configured database",
    )
    parser.add_argument("--apply", action="store_true", help="with --migrate-demo-rows: remove them")
    parser.add_argument("--monitor", action="store_true", help="print a live performance line every 10 s")
    parser.add_argument(
        "--stream", action="store_true", help="after the backfill, stream live data into Redis until Ctrl-C"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="serve Prometheus /metrics on this port (default: metrics.port)"
    )
    parser.add_argument("--log-level", type=log_level, help=", ".join(LOG_LEVELS))
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="enqueue the run as jobs for `data-collector worker`s; wait",
    )
    parser.add_argument(
        "--window-days",
        type=float,
        default=DEFAULT_WINDOW_DAYS,
        help="days per job (rounded to whole pages of each timeframe)",
    )
    add_queue_options(parser)
    args = parser.parse_args(argv)
    if args.distributed and (args.demo or args.stream or args.migrate_demo_rows):
        parser.error("--distributed runs alone, without --demo, --stream or --migrate-demo-rows")
    if args.demo_db is not None and not args.demo:
        parser.error("--demo-db goes with --demo")
    if args.apply and not args.migrate_demo_rows:
        parser.error("--apply goes with --migrate-demo-rows")
    if args.migrate_demo_rows and (args.demo or args.stream):
        parser.error("--migrate-demo-rows runs alone, without --demo or --stream")
    if args.metrics_port is not None and not 0 < args.metrics_port < 65536:
        parser.error("--metrics-port must be between 1 and 65535")
    return args


def build_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    check_exchange_id(config, config_origin(args.config))
    if config.venues and args.symbols:
        raise ConfigError(
            "--symbols: with venues: in the config each venue lists its own symbols; drop --symbols"
        )
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


def check_exchange_id(config: Config, origin: str) -> None:
    """Refuse an ``exchange.id`` (or a ``venues`` entry's ``id``) that names no ccxt class, naming
    the file or variable that set it.

    Checked here rather than in the config model so that the streamer, which never loads ccxt,
    does not pay for importing it.
    """
    import ccxt

    if config.exchange.id not in ccxt.exchanges:
        raise ConfigError(
            f"{setting_source(('exchange', 'id'), origin)}: {config.exchange.id!r} is not a ccxt "
            "exchange id such as 'binance'"
        )
    for i, venue in enumerate(config.venues):
        if venue.id not in ccxt.exchanges:
            raise ConfigError(
                f"{setting_source(('venues', str(i), 'id'), origin)}: {venue.id!r} is not a ccxt "
                "exchange id such as 'binance' or 'okx'"
            )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the backfill command; ``prog`` names it in ``--help`` and errors (default: the script)."""
    args = parse_args(argv, prog)
    try:
        return _main(args)
    except KeyboardInterrupt:
        # Ctrl-C outside the event loop's own handlers (before or between its phases).
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        demo_db = demo_database(config, args.demo_db, args.demo_schema) if args.demo else None
    except ConfigError as exc:
        # Before the config is read there is no log file to record it in.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config, args.log_level)
    if args.migrate_demo_rows:
        return asyncio.run(run_demo_migration(config, apply=args.apply))
    if args.distributed:
        return run_producer(config, args)
    try:
        server = serve_metrics(args.metrics_port or config.metrics.port, host=config.metrics.host)
    except UsageError as exc:
        report_error(f"error: {exc}")
        return EXIT_USAGE
    try:
        if args.demo:
            code = asyncio.run(run_demo(config, monitor=args.monitor, database=demo_db))
        else:
            code = asyncio.run(run_collection(config, monitor=args.monitor))
        if args.stream and code in (EXIT_OK, EXIT_FAILED):
            streamed = run_streaming(config, demo=args.demo)
            code = streamed if streamed in (EXIT_USAGE, EXIT_INTERRUPTED) else max(code, streamed)
        return code
    finally:
        if server is not None:
            server.close()


def run_streaming(config: Config, *, demo: bool) -> int:
    """Stream the configured symbols into Redis until Ctrl-C; return the exit code."""
    from data_collector.cli.stream import run_stream_main

    return run_stream_main(config=config, demo=demo, monitor=get_default_monitor())
