"""Fakes for the collector's unit tests of pure orchestration logic (the real tests use the
simulator and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from data_collector.markets import CODE_TIMEFRAMES, MINUTE_MS, TIMEFRAME_CODES, candle_opens
from data_collector.storage.base import Candle, CandleBatch, CoverageRange, Instrument, WriteResult
from data_collector.storage.ranges import cut_coverage
from data_collector.storage.store import CandleStore


class MemoryStore(CandleStore):
    """An in-memory CandleStore."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, str], Instrument] = {}
        self.rows: dict[tuple[int, str], dict[int, Candle]] = {}
        self.cov: dict[tuple[int, str], list[CoverageRange]] = {}
        self.writes = 0
        self.closed = 0
        self.fail_next_writes = 0

    async def initialize(self) -> None:
        return None

    async def close(self) -> None:
        self.closed += 1

    async def ensure_instrument(
        self, exchange: str, symbol: str, *, base: str, quote: str, market_type: str = "spot"
    ) -> Instrument:
        key = (exchange, symbol)
        if key not in self.by_key:
            self.by_key[key] = Instrument(len(self.by_key) + 1, exchange, symbol, base, quote, market_type)
        return self.by_key[key]

    async def set_listing(self, instrument_id: int, listing_ms: int | None) -> None:
        for key, inst in self.by_key.items():
            if inst.id == instrument_id:
                self.by_key[key] = Instrument(
                    inst.id, inst.exchange, inst.symbol, inst.base, inst.quote, inst.market_type, listing_ms
                )

    async def write(self, batches: Sequence[CandleBatch]) -> WriteResult:
        await asyncio.sleep(0)
        if self.fail_next_writes:
            self.fail_next_writes -= 1
            from data_collector.errors import TransientError

            raise TransientError("injected write failure")
        self.writes += 1
        result = WriteResult()
        for b in batches:
            rows = self.rows.setdefault((b.instrument_id, b.timeframe), {})
            for c in b.candles:
                if c[0] in rows:
                    result.skipped += 1
                else:
                    rows[c[0]] = c
                    result.written += 1
            self.cov.setdefault((b.instrument_id, b.timeframe), []).extend(b.coverage)
        return result

    async def _coverage_rows(self, instrument_id: int, code: int) -> list[CoverageRange]:
        return list(self.cov.get((instrument_id, CODE_TIMEFRAMES[code]), []))

    async def _venue_coverage_rows(
        self, exchange: str, start_ms: int, end_ms: int
    ) -> list[tuple[int, int, CoverageRange]]:
        ids = {i.id for (e, _), i in self.by_key.items() if e == exchange}
        return [
            (i, TIMEFRAME_CODES[tf], r)
            for (i, tf), ranges in self.cov.items()
            if i in ids
            for r in ranges
            if r.end_ms > start_ms and r.start_ms < end_ms
        ]

    async def _count_rows(self, instrument_id: int, code: int, spans: Sequence[tuple[int, int]]) -> list[int]:
        rows = self.rows.get((instrument_id, CODE_TIMEFRAMES[code]), {})
        return [sum(1 for t in rows if s <= t < e) for s, e in spans]

    async def _load_ts(self, instrument_id: int, code: int, start_ms: int, end_ms: int) -> list[int]:
        rows = self.rows.get((instrument_id, CODE_TIMEFRAMES[code]), {})
        return sorted(t for t in rows if start_ms <= t < end_ms)

    async def instruments(self, exchange: str) -> list[Instrument]:
        return sorted((i for (e, _), i in self.by_key.items() if e == exchange), key=lambda i: i.id)

    async def remove_candles(
        self, instrument_id: int, timeframe: str, ts: Sequence[int], uncover: Sequence[CoverageRange]
    ) -> int:
        rows = self.rows.get((instrument_id, timeframe), {})
        removed = sum(1 for t in ts if rows.pop(t, None) is not None)
        key = (instrument_id, timeframe)
        self.cov[key] = cut_coverage(self.cov.get(key, []), uncover)
        return removed

    async def get_instrument(self, exchange: str, symbol: str) -> Instrument | None:
        return self.by_key.get((exchange, symbol))

    async def load(self, instrument_id: int, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
        rows = self.rows.get((instrument_id, timeframe), {})
        return [rows[t] for t in sorted(rows) if start_ms <= t < end_ms]

    async def latest_ts(self, instrument_id: int, timeframe: str) -> int | None:
        rows = self.rows.get((instrument_id, timeframe), {})
        return max(rows) if rows else None

    async def newest_candles(
        self, exchange: str, symbols: Sequence[str], timeframes: Sequence[str]
    ) -> dict[tuple[str, str], int]:
        newest: dict[tuple[str, str], int] = {}
        for symbol in symbols:
            inst = self.by_key.get((exchange, symbol))
            for tf in timeframes:
                rows = self.rows.get((inst.id, tf), {}) if inst is not None else {}
                if rows:
                    newest[(symbol, tf)] = max(rows)
        return newest

    async def server_version(self) -> str:
        return "memory"


def fake_candle(symbol: str, ts: int) -> list[Any]:
    base = 100.0 + (hash(symbol) % 50) + (ts // MINUTE_MS) % 17
    return [ts, base, base + 2, base - 1, base + 1, 10.0]


class FakeExchange:
    """Enough of ccxt's binance for the collector: markets, time and OHLCV pages."""

    id = "binance"
    rateLimit = 50
    timeframes = {tf: tf for tf in ("1m", "5m", "15m", "1h", "4h", "1d")}

    def __init__(self, symbols: Sequence[str], listing_ms: int, gaps: Sequence[tuple[int, int]] = ()) -> None:
        self.markets = {
            s: {"symbol": s, "base": s.split("/")[0], "quote": s.split("/")[1], "type": "spot"}
            for s in symbols
        }
        self.listing_ms = listing_ms
        self.gaps = list(gaps)
        self.has = {"fetchTime": True}
        self.enableLastJsonResponse = False
        self.last_json_response: Any = None
        self.calls: list[tuple[str, str, int | None]] = []
        self.fail: dict[str, BaseException] = {}
        self.closed = False
        self.delay_s = 0.0

    async def load_markets(self) -> dict[str, Any]:
        self.last_json_response = {
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}
            ]
        }
        return self.markets

    async def fetch_time(self) -> int:
        import time

        return int(time.time() * 1000)

    def feature_value(
        self, symbol: str, method: str | None = None, param: str | None = None, default: object = None
    ) -> object:
        """ccxt's documented maximums: Binance spot serves at most 1000 klines an answer."""
        return 1000 if (method, param) == ("fetchOHLCV", "limit") else default

    async def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str,
        since: int | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[list[Any]]:
        self.calls.append((symbol, timeframe, since))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if symbol in self.fail:
            raise self.fail[symbol]
        until = (params or {}).get("until")
        end = (until + 1) if until is not None else 2**62
        start = max(since or 0, self.listing_ms)
        if timeframe != "1m" and since == 0:
            return []
        if since == 0 and limit == 1:
            return [fake_candle(symbol, self.listing_ms)]
        opens = candle_opens(start, min(end, start + (limit or 500) * 86_400_000 * 31), timeframe)[
            : limit or 500
        ]
        return [fake_candle(symbol, t) for t in opens if not any(a <= t < b for a, b in self.gaps)]

    async def close(self) -> None:
        self.closed = True
