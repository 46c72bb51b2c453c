"""Small helpers shared by the chaos scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg

from data_collector.markets import CODE_TIMEFRAMES

#: Stored or true candles: (symbol, timeframe, open ms) -> (open, high, low, close, volume).
Candles = dict[tuple[str, str, int], tuple[float, ...]]


@dataclass
class Outcome:
    """How a call under fault ended: its result or its error, and how long it took."""

    what: str
    elapsed_s: float
    result: Any = None
    error: BaseException | None = None
    hung: bool = False

    def __str__(self) -> str:
        how = "HUNG" if self.hung else type(self.error).__name__ if self.error else "ok"
        return f"{self.what}: {how} after {self.elapsed_s:.2f}s"


async def bounded(what: str, call: Awaitable[Any], guard_s: float) -> Outcome:
    """Await ``call`` under an outer guard of ``guard_s``; a call still running then has *hung*.

    The guard is far above the configured timeout, so a pass never depends on the machine's speed:
    it only catches calls that would otherwise wait forever.
    """
    started = time.monotonic()
    guard = asyncio.timeout(guard_s)
    try:
        async with guard:
            result = await call
    except TimeoutError as exc:
        return Outcome(what, time.monotonic() - started, error=exc, hung=guard.expired())
    except Exception as exc:
        return Outcome(what, time.monotonic() - started, error=exc)
    return Outcome(what, time.monotonic() - started, result=result)


async def stored_candles(conn: asyncpg.Connection, schema: str) -> tuple[Candles, int]:
    """Every candle stored in ``schema`` and the number of rows (more rows than keys: duplicates)."""
    rows = await conn.fetch(
        f'SELECT i.symbol, o.timeframe, o.ts, o.open, o.high, o.low, o.close, o.volume FROM "{schema}".ohlcv o '
        f'JOIN "{schema}".instruments i ON i.id = o.instrument_id'
    )
    stored = {(r[0], CODE_TIMEFRAMES[r[1]], int(r[2])): tuple(float(x) for x in r[3:8]) for r in rows}
    return stored, len(rows)
