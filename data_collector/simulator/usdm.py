"""The USDⓈ-M futures venue of a simulator: its perpetuals, books, weight budget and stream hub.

Binance serves futures from other hosts than spot (``fapi.binance.com``, ``fstream.binance.com``)
with their own REQUEST_WEIGHT budget (2,400 a minute); the simulator mirrors that with a second
port, a second :class:`~data_collector.simulator.limits.WeightLimiter` and a second hub.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from data_collector.errors import UsageError
from data_collector.markets import TIMEFRAME_MS, candle_open_ms, stream_symbol
from data_collector.simulator.book import OrderBook, step_book
from data_collector.simulator.formats import close_times, decimal8, klines_json, signed_decimal
from data_collector.simulator.fstreams import signed8
from data_collector.simulator.limits import IpBudgets, SimClock, WeightLimiter
from data_collector.simulator.market import DayCache, Rows, SymbolMarket
from data_collector.simulator.perp import OI_STEP_MS, PerpMarket, settle_of
from data_collector.simulator.rng import stream_key
from data_collector.simulator.streams import StreamHub

if TYPE_CHECKING:
    from data_collector.simulator.server import SimulatedExchange

#: Periods of ``/futures/data/openInterestHist``.
OI_PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
#: How far back ``openInterestHist`` serves (Binance: the latest 30 days).
OI_HISTORY_MS = 30 * 86_400_000
#: Futures kline intervals (no ``1s``).
FUTURES_TIMEFRAMES = (
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
)
#: ``price`` names of :meth:`FuturesVenue.klines` (``last`` is the contract's own).
PRICES = ("last", "mark", "index", "premium")


def derived_klines_json(rows: Rows, decimals: int, timeframe: str) -> bytes:
    """mark/index/premium klines: OHLC (premium may be negative), count, zero volumes."""
    closes = close_times(rows.open_ms, timeframe).tolist()
    items = []
    for i, (t, o, h, low, c, n) in enumerate(
        zip(*(col.tolist() for col in (rows.open_ms, rows.o, rows.h, rows.l, rows.c, rows.n)), strict=True)
    ):
        prices = ",".join('"%s"' % signed_decimal(x, decimals) for x in (o, h, low, c))
        items.append('[%d,%s,"0",%d,"0",%d,"0","0","0"]' % (t, prices, closes[i], n))
    return ("[" + ",".join(items) + "]").encode()


class FuturesVenue:
    """Perpetuals of one simulator and everything per venue: books, budget, hub.

    Args:
        sim: the owning simulator (clock, seed, faults, stats).
        symbols: ``BASE/QUOTE`` or ``BASE/QUOTE:SETTLE`` perpetuals to list.
        weight_limit: REQUEST_WEIGHT per minute (Binance USDⓈ-M: 2,400).
        listings, gaps, delistings: per unified symbol, as for the spot markets.
        day_cache: shared with the spot markets.
    """

    def __init__(
        self,
        sim: SimulatedExchange,
        symbols: list[str],
        weight_limit: int,
        clock: SimClock,
        listings: dict[str, int],
        gaps: dict[str, list[tuple[int, int]]] | None,
        delistings: dict[str, int],
        day_cache: DayCache,
        ban_grace_ms: int,
        ban_base_s: int,
    ) -> None:
        if weight_limit <= 0:
            raise UsageError(f"futures_weight_limit must be > 0, got {weight_limit}")
        self.clock = clock
        self.markets: dict[str, PerpMarket] = {}
        for raw in symbols:
            spot, unified = settle_of(raw)
            sym_gaps = None if gaps is None else gaps.get(unified, gaps.get(spot, []))
            self.markets[unified] = PerpMarket(
                unified,
                sim.seed,
                listing_ms=listings.get(unified),
                gaps=sym_gaps,
                day_cache=day_cache,
                delisted_ms=delistings.get(unified),
            )
        self.market_by_id = {m.exchange_symbol: m for m in self.markets.values()}
        self.market_by_stream: dict[str, SymbolMarket] = {
            stream_symbol(m.symbol): m for m in self.markets.values()
        }
        self.books: dict[str, OrderBook] = {
            m.symbol: OrderBook(
                stream_key(sim.seed, u, "book"), 3_000_000_000 + stream_key(sim.seed, u, "uid") % 1_000_000
            )
            for u, m in self.markets.items()
        }
        self.limiter = WeightLimiter(weight_limit, clock, ban_grace_ms=ban_grace_ms, ban_base_s=ban_base_s)
        self.budgets = IpBudgets(self.limiter)
        self.hub = StreamHub(sim, self, futures=True)

    # -- lookups -----------------------------------------------------------------------------

    def market(self, symbol: str) -> PerpMarket:
        """``BTC/USDT:USDT``, ``BTC/USDT`` or ``BTCUSDT``; ``UsageError`` if not listed."""
        key = symbol.upper()
        hit = self.market_by_id.get(key) or self.markets.get(settle_of(key)[1])
        if hit is None:
            raise UsageError(f"perpetual {symbol!r} is not listed by this simulator")
        return hit

    def advance_book(self, market: SymbolMarket, now_ms: int) -> None:
        """Step ``market``'s book up to ``now_ms`` around the current price."""
        step_book(self.books[market.symbol], market, now_ms)

    def status(self, market: PerpMarket, now_ms: int) -> str:
        """``TRADING``, ``PENDING_TRADING`` before the listing, ``SETTLING`` once delisted."""
        if market.delisted_ms is not None and now_ms >= market.delisted_ms:
            return "SETTLING"
        return "TRADING" if now_ms >= market.listing_ms else "PENDING_TRADING"

    # -- the truth, as REST serves it ----------------------------------------------------------

    def series(self, market: PerpMarket, price: str) -> Any:
        """The candle source of ``price`` (``last``, ``mark``, ``index``, ``premium``)."""
        if price not in PRICES:
            raise UsageError(f"price must be one of {PRICES}, got {price!r}")
        return market if price == "last" else market.series[price]

    def klines(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, price: str = "last"
    ) -> list[list[Any]]:
        """Klines of ``price`` opening in ``[start_ms, end_ms)`` exactly as REST serves them."""
        if timeframe not in FUTURES_TIMEFRAMES:
            raise UsageError(f"unsupported futures timeframe {timeframe!r}")
        market = self.market(symbol)
        src = self.series(market, price)
        rows = src.candles(timeframe, start_ms, end_ms, self.clock.now_ms())
        body = (
            klines_json(rows, market, timeframe)
            if price == "last"
            else self.derived_json(src, rows, timeframe)
        )
        result: list[list[Any]] = json.loads(body)
        return result

    @staticmethod
    def derived_json(src: Any, rows: Rows, timeframe: str) -> bytes:
        return derived_klines_json(rows, src.price_decimals, timeframe)

    def funding(self, market: PerpMarket, times: list[int]) -> list[dict[str, Any]]:
        """``fundingRate`` items of ``market`` at ``times``."""
        rates = market.funding_rates(times)
        marks = market.mark_at(times)
        pd = market.price_decimals
        return [
            {
                "symbol": market.exchange_symbol,
                "fundingTime": t,
                "fundingRate": signed8(r),
                "markPrice": decimal8(mk, pd),
            }
            for t, r, mk in zip(times, rates, marks, strict=True)
        ]

    def funding_history(self, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """Every settlement in ``[start_ms, end_ms]`` up to now, as REST serves them."""
        market = self.market(symbol)
        return self.funding(market, market.funding_times(start_ms, end_ms, self.clock.now_ms()))

    def oi_times(self, market: PerpMarket, period: str, start_ms: int, end_ms: int) -> list[int]:
        """Sample times of ``period`` in ``[start_ms, end_ms]`` while listed, up to now."""
        step = TIMEFRAME_MS[period]
        now = self.clock.now_ms()
        lo = max(start_ms, market.listing_ms)
        first = candle_open_ms(lo, period)
        if first < lo:
            first += step
        last = min(end_ms, now)
        if market.delisted_ms is not None:
            last = min(last, market.delisted_ms - 1)
        return list(range(first, last + 1, step)) if last >= first else []

    def open_interest_items(self, market: PerpMarket, times: list[int]) -> list[dict[str, Any]]:
        """``openInterestHist`` items at ``times`` (OI times the mark at that moment)."""
        if not times:
            return []
        arr = np.array(times, dtype=np.int64)
        oi = market.open_interest(arr - arr % OI_STEP_MS).tolist()
        marks = market.mark_at(times)
        pd, qd = market.price_decimals, market.qty_decimals
        scale = pd + qd - 8
        return [
            {
                "symbol": market.exchange_symbol,
                "sumOpenInterest": decimal8(q, qd),
                "sumOpenInterestValue": decimal8(
                    q * mk // 10**scale if scale > 0 else q * mk * 10**-scale, 8
                ),
                "timestamp": t,
            }
            for t, q, mk in zip(times, oi, marks, strict=True)
        ]

    def open_interest_history(
        self, symbol: str, period: str, start_ms: int, end_ms: int
    ) -> list[dict[str, Any]]:
        """``openInterestHist`` items in ``[start_ms, end_ms]`` (no 30-day limit: the truth)."""
        if period not in OI_PERIODS:
            raise UsageError(f"period must be one of {OI_PERIODS}, got {period!r}")
        market = self.market(symbol)
        return self.open_interest_items(market, self.oi_times(market, period, start_ms, end_ms))
