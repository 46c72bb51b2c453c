"""The USDⓈ-M futures REST and WebSocket routes (``/fapi/v1``, ``/futures/data``, ``fstream`` paths).

Parameters, limits, weights and errors follow Binance's USDⓈ-M API as ccxt 4.5 calls it; the
middleware (faults, outages, 429/418) is the spot one, charged to the futures budget.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from data_collector.markets import MINUTE_MS, TIMEFRAME_MS, candle_open_ms
from data_collector.simulator.formats import book_ticker, decimal8, klines_json, ticker_fields
from data_collector.simulator.fstreams import signed8
from data_collector.simulator.perp import FUNDING_MS, INTEREST_E8, PerpMarket
from data_collector.simulator.rest import ApiError, RestApi, _int_param, _limit, kline_params
from data_collector.simulator.usdm import FUTURES_TIMEFRAMES, OI_HISTORY_MS, OI_PERIODS, FuturesVenue

if TYPE_CHECKING:
    from data_collector.simulator.server import SimulatedExchange

_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]
_KLINES = {
    "klines": "last",
    "markPriceKlines": "mark",
    "indexPriceKlines": "index",
    "premiumIndexKlines": "premium",
}
_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)


def klines_weight(limit: int) -> int:
    """Binance USDⓈ-M klines weight: [1, 100) 1, [100, 500) 2, [500, 1000] 5, above 10."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def depth_weight(limit: int) -> int:
    """Binance USDⓈ-M depth weight: 5-50 2, 100 5, 500 10, 1000 20."""
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


class FuturesRestApi(RestApi):
    """Routes of a simulator's :class:`FuturesVenue`."""

    rest_prefixes = ("/fapi/", "/futures/")

    def __init__(self, sim: SimulatedExchange, venue: FuturesVenue) -> None:
        super().__init__(sim)
        self.venue = venue
        self.limiter = venue.limiter
        self.budgets = venue.budgets
        self.hub = venue.hub

    def endpoint(self, path: str) -> str:
        """``fapi/v1/klines``, ``futures/data/openInterestHist``: distinct from spot's names."""
        return path.strip("/")

    def add_routes(self, app: web.Application) -> None:
        add = app.router.add_get
        v1 = "/fapi/v1/"
        add(v1 + "ping", self._ping)
        add(v1 + "time", self._time)
        add(v1 + "exchangeInfo", self._exchange_info)
        for name in _KLINES:
            add(v1 + name, self._klines)
        add(v1 + "fundingRate", self._funding_rate)
        add(v1 + "premiumIndex", self._premium_index)
        add(v1 + "openInterest", self._open_interest)
        add(v1 + "aggTrades", self._agg_trades)
        add(v1 + "historicalTrades", self._historical_trades)
        add(v1 + "depth", self._depth)
        add(v1 + "ticker/bookTicker", self._book_ticker)
        add(v1 + "ticker/24hr", self._ticker_24hr)
        add("/futures/data/openInterestHist", self._open_interest_hist)
        add("/sim/stats", self._sim_stats)
        for base in ("", "/public", "/market"):
            add(base + "/ws", self._ws_raw)
            add(base + "/ws/{tail:.*}", self._ws_raw)
            add(base + "/stream", self._ws_combined)

    def _weight(self, key: str, request: web.Request) -> int:
        q = request.query
        name = key.rpartition("/")[2]
        if name in _KLINES:
            try:
                return klines_weight(int(q.get("limit", "500")))
            except ValueError:
                return 1
        if name in ("aggTrades", "historicalTrades"):
            return 20
        if name == "depth":
            try:
                return depth_weight(int(q.get("limit", "500")))
            except ValueError:
                return 2
        if name == "bookTicker":
            return 2 if "symbol" in q else 5
        if name == "premiumIndex":
            return 1 if "symbol" in q else 10
        if key.endswith("ticker/24hr"):
            return 1 if "symbol" in q else 40
        return 1

    def _perp(self, request: web.Request, param: str = "symbol", required: bool = True) -> PerpMarket | None:
        raw = request.query.get(param)
        if raw is None or raw == "":
            if required:
                raise ApiError(
                    -1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed."
                )
            return None
        market = self.venue.market_by_id.get(raw)
        if market is None:
            raise ApiError(-1121, "Invalid symbol.")
        return market

    # -- handlers ------------------------------------------------------------------------------

    async def _exchange_info(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        limits = [dict(x) for x in _RATE_LIMITS]
        limits[0]["limit"] = self.limiter.limit
        body = {
            "timezone": "UTC",
            "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": limits,
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [self._symbol_info(m, now) for m in self.venue.markets.values()],
        }
        return self._json(json.dumps(body, separators=(",", ":")))

    def _symbol_info(self, m: PerpMarket, now: int) -> dict[str, Any]:
        pd, qd = m.price_decimals, m.qty_decimals
        status = self.venue.status(m, now)
        return {
            "symbol": m.exchange_symbol,
            "pair": m.exchange_symbol,
            "contractType": "PERPETUAL",
            # Binance moves a delisted perpetual's deliveryDate to its delisting time.
            "deliveryDate": m.delisted_ms if m.delisted_ms is not None else 4133404800000,
            "onboardDate": m.listing_ms,
            "status": status,
            "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000",
            "baseAsset": m.base,
            "quoteAsset": m.quote,
            "marginAsset": m.quote,
            "pricePrecision": pd,
            "quantityPrecision": qd,
            "baseAssetPrecision": 8,
            "quotePrecision": 8,
            "underlyingType": "COIN",
            "underlyingSubType": [],
            "settlePlan": 0,
            "triggerProtect": "0.0500",
            "liquidationFee": "0.012500",
            "marketTakeBound": "0.05",
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": decimal8(1, pd),
                    "maxPrice": "1000000",
                    "tickSize": decimal8(1, pd),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": decimal8(1, qd),
                    "maxQty": "1000000",
                    "stepSize": decimal8(1, qd),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": decimal8(1, qd),
                    "maxQty": "1000000",
                    "stepSize": decimal8(1, qd),
                },
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
            ],
            "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        }

    async def _klines(self, request: web.Request) -> web.Response:
        price = _KLINES[request.path.rpartition("/")[2]]
        market = self._perp(request, "pair" if price == "index" else "symbol")
        assert market is not None
        interval, limit, start, end = kline_params(request, FUTURES_TIMEFRAMES, 1500)
        src = self.venue.series(market, price)
        rows = self._select_klines(src, interval, start, end, limit, self.sim.clock.now_ms())
        if price == "last":
            return self._json(klines_json(rows, market, interval))
        return self._json(self.venue.derived_json(src, rows, interval))

    async def _funding_rate(self, request: web.Request) -> web.Response:
        one = self._perp(request, required=False)
        limit = _limit(request, 100, 1000)
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        now = self.sim.clock.now_ms()
        items: list[dict[str, Any]] = []
        for m in [one] if one is not None else list(self.venue.markets.values()):
            if start is not None:
                times = m.funding_times(start, end if end is not None else now, now)[:limit]
            else:
                hi = end if end is not None else now
                times = m.funding_times(hi - limit * FUNDING_MS, hi, now)[-limit:]
            items += self.venue.funding(m, times)
        items.sort(key=lambda x: (x["fundingTime"], x["symbol"]))
        items = items[:limit] if start is not None else items[-limit:]
        return self._json(json.dumps(items, separators=(",", ":")))

    def _premium_obj(self, m: PerpMarket, now: int) -> dict[str, Any]:
        live = m.live_prices(now)
        if live is None:
            raise ApiError(-1121, "Invalid symbol.")
        _last, index, mark = live
        pd = m.price_decimals
        return {
            "symbol": m.exchange_symbol,
            "markPrice": decimal8(mark, pd),
            "indexPrice": decimal8(index, pd),
            "estimatedSettlePrice": decimal8(index, pd),
            "lastFundingRate": signed8(m.estimated_rate(now)),
            "interestRate": decimal8(INTEREST_E8, 8),
            "nextFundingTime": now - now % FUNDING_MS + FUNDING_MS,
            "time": now,
        }

    async def _premium_index(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        one = self._perp(request, required=False)
        if one is not None:
            return self._json(json.dumps(self._premium_obj(one, now), separators=(",", ":")))
        live = [m for m in self.venue.markets.values() if m.live_prices(now) is not None]
        return self._json(json.dumps([self._premium_obj(m, now) for m in live], separators=(",", ":")))

    async def _open_interest(self, request: web.Request) -> web.Response:
        m = self._perp(request)
        assert m is not None
        now = self.sim.clock.now_ms()
        if not m.is_trading(now // MINUTE_MS):
            raise ApiError(-1121, "Invalid symbol.")
        body = {
            "openInterest": decimal8(m.open_interest_now(now), m.qty_decimals),
            "symbol": m.exchange_symbol,
            "time": now,
        }
        return self._json(json.dumps(body, separators=(",", ":")))

    async def _open_interest_hist(self, request: web.Request) -> web.Response:
        m = self._perp(request)
        assert m is not None
        period = request.query.get("period")
        if period is None:
            raise ApiError(-1102, "Mandatory parameter 'period' was not sent, was empty/null, or malformed.")
        if period not in OI_PERIODS:
            raise ApiError(-1130, "Invalid data sent for a parameter.")
        limit = _limit(request, 30, 500)
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        now = self.sim.clock.now_ms()
        oldest = now - OI_HISTORY_MS
        # Binance serves only the latest 30 days and refuses a window reaching further back.
        if start is not None and start < oldest:
            raise ApiError(-1130, "parameter 'startTime' is invalid.")
        if end is not None and end < oldest:
            raise ApiError(-1130, "parameter 'endTime' is invalid.")
        if start is not None and end is not None and start > end:
            raise ApiError(-1023, "Start time is greater than end time.")
        hi = min(end if end is not None else now, now)
        if start is not None:
            times = self.venue.oi_times(m, period, start, hi)[:limit]
        else:
            lo = max(oldest, hi - limit * TIMEFRAME_MS[period])
            times = self.venue.oi_times(m, period, candle_open_ms(lo, period), hi)[-limit:]
        items = self.venue.open_interest_items(m, times)
        return self._json(json.dumps(items, separators=(",", ":")))

    async def _agg_trades(self, request: web.Request) -> web.Response:
        # The spot handler's rows, without the "M" field futures aggTrades do not have.
        resp = await super()._agg_trades(request)
        assert isinstance(resp.body, bytes)
        resp.body = resp.body.replace(b',"M":true', b"")
        return resp

    async def _historical_trades(self, request: web.Request) -> web.Response:
        # The spot handler's rows (this venue's trade tape), without spot's "isBestMatch".
        resp = await super()._historical_trades(request)
        assert isinstance(resp.body, bytes)
        resp.body = resp.body.replace(b',"isBestMatch":true', b"")
        return resp

    def _symbol(self, request: web.Request, required: bool = True) -> Any:
        return self._perp(request, required=required)

    async def _depth(self, request: web.Request) -> web.Response:
        m = self._perp(request)
        assert m is not None
        limit = _int_param(request, "limit", 500)
        if limit not in _DEPTH_LIMITS:
            raise ApiError(-1130, "Invalid data sent for a parameter.")
        now = self.sim.clock.now_ms()
        self.venue.advance_book(m, now)
        book = self.venue.books[m.symbol]
        bids, asks = book.top(limit)
        pd, qd = m.price_decimals, m.qty_decimals
        body = {
            "lastUpdateId": book.update_id,
            "E": now,
            "T": book.last_step_ms,
            "bids": [[decimal8(p, pd), decimal8(q, qd)] for p, q in bids],
            "asks": [[decimal8(p, pd), decimal8(q, qd)] for p, q in asks],
        }
        return self._json(json.dumps(body, separators=(",", ":")))

    def _book_ticker_obj(self, market: Any, now: int) -> dict[str, Any]:
        self.venue.advance_book(market, now)
        book = self.venue.books[market.symbol]
        return {**book_ticker(market, book.best()), "time": now, "lastUpdateId": book.update_id}

    async def _book_ticker(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        one = self._perp(request, required=False)
        if one is not None:
            return self._json(json.dumps(self._book_ticker_obj(one, now)))
        return self._json(json.dumps([self._book_ticker_obj(m, now) for m in self.venue.markets.values()]))

    async def _ticker_24hr(self, request: web.Request) -> web.Response:
        """Binance USDⓈ-M's 24 h rolling statistics: one ``symbol``, or every contract with a
        trade in the window or a delisted one's quiet day (no ``symbols`` list, no book fields)."""
        now = self.sim.clock.now_ms()
        one = self._perp(request, required=False)
        markets = [one] if one is not None else list(self.venue.markets.values())
        stats = [(m, self.sim.ticker_stats(m, now)) for m in markets]
        items = [ticker_fields(m, s, now) for m, s in stats if s is not None]
        if one is not None:
            if not items:
                raise ApiError(-1121, "Invalid symbol.")
            return self._json(json.dumps(items[0], separators=(",", ":")))
        return self._json(json.dumps(items, separators=(",", ":")))
