"""``data-collector worker`` and ``data-collector collect --distributed`` (issue 17).

    data-collector worker [--config config.yaml] [--source-address 127.0.0.2] [--share-budget]
        [--queue URL] [--queue-schema dc_jobs] [--concurrency 4] [--name NAME] [--log-level INFO]
        [--incremental CRON [--window-days 30]]

The queue is procrastinate on PostgreSQL: by default the config's database, in schema dc_jobs.
The worker runs until stopped. Exit codes: 1 the queue or a server is unreachable; 2 usage or
configuration error (a config version other than the waiting jobs'); 130 Ctrl-C. However it stops
(Ctrl-C, SIGTERM, SIGKILL, the host dying), the jobs it was running go back to the queue once its
heartbeat has been silent for --stalled seconds, and another worker runs them.
--incremental CRON (e.g. '*/5 * * * *'; a 6th field is seconds) also brings every series of the
config up to date on that schedule: one run per tick however many workers have the flag. A bad
cron is a usage error (one line, exit 2).
The producer (``collect --distributed``) exits 0 when every job succeeded, 1 when some did not
(listed), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from data_collector.cli.collect import report_error
from data_collector.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error_exit_code
from data_collector.cli.logging_setup import setup_logging
from data_collector.cli.parser import LOG_LEVELS, OneLineParser, log_level
from data_collector.config import DEFAULT_CONFIG_PATH, Config, load_config
from data_collector.distributed.engine import EngineSettings
from data_collector.distributed.ledger import libpq_dsn
from data_collector.errors import CollectorError, ConfigError, UsageError

#: Days of one job's window (``collect --window-days``).
DEFAULT_WINDOW_DAYS = 30.0


def add_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", metavar="URL", help="PostgreSQL of the job queue (default: database.url)")
    parser.add_argument("--queue-schema", default="dc_jobs", help="the queue's schema (default dc_jobs)")


def engine_settings(config: Config, args: argparse.Namespace, **extra: float) -> EngineSettings:
    url = args.queue or config.database.url.get_secret_value()
    if not url.startswith("postgresql"):
        raise ConfigError(
            f"--queue / database.url: the job queue needs PostgreSQL, got {url.split(':')[0]}://"
        )
    return EngineSettings(dsn=libpq_dsn(url), schema=args.queue_schema, **extra)  # type: ignore[arg-type]


def run_producer(config: Config, args: argparse.Namespace) -> int:
    """``collect --distributed``: plan, enqueue, wait, print every worker's figures."""
    from data_collector.distributed.producer import run_distributed

    try:
        engine = engine_settings(config, args)
        report = asyncio.run(run_distributed(config, engine, window_days=args.window_days, out=sys.stdout))
    except CollectorError as exc:
        report_error(f"error: {exc}")
        return error_exit_code(exc)
    except KeyboardInterrupt:
        print("stopped waiting; the jobs stay queued and the workers go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report.summary(), flush=True)
    return EXIT_OK if not report.failed else EXIT_FAILED


def parse_worker_args(argv: list[str] | None, prog: str | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help=f"YAML config (default: ./{DEFAULT_CONFIG_PATH} if present)")
    parser.add_argument(
        "--source-address", metavar="IP", help="local address of exchange requests (this host's IP)"
    )
    parser.add_argument(
        "--share-budget",
        action="store_true",
        help="share the IP's rate limits (Binance's weight budget, OKX's per-endpoint windows) "
        "with other workers via Redis",
    )
    add_queue_options(parser)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs run at once (default 4)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats (default 2)")
    parser.add_argument(
        "--stalled", type=float, default=10.0, help="a worker silent this long is dead (default 10)"
    )
    parser.add_argument("--name", help="the worker's name in reports (default host:pid@address)")
    parser.add_argument(
        "--incremental", metavar="CRON", help="bring every series up to date on this cron (default: never)"
    )
    parser.add_argument(
        "--window-days", type=float, default=DEFAULT_WINDOW_DAYS, help="days per incremental job (default 30)"
    )
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", type=log_level, help=", ".join(LOG_LEVELS))
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.incremental is not None:
        from data_collector.distributed.incremental import check_cron

        try:
            check_cron(args.incremental)
        except UsageError as exc:
            parser.error(str(exc))
    return args


def worker_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from data_collector.distributed.worker import WorkerSettings, run_worker

    args = parse_worker_args(argv, prog)
    try:
        config = load_config(args.config)
        engine = engine_settings(
            config, args, heartbeat_s=args.heartbeat, stalled_s=args.stalled, concurrency=args.concurrency
        )
    except (ConfigError, CollectorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config, args.log_level)
    settings = WorkerSettings(
        engine,
        args.source_address,
        args.share_budget,
        name=args.name,
        ready_file=args.ready_file,
        incremental=args.incremental,
        window_days=args.window_days,
    )
    try:
        asyncio.run(run_worker(config, settings))
    except CollectorError as exc:
        report_error(f"error: worker: {exc}")
        return error_exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK
