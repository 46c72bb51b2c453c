"""``data-collector migrate-partitions``: move plain ``ohlcv`` and ``trades`` tables into monthly
partitions.

    data-collector migrate-partitions [--config config.yaml]

For databases created before ``ohlcv`` or ``trades`` was partitioned (see
:mod:`data_collector.storage.postgres_migrate`). Stop the collectors first; the step is
resumable: after a kill or a crash, run it again and it carries on, nothing lost or doubled.
Exit codes: 0 done (or nothing to do); 1 the server unreachable or a statement failed; 2 a bad
option or config, or a database that is not PostgreSQL or has no ``ohlcv`` table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from data_collector.cli.exits import EXIT_OK, error_exit_code
from data_collector.cli.parser import OneLineParser
from data_collector.config import Config, load_config
from data_collector.errors import CollectorError, UsageError
from data_collector.storage import open_store
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.postgres_migrate import MigrationReport, migrate_ohlcv


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config file (default: ./config.yaml if present)")
    return parser.parse_args(argv)


async def run_migration(config: Config) -> MigrationReport:
    """Open the configured store (not initialised: it refuses while a migration is half done),
    migrate, close it."""
    store = open_store(config)
    try:
        if not isinstance(store, PostgresCandleStore):
            raise UsageError(
                "migrate-partitions: database.url is not PostgreSQL; only its ohlcv and trades are partitioned"
            )
        return await migrate_ohlcv(store)
    finally:
        await store.close()


def main(argv: list[str] | None = None, prog: str = "data-collector migrate-partitions") -> int:
    """Migrate and print the summary; return the exit code."""
    args = parse_args(argv, prog)
    try:
        report = asyncio.run(run_migration(load_config(args.config)))
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return error_exit_code(exc)
    print(report.summary(), flush=True)
    return EXIT_OK
