"""``data-collector archive``: move closed months of candles and trades to the Parquet tier, verified.

    data-collector archive [--config config.yaml] [--older-than 90d|2024-01-01] [--prune]
        [--path data/archive] [--venue binance]

Without ``--prune`` the months are written and verified and stay in PostgreSQL as well; with it,
each verified month is deleted from PostgreSQL and its coverage marked archived, in one
transaction. Exit codes: 0 done; 1 a server unreachable, the disk full, or a month that did not
verify (named on stderr, left in the database); 2 a bad option or config, an unwritable path,
``--older-than`` in the future, or a dataset written by a newer version.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from data_collector.cli.exits import EXIT_FAILED, EXIT_OK, error_exit_code
from data_collector.cli.parser import OneLineParser
from data_collector.config import Config, load_config
from data_collector.errors import CollectorError
from data_collector.storage import open_store
from data_collector.storage.archive import (
    ArchiveReport,
    ArchiveSettings,
    ParquetArchive,
    cutoff_ms,
    dataset_path,
)


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config file (default: ./config.yaml if present)")
    parser.add_argument(
        "--older-than",
        help="move closed months ending before this: 90d, 12w or an ISO date (archive.older_than)",
    )
    parser.add_argument("--prune", action="store_true", help="delete verified months from PostgreSQL")
    parser.add_argument("--path", help="the dataset's directory (default: archive.path)")
    parser.add_argument(
        "--venue",
        help="venue label (default: exchange.name and the perpetual venue's, futures_exchange.name)",
    )
    return parser.parse_args(argv)


async def run_archive(config: Config, args: argparse.Namespace) -> ArchiveReport:
    """Open the configured store, archive, close the store."""
    settings = ArchiveSettings.from_config(config)
    if args.path:
        settings = ArchiveSettings(path=dataset_path(args.path), row_group_rows=settings.row_group_rows)
    cutoff = cutoff_ms(args.older_than or config.archive.older_than)  # before anything is opened
    archive = ParquetArchive(settings)
    async with open_store(config) as store:
        venues = [args.venue] if args.venue else [config.exchange.name, config.futures_venue().name]
        return await archive.archive_ohlcv(store, list(dict.fromkeys(venues)), cutoff, prune=args.prune)


def main(argv: list[str] | None = None, prog: str = "data-collector archive") -> int:
    """Archive and print the summary; return the exit code."""
    args = parse_args(argv, prog)
    try:
        report = asyncio.run(run_archive(load_config(args.config), args))
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return error_exit_code(exc)
    print(report.summary(), flush=True)
    for line in report.failed:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_FAILED if report.failed else EXIT_OK
