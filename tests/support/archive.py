"""Candles to archive, and a process that archives with --prune and SIGKILLs itself at one step.

Run as ``python -m tests.support.archive URL SCHEMA PATH STEP DATA_TYPE``: it archives the data
type (``ohlcv`` or ``trades``) before :data:`CUTOFF_MS` with ``prune=True`` and kills itself with SIGKILL the first time the move
reaches ``STEP`` (``write``: the file being written is cut to half its bytes, as a kill in the
middle of writing leaves it, and not renamed; ``verify``: the file is in place, not yet read back;
``drop``: the rows are deleted, not yet committed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from data_collector.config import load_config
from data_collector.markets import HOUR_MS
from data_collector.storage import (
    CandleBatch,
    CandleStore,
    CoverageRange,
    Instrument,
    Trade,
    TradeBatch,
    TradeCoverage,
    open_store,
)
from data_collector.storage.archive import ArchiveSettings, ParquetArchive

VENUE = "binance"
SYMBOL = "SOL/USDT"
TIMEFRAME = "1h"
START_MS = 1_704_067_200_000  # 2024-01-01
CUTOFF_MS = 1_709_251_200_000  # 2024-03-01: January and February are closed before it
END_MS = 1_710_460_800_000  # 2024-03-15
#: An exchange-side gap inside January, recorded as 'empty'.
GAP = (START_MS + 100 * HOUR_MS, START_MS + 110 * HOUR_MS)


def store_config(url: str, schema: str) -> dict[str, object]:
    return {"database": {"url": url, "schema": schema}, "logging": {"file": None}}


def candles(start_ms: int, end_ms: int) -> list[tuple[int, float, float, float, float, float]]:
    return [
        (ts, 100 + (ts // HOUR_MS) % 37 * 0.01, 101.5, 99.25, 100.5, float(ts // HOUR_MS % 1000) / 8)
        for ts in range(start_ms, end_ms, HOUR_MS)
    ]


async def seed(store: CandleStore) -> Instrument:
    """Two and a half months of hourly candles with one 'empty' gap."""
    instrument = await store.ensure_instrument(VENUE, SYMBOL, base="SOL", quote="USDT")
    batches = [
        CandleBatch(
            instrument.id, TIMEFRAME, candles(START_MS, GAP[0]), [CoverageRange(START_MS, GAP[0], "data")]
        ),
        CandleBatch(instrument.id, TIMEFRAME, [], [CoverageRange(GAP[0], GAP[1], "empty")]),
        CandleBatch(
            instrument.id, TIMEFRAME, candles(GAP[1], END_MS), [CoverageRange(GAP[1], END_MS, "data")]
        ),
    ]
    await store.write(batches)
    return instrument


TRADE_STEP_MS = 10 * 60_000


def trades(first_id: int, end_id: int) -> list[Trade]:
    """One aggregate trade every 10 minutes from :data:`START_MS`, id ``i`` at ``START_MS + i * 10 min``."""
    return [
        (i, START_MS + i * TRADE_STEP_MS, 100 + i % 89 * 0.01, 0.5 + i % 7, 3 * i, 3 * i + 2, i % 3 == 0)
        for i in range(first_id, end_id)
    ]


async def seed_trades(store: CandleStore, instrument: Instrument) -> int:
    """Trades from January 1 to March 15 with their coverage; returns how many."""
    end_id = (END_MS - START_MS) // TRADE_STEP_MS
    await store.write_trades(
        [TradeBatch(instrument.id, trades(0, end_id), [TradeCoverage(0, end_id, START_MS, END_MS)])]
    )
    return end_id


async def archive_and_die(url: str, schema: str, path: str, step: str, data_type: str) -> None:
    def hook(at: str, path: str) -> None:
        if at == step:
            if at == "write":
                os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    archive = ParquetArchive(ArchiveSettings(Path(path)))
    async with open_store(load_config(store_config(url, schema))) as store:
        await archive.archive(store, VENUE, CUTOFF_MS, data_types=[data_type], prune=True, hook=hook)


if __name__ == "__main__":
    asyncio.run(archive_and_die(*sys.argv[1:6]))
