"""``--demo``: the whole backfill against the in-process simulator, with no servers and no internet.

It collects 3 symbols × the 6 default timeframes × 30 days into the configured PostgreSQL when a
quick connect probe reaches it, else into SQLite at ``data/demo.db``, then prints the summary and
a few rows.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO, Any
from urllib.parse import urlsplit

from data_collector.backfill.report import CollectionReport
from data_collector.cli.collect import run_collection
from data_collector.config import Config
from data_collector.markets import DEFAULT_TIMEFRAMES
from data_collector.optimized_collector import OptimizedDataCollector

DEMO_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
DEMO_DAYS = 30
DEMO_SQLITE_URL = "sqlite+aiosqlite:///data/demo.db"
PROBE_TIMEOUT_S = 1.0


async def postgres_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the PostgreSQL host and port of ``url`` opens in time."""
    if not url.startswith("postgresql"):
        return False
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def demo_config(config: Config, exchange: dict[str, Any], out: IO[str]) -> Config:
    """The demo's config: the simulator's exchange section, 30 days, PostgreSQL or SQLite."""
    demo = config.model_copy(deep=True)
    demo.exchange = type(config.exchange)(**{**config.exchange.model_dump(), **exchange})
    if "symbols" not in config.model_fields_set:
        demo.symbols = list(DEMO_SYMBOLS)
    if "timeframes" not in config.model_fields_set:
        demo.timeframes = list(DEFAULT_TIMEFRAMES)
    demo.start = f"{DEMO_DAYS}d"
    demo.end = None
    url = config.database.url.get_secret_value()
    if await postgres_reachable(url):
        print("demo: storing in the configured PostgreSQL", file=out)
    else:
        print(
            f"demo: PostgreSQL is not reachable; storing in SQLite at {DEMO_SQLITE_URL.split('///')[1]}",
            file=out,
        )
        demo.database = type(config.database)(url=DEMO_SQLITE_URL)
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
    config: Config, *, monitor: bool = False, stream: IO[str] | None = None, seed: int = 42
) -> int:
    """Start the simulator, collect, print the summary and a few rows; return the exit code."""
    from data_collector.simulator import SimulatedExchange

    out = stream or sys.stdout
    symbols = config.symbols if "symbols" in config.model_fields_set else list(DEMO_SYMBOLS)
    async with SimulatedExchange(symbols=symbols, seed=seed) as sim:
        demo = await demo_config(config, sim_exchange_section(sim), out)

        async def after(collector: OptimizedDataCollector, report: CollectionReport) -> None:
            await print_sample(collector, report, out)

        code = await run_collection(demo, monitor=monitor, stream=out, after=after)
    return code


def sim_exchange_section(sim: Any) -> dict[str, Any]:
    """The ``exchange`` config section that points ccxt at the simulator."""
    if hasattr(sim, "exchange_config"):
        return dict(sim.exchange_config())
    ccxt_config = sim.ccxt_config()
    return {"id": "binance", "urls": ccxt_config.get("urls", {}), "options": ccxt_config.get("options", {})}
