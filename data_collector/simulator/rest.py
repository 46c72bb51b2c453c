"""The REST and WebSocket routes of the simulator: parameters, weights, faults, Binance errors.

Long because it holds one route per Binance endpoint that ccxt calls, each with its parameter
checks, weight and errors: the endpoint table reads best in one place.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from data_collector.markets import MINUTE_MS, TIMEFRAME_MS, TIMEFRAMES, candle_open_ms, next_open_ms
from data_collector.simulator.formats import agg_trade_json, book_ticker, decimal8, klines_json, symbol_info
from data_collector.simulator.limits import endpoint_key
from data_collector.simulator.market import Rows, SymbolMarket, Trade
from data_collector.simulator.streams import StreamError

if TYPE_CHECKING:
    from data_collector.simulator.server import SimulatedExchange

_SYMBOL_PARAM = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
_HTML_5XX = {
    502: b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
    503: b"<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>",
    504: b"<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 Gateway Time-out</h1></center></body></html>",
}
_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]


class ApiError(Exception):
    """A Binance error answer: HTTP status plus ``{"code", "msg"}``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def _int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(
            -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
        ) from None


def _limit(request: web.Request, default: int, maximum: int) -> int:
    limit = _int_param(request, "limit", default)
    assert limit is not None
    if limit <= 0:
        raise ApiError(-1130, "Invalid data sent for a parameter.")
    return min(limit, maximum)


def kline_params(
    request: web.Request, intervals: tuple[str, ...], limit_max: int
) -> tuple[str, int, int | None, int | None]:
    """``interval``, ``limit`` (default 500), ``startTime`` and ``endTime`` of a klines request."""
    interval = request.query.get("interval")
    if interval is None:
        raise ApiError(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
    if interval not in intervals:
        raise ApiError(-1120, "Invalid interval.")
    limit = _limit(request, 500, limit_max)
    start = _int_param(request, "startTime")
    end = _int_param(request, "endTime")
    if start is not None and end is not None and start > end:
        raise ApiError(-1023, "Start time is greater than end time.")
    return interval, limit, start, end


class RestApi:
    """Routes of one :class:`SimulatedExchange`; all state lives on the simulator."""

    #: Path prefixes that are REST calls (weighed, counted, faulted).
    rest_prefixes: tuple[str, ...] = ("/api/",)

    def __init__(self, sim: SimulatedExchange) -> None:
        self.sim = sim
        self.limiter = sim.limiter
        self.budgets = sim.budgets
        self.hub = sim.hub

    def endpoint(self, path: str) -> str:
        """The name faults and stats know this path by (``klines`` for ``/api/v3/klines``)."""
        return endpoint_key(path) or path

    def add_routes(self, app: web.Application) -> None:
        """Register every REST and WebSocket path."""
        add = app.router.add_get
        add("/api/v3/ping", self._ping)
        add("/api/v3/time", self._time)
        add("/api/v3/exchangeInfo", self._exchange_info)
        add("/api/v3/klines", self._klines)
        add("/api/v3/uiKlines", self._klines)
        add("/api/v3/aggTrades", self._agg_trades)
        add("/api/v3/trades", self._recent_trades)
        add("/api/v3/historicalTrades", self._historical_trades)
        add("/api/v3/depth", self._depth)
        add("/api/v3/ticker/24hr", self._ticker_24hr)
        add("/api/v3/ticker/bookTicker", self._book_ticker)
        add("/api/v3/ticker/price", self._ticker_price)
        add("/sim/stats", self._sim_stats)
        add("/ws", self._ws_raw)
        add("/ws/{tail:.*}", self._ws_raw)
        add("/stream", self._ws_combined)
        add("/stream/ws", self._ws_raw)
        add("/stream/ws/{tail:.*}", self._ws_raw)

    # -- middleware ----------------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sim/"):
            return await handler(request)
        if not path.startswith(self.rest_prefixes):
            if self.sim.in_outage():
                self.sim._stats["outage"] += 1
                return self._html(503)
            return await handler(request)
        key = self.endpoint(path)
        self.sim._stats["requests"] += 1
        self.sim._by_endpoint[key] += 1
        if self.sim.request_log is not None:
            self.sim.request_log.append((key, dict(request.query)))
        await self.sim.rest_gate()
        f = self.sim._endpoint_faults.get(key, self.sim._global_faults)
        if f.latency_ms or f.jitter_ms:
            await asyncio.sleep((f.latency_ms + f.jitter_ms * self.sim._rng.random()) / 1000.0)
        if self.sim.in_outage():
            self.sim._stats["outage"] += 1
            return self._html(503)
        if f.any_fault():
            r = self.sim._rng.random
            if f.reset_rate and r() < f.reset_rate:
                self.sim._stats["reset"] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            if f.hang_rate and r() < f.hang_rate:
                self.sim._stats["hang"] += 1
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.sim._hanging.add(fut)
                try:
                    await asyncio.wait_for(fut, 3600)
                finally:
                    self.sim._hanging.discard(fut)
                return self._html(504)
            if f.error_rate and r() < f.error_rate:
                self.sim._stats["error"] += 1
                return self._html(self.sim._rng.choice((502, 503, 504)))
        weight = self._weight(key, request)
        limiter = self.budgets.for_ip(request.remote)
        verdict = limiter.admit(weight)
        headers = {"X-MBX-USED-WEIGHT-1M": str(verdict.used)}
        if verdict.status != 200:
            headers["Retry-After"] = str(verdict.retry_after_s)
            self.sim._by_status[verdict.status] += 1
            if verdict.status == 429:
                msg = (
                    f"Too much request weight used; current limit is {limiter.limit} request weight "
                    "per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
                )
                body = json.dumps({"code": -1003, "msg": msg})
            else:
                until = self.sim.clock.now_ms() + verdict.retry_after_s * 1000
                body = json.dumps(
                    {
                        "code": -1003,
                        "msg": f"Way too much request weight used; IP banned until {until}. Please use WebSocket Streams for live updates to avoid bans.",
                    }
                )
            return web.Response(
                status=verdict.status, text=body, content_type="application/json", headers=headers
            )
        self.sim._stats["weight"] += weight
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = web.Response(
                status=exc.status,
                text=json.dumps({"code": exc.code, "msg": exc.msg}),
                content_type="application/json",
            )
        resp.headers.update(headers)
        self.sim._by_status[resp.status] += 1
        if (
            f.malformed_rate
            and isinstance(resp, web.Response)
            and resp.body
            and self.sim._rng.random() < f.malformed_rate
        ):
            self.sim._stats["malformed"] += 1
            whole = bytes(resp.body)  # type: ignore[arg-type]
            resp.body = whole[: max(1, len(whole) // 2)]
        return resp

    def _weight(self, key: str, request: web.Request) -> int:
        q = request.query
        if key == "exchangeInfo":
            return 20
        if key in ("klines", "uiKlines"):
            return 2
        if key == "aggTrades":
            return 4
        if key in ("trades", "historicalTrades"):
            return 25
        if key == "depth":
            try:
                limit = int(q.get("limit", "100"))
            except ValueError:
                return 5
            return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
        if key == "ticker/24hr":
            if "symbol" in q:
                return 2
            if "symbols" in q:
                n = q["symbols"].count(",") + 1
                return 2 if n <= 20 else 40 if n <= 100 else 80
            return 80
        if key == "ticker/bookTicker":
            return 2 if "symbol" in q else 4
        if key == "ticker/price":
            return 2 if "symbol" in q else 4
        return 1

    @staticmethod
    def _html(status: int) -> web.Response:
        return web.Response(
            status=status, body=_HTML_5XX.get(status, b"<html>error</html>"), content_type="text/html"
        )

    @staticmethod
    def _json(body: bytes | str) -> web.Response:
        return web.Response(
            body=body.encode() if isinstance(body, str) else body, content_type="application/json"
        )

    def _symbol(self, request: web.Request, required: bool = True) -> SymbolMarket | None:
        raw = request.query.get("symbol")
        if raw is None:
            if required:
                raise ApiError(
                    -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
                )
            return None
        if not _SYMBOL_PARAM.match(raw):
            raise ApiError(
                -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."
            )
        market = self.sim.market_by_id.get(raw)
        if market is None:
            raise ApiError(-1121, "Invalid symbol.")
        return market

    def _symbols_list(self, request: web.Request) -> list[SymbolMarket] | None:
        raw = request.query.get("symbols")
        if raw is None:
            return None
        try:
            names = json.loads(raw)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError
        except ValueError:
            raise ApiError(-1100, "Illegal characters found in parameter 'symbols'.") from None
        out = []
        for name in names:
            market = self.sim.market_by_id.get(name)
            if market is None:
                raise ApiError(-1121, "Invalid symbol.")
            out.append(market)
        return out

    # -- REST handlers -------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return self._json(b"{}")

    async def _time(self, request: web.Request) -> web.Response:
        return self._json('{"serverTime":%d}' % self.sim.clock.now_ms())

    async def _exchange_info(self, request: web.Request) -> web.Response:
        markets = list(self.sim.markets.values())
        one = self._symbol(request, required=False)
        several = self._symbols_list(request)
        if one is not None:
            markets = [one]
        elif several is not None:
            markets = several
        limits = [dict(x) for x in _RATE_LIMITS]
        limits[0]["limit"] = self.sim.limiter.limit
        return self._json(
            json.dumps(
                {
                    "timezone": "UTC",
                    "serverTime": self.sim.clock.now_ms(),
                    "rateLimits": limits,
                    "exchangeFilters": [],
                    "symbols": [symbol_info(m, self.sim.clock.now_ms()) for m in markets],
                },
                separators=(",", ":"),
            )
        )

    async def _klines(self, request: web.Request) -> web.Response:
        market = self._symbol(request)
        assert market is not None
        interval, limit, start, end = kline_params(request, TIMEFRAMES, self.sim.klines_limit_max)
        now = self.sim.clock.now_ms()
        rows = self._select_klines(market, interval, start, end, limit, now)
        return self._json(klines_json(rows, market, interval))

    def _select_klines(
        self, market: SymbolMarket, tf: str, start: int | None, end: int | None, limit: int, now: int
    ) -> Rows:
        last_open = candle_open_ms(min(end if end is not None else now, now), tf)
        hi = next_open_ms(last_open, tf)
        if start is not None:
            # The candle holding the listing opens before it (the 13:00 hour of a 13:37 listing):
            # Binance serves it to any startTime up to its open, as sim.klines() has it.
            lo = max(start, candle_open_ms(market.listing_ms, tf))
            parts: list[Rows] = []
            got = 0
            while got < limit and lo < hi:
                span_end = min(hi, self._span(lo, tf, limit - got, forward=True))
                rows = market.candles(tf, lo, span_end, now)
                rows = self._from(rows, start)
                parts.append(rows)
                got += len(rows)
                lo = span_end
            return self._cat(parts, limit, keep_last=False)
        parts = []
        got = 0
        lo_bound = candle_open_ms(market.listing_ms, tf)
        while got < limit and hi > lo_bound:
            span_start = max(lo_bound, self._span(hi, tf, limit - got, forward=False))
            rows = market.candles(tf, span_start, hi, now)
            parts.insert(0, rows)
            got += len(rows)
            hi = span_start
        return self._cat(parts, limit, keep_last=True)

    @staticmethod
    def _from(rows: Rows, start: int) -> Rows:
        if len(rows) and int(rows.open_ms[0]) < start:
            keep = rows.open_ms >= start
            return Rows(*(f[keep] for f in rows))
        return rows

    @staticmethod
    def _span(at: int, tf: str, count: int, forward: bool) -> int:
        if tf != "1M":
            step = TIMEFRAME_MS[tf]
            return at + count * step if forward else at - count * step
        t = candle_open_ms(at, tf)
        for _ in range(count):
            t = next_open_ms(t, tf) if forward else candle_open_ms(t - 1, tf)
        return t

    @staticmethod
    def _cat(parts: list[Rows], limit: int, keep_last: bool) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rows(*(np.zeros(0, dtype=np.int64) for _ in range(10)))
        rows = (
            parts[0]
            if len(parts) == 1
            else Rows(*(np.concatenate(cols) for cols in zip(*parts, strict=True)))
        )
        if len(rows) > limit:
            sl = slice(len(rows) - limit, None) if keep_last else slice(0, limit)
            rows = Rows(*(f[sl] for f in rows))
        return rows

    async def _agg_trades(self, request: web.Request) -> web.Response:
        market = self._symbol(request)
        assert market is not None
        limit = _limit(request, 500, 1000)
        from_id = _int_param(request, "fromId")
        start = _int_param(request, "startTime")
        end = _int_param(request, "endTime")
        now = self.sim.clock.now_ms()
        if start is not None and end is not None:
            if end < start:
                raise ApiError(-1023, "Start time is greater than end time.")
            if end - start > 3_600_000:
                raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
        out: list[str] = []
        if from_id is not None:
            minute = self._minute_of_trade(market, from_id, now)
            while minute is not None and len(out) < limit and minute <= now // MINUTE_MS:
                for t in market.minute_trades(minute):
                    if t.id >= from_id and t.time_ms <= now and len(out) < limit:
                        out.append(agg_trade_json(t, market))
                minute += 1
        elif start is not None or end is not None:
            if start is None:
                assert end is not None
                start = end - 3_600_000
            if end is None:
                end = start + 3_600_000
            end = min(end, now)
            for minute in range(start // MINUTE_MS, end // MINUTE_MS + 1):
                for t in market.minute_trades(minute):
                    if start <= t.time_ms <= end and len(out) < limit:
                        out.append(agg_trade_json(t, market))
                if len(out) >= limit:
                    break
        else:
            out = [agg_trade_json(t, market) for t in self._latest_trades(market, now, limit)]
        return self._json("[" + ",".join(out) + "]")

    @staticmethod
    def _minute_of_trade(market: SymbolMarket, trade_id: int, now: int) -> int | None:
        lo, hi = market.listing_ms // MINUTE_MS, now // MINUTE_MS + 1
        if trade_id < 0 or market.trades_before(hi) <= trade_id:
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if market.trades_before(mid) <= trade_id:
                lo = mid
            else:
                hi = mid
        return lo

    @staticmethod
    def _latest_trades(market: SymbolMarket, now: int, limit: int) -> list[Trade]:
        """The last ``limit`` trades up to ``now`` (looking back at most a day)."""
        minute = now // MINUTE_MS
        trades: list[Trade] = []
        first_minute = max(market.listing_ms // MINUTE_MS, minute - 1439)
        while len(trades) < limit and minute >= first_minute:
            trades = [t for t in market.minute_trades(minute) if t.time_ms <= now] + trades
            minute -= 1
        return trades[-limit:]

    async def _recent_trades(self, request: web.Request) -> web.Response:
        """``trades``: the newest trades. With ``ws_rate`` set, the ``trade`` stream's tape (the
        same ids ``historicalTrades`` and the stream serve); else the market model's trades."""
        market = self._symbol(request)
        assert market is not None
        limit = _limit(request, 500, 1000)
        if self.sim.ws_rate > 0:
            rows = self.hub.tape_trades(market, None, limit, self.sim.clock.now_ms())
            return self._json("[" + ",".join(rows) + "]")
        pd, qd = market.price_decimals, market.qty_decimals
        scale = pd + qd - 8
        trades = [
            '{"id":%d,"price":"%s","qty":"%s","quoteQty":"%s","time":%d,"isBuyerMaker":%s,"isBestMatch":true}'
            % (
                t.id,
                decimal8(t.price, pd),
                decimal8(t.qty, qd),
                decimal8(t.price * t.qty * 10**-scale if scale <= 0 else t.price * t.qty // 10**scale, 8),
                t.time_ms,
                "true" if t.buyer_maker else "false",
            )
            for t in self._latest_trades(market, self.sim.clock.now_ms(), limit)
        ]
        return self._json("[" + ",".join(trades) + "]")

    async def _historical_trades(self, request: web.Request) -> web.Response:
        """``historicalTrades?fromId=``: the ``trade`` stream's tape by id (weight 25; Binance's
        docs list no key for it today, ccxt still sends one, so the simulator asks for none)."""
        market = self._symbol(request)
        assert market is not None
        limit = _limit(request, 500, 1000)
        rows = self.hub.tape_trades(market, _int_param(request, "fromId"), limit, self.sim.clock.now_ms())
        return self._json("[" + ",".join(rows) + "]")

    async def _depth(self, request: web.Request) -> web.Response:
        market = self._symbol(request)
        assert market is not None
        limit = _limit(request, 100, 5000)
        self.sim.advance_book(market, self.sim.clock.now_ms())
        book = self.sim.books[market.symbol]
        bids, asks = book.top(limit)
        pd, qd = market.price_decimals, market.qty_decimals
        return self._json(
            json.dumps(
                {
                    "lastUpdateId": book.update_id,
                    "bids": [[decimal8(p, pd), decimal8(q, qd)] for p, q in bids],
                    "asks": [[decimal8(p, pd), decimal8(q, qd)] for p, q in asks],
                },
                separators=(",", ":"),
            )
        )

    async def _ticker_24hr(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        one = self._symbol(request, required=False)
        if one is not None:
            return self._json(json.dumps(self.sim.ticker_24hr(one, now), separators=(",", ":")))
        several = self._symbols_list(request)
        markets = several if several is not None else list(self.sim.markets.values())
        return self._json(json.dumps([self.sim.ticker_24hr(m, now) for m in markets], separators=(",", ":")))

    def _book_ticker_obj(self, market: SymbolMarket, now: int) -> dict[str, Any]:
        self.sim.advance_book(market, now)
        return book_ticker(market, self.sim.books[market.symbol].best())

    async def _book_ticker(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        one = self._symbol(request, required=False)
        if one is not None:
            return self._json(json.dumps(self._book_ticker_obj(one, now)))
        markets = self._symbols_list(request) or list(self.sim.markets.values())
        return self._json(json.dumps([self._book_ticker_obj(m, now) for m in markets]))

    async def _ticker_price(self, request: web.Request) -> web.Response:
        now = self.sim.clock.now_ms()
        one = self._symbol(request, required=False)
        markets = (
            [one] if one is not None else (self._symbols_list(request) or list(self.sim.markets.values()))
        )
        items = []
        for m in markets:
            p = m.partial_minute(now)
            price = p.c if p is not None else int(m.price0 * 10**m.price_decimals)
            items.append({"symbol": m.exchange_symbol, "price": decimal8(price, m.price_decimals)})
        return self._json(json.dumps(items[0] if one is not None else items))

    async def _sim_stats(self, request: web.Request) -> web.Response:
        return self._json(json.dumps(self.sim.stats()))

    # -- WebSocket -------------------------------------------------------------------------------

    async def _ws_raw(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        return await self._ws(request, [tail] if "@" in tail else [], wrapped=False)

    async def _ws_combined(self, request: web.Request) -> web.StreamResponse:
        streams = [s for s in request.query.get("streams", "").split("/") if s]
        return await self._ws(request, streams, wrapped=True)

    async def _ws(self, request: web.Request, streams: list[str], wrapped: bool) -> web.StreamResponse:
        """Refuse during an outage or for an unknown stream (before the upgrade), else serve."""
        if self.sim.in_outage():
            return self._html(503)
        for name in streams:
            try:
                self.hub.parse(name)
            except StreamError:
                return web.Response(
                    status=400, text='{"code":-1121,"msg":"Invalid symbol."}', content_type="application/json"
                )
        return await self.hub.handle(request, streams, wrapped=wrapped)
