"""``--demo``: the whole backfill against the in-process simulator, with no servers and no internet.

It collects 3 symbols × the 6 default timeframes × 30 days and prints the summary and a few rows.
The demo never writes into the configured database: its rows go to SQLite at ``data/demo.db``
(relative to the current directory), or to the database given as ``demo_db`` (with a schema of
its own on PostgreSQL). Every row is labelled ``sim-binance`` (the simulator's ``exchange.name``),
so even a demo database shared with real data keeps them apart.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from data_collector.backfill.report import CollectionReport
from data_collector.cli.collect import run_collection
from data_collector.cli.exits import EXIT_OK, error_exit_code
from data_collector.config import Config, DatabaseConfig, with_exchange
from data_collector.demo_migration import DEMO_SEED, migrate_demo_rows
from data_collector.errors import CollectorError, ConfigError
from data_collector.markets import DEFAULT_TIMEFRAMES
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.storage import open_store
from data_collector.storage.url import parse_database_url

DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
DEMO_DAYS = 30
#: Relative to the current directory, as any relative SQLite URL is.
DEMO_SQLITE_URL = "sqlite+aiosqlite:///data/demo.db"
#: The PostgreSQL schema of a ``demo_db`` that names a PostgreSQL database.
DEMO_SCHEMA = "demo"


def demo_database(
    config: Config, demo_db: str | None = None, demo_schema: str = DEMO_SCHEMA
) -> DatabaseConfig:
    """Where the demo stores its rows: ``demo_db`` (schema ``demo_schema`` on PostgreSQL), else
    SQLite at ``data/demo.db``.

    Raises:
        ConfigError: ``demo_db`` is not a database URL, or it is the configured database and schema.
    """
    if demo_db is None:
        database = DatabaseConfig(url=DEMO_SQLITE_URL)
        if _same_database(database, config.database):
            raise ConfigError(
                "--demo: database.url is data/demo.db, the demo's own file; give the demo another with --demo-db"
            )
        return database
    try:
        database = DatabaseConfig.model_validate({"url": demo_db, "schema": demo_schema})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "--demo-schema" if "schema" in first["loc"] else "--demo-db"
        raise ConfigError(f"{where}: {str(first['msg']).replace('Value error, ', '')}") from None
    if _same_database(database, config.database):
        raise ConfigError(
            "--demo-db: that is the configured database and schema; the demo never writes there, "
            "name another database or --demo-schema"
        )
    return database


def _same_database(a: DatabaseConfig, b: DatabaseConfig) -> bool:
    try:
        url_a = parse_database_url(a.url.get_secret_value())
        url_b = parse_database_url(b.url.get_secret_value())
    except ConfigError:  # refused by the store later, with its own message
        return False
    if url_a.get_backend_name() != url_b.get_backend_name():
        return False
    if url_a.get_backend_name() == "sqlite":
        return Path(url_a.database or "").resolve() == Path(url_b.database or "").resolve()
    same_server = (url_a.host or "localhost", url_a.port or 5432, url_a.database) == (
        url_b.host or "localhost",
        url_b.port or 5432,
        url_b.database,
    )
    return same_server and a.db_schema == b.db_schema


def describe_database(database: DatabaseConfig) -> str:
    """``SQLite at /abs/path.db`` or ``PostgreSQL host:port/db, schema s`` (never the password)."""
    url = parse_database_url(database.url.get_secret_value())
    if url.get_backend_name() == "sqlite":
        return f"SQLite at {Path(url.database or '').resolve()}"
    return (
        f"PostgreSQL {url.host or 'localhost'}:{url.port or 5432}/{url.database}, schema {database.db_schema}"
    )


def demo_config(
    config: Config, exchange: dict[str, Any], out: IO[str], database: DatabaseConfig | None = None
) -> Config:
    """The demo's config: the simulator's exchange section, 30 days, the demo's own database."""
    demo = with_exchange(config, exchange)
    if "symbols" not in config.model_fields_set:
        demo.symbols = list(DEMO_SYMBOLS)
    if "timeframes" not in config.model_fields_set:
        demo.timeframes = list(DEFAULT_TIMEFRAMES)
    demo.start = f"{DEMO_DAYS}d"
    demo.end = None
    demo.database = database if database is not None else DatabaseConfig(url=DEMO_SQLITE_URL)
    print(
        f"demo: storing in {describe_database(demo.database)} as exchange {demo.exchange.name!r} "
        "(the configured database is not touched)",
        file=out,
        flush=True,
    )
    return demo


async def print_sample(collector: OptimizedDataCollector, report: CollectionReport, out: IO[str]) -> None:
    """A few of the stored rows: the last three 1h (or first configured) candles of each symbol."""
    timeframe = "1h" if "1h" in collector.config.timeframes else collector.config.timeframes[0]
    now_ms = collector.client.server_now_ms()
    for symbol in collector.config.symbols:
        frame = await collector.load_ohlcv(symbol, timeframe, now_ms - 6 * 3_600_000 * 24, now_ms)
        print(f"\n{symbol} {timeframe}, last rows:", file=out)
        print(frame.tail(3).to_string(), file=out)


async def run_demo(
    config: Config,
    *,
    monitor: bool = False,
    stream: IO[str] | None = None,
    seed: int = DEMO_SEED,
    database: DatabaseConfig | None = None,
) -> int:
    """Start the simulator, collect into the demo's database, print the summary and a few rows.

    Args:
        config: the user's config; its exchange and database sections are replaced.
        database: where to store (see :func:`demo_database`); default SQLite at ``data/demo.db``.

    Returns:
        The exit code.
    """
    from data_collector.simulator import SimulatedExchange

    out = stream or sys.stdout
    symbols = config.symbols if "symbols" in config.model_fields_set else list(DEMO_SYMBOLS)
    async with SimulatedExchange(symbols=symbols, seed=seed) as sim:
        demo = demo_config(config, sim.exchange_config(), out, database)

        async def after(collector: OptimizedDataCollector, report: CollectionReport) -> None:
            await print_sample(collector, report, out)

        code = await run_collection(demo, monitor=monitor, stream=out, after=after)
    return code


async def run_demo_migration(config: Config, *, apply: bool = False, stream: IO[str] | None = None) -> int:
    """``--migrate-demo-rows``: find (with ``apply``, remove) old demo rows in the configured
    database; print the report; return the exit code (see :mod:`data_collector.demo_migration`).
    """
    out = stream or sys.stdout
    print(
        f"checking {describe_database(config.database)} for demo rows under 'binance'", file=out, flush=True
    )
    try:
        async with open_store(config) as store:
            report = await migrate_demo_rows(
                store,
                exchange="binance",
                apply=apply,
                on_progress=lambda line: print(line, file=out, flush=True),
            )
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return error_exit_code(exc)
    print(report.summary(), file=out, flush=True)
    return EXIT_OK
