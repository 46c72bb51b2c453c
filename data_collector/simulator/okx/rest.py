"""OKX v5 public REST: instruments, time, candles, trades, books, funding, open interest.

Rate limits are OKX's: a count per client IP and endpoint over 2-second windows (fixed, or sliding
with ``OkxSettings.sliding_limits``), with no weight header; one request too many gets HTTP 429
and ``{"code": "50011", "msg": "Too Many Requests"}``.
The windows run on real (monotonic) time, not the simulated clock: a frozen test clock would
never refill them.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from data_collector.simulator.okx.formats import TIMEFRAME_OF_BAR, approx_ms, envelope
from data_collector.simulator.okx.venue import Instrument, OkxVenue

if TYPE_CHECKING:
    from data_collector.simulator.okx.server import OkxServer

#: Requests per 2 s window, per endpoint (OKX's documented public limits).
LIMITS: dict[str, int] = {
    "public/instruments": 20,
    "public/time": 10,
    "public/funding-rate-history": 10,
    "public/open-interest": 20,
    "market/candles": 40,
    "market/history-candles": 20,
    "market/trades": 100,
    "market/history-trades": 20,
    "market/books": 40,
    "rubik/stat/contracts/open-interest-history": 5,
}
#: ``period`` of the open-interest history -> ms (UTC-aligned here).
OI_PERIODS = {"5m": 300_000, "1H": 3_600_000, "1D": 86_400_000}
WINDOW_MS = 2000
#: ``/market/candles`` serves only this many latest candles.
RECENT_CANDLES = 1440


class OkxError(Exception):
    """An OKX error answer: ``{"code": code, "msg": msg, "data": []}``."""

    def __init__(self, code: str, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


class EndpointLimiter:
    """Counts per client IP and endpoint over 2 s windows of real time: fixed ones (aligned to
    multiples of 2 s) or, with ``sliding``, the 2 s before each request.

    OKX's public limits are per IP ("Rate limit rule: IP"), so two clients behind one address
    spend one count and clients on two addresses (127.0.0.2, 127.0.0.3) one each, as the Binance
    side's :class:`~data_collector.simulator.limits.IpBudgets` does for request weight. OKX does
    not say which windows it counts; the sliding count is the stricter (a client that never puts
    more than N in any 2 s passes both). A refused request counts too, in both.
    """

    def __init__(
        self, limits: dict[str, int], sliding: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = dict(limits)
        self.sliding = sliding
        self._clock = clock
        self._window = -1
        self._used: Counter[tuple[str, str]] = Counter()
        self._times: dict[tuple[str, str], deque[int]] = {}

    def admit(self, endpoint: str, ip: str | None = None) -> bool:
        """Count one request from ``ip`` (``None``: an unknown peer, one count); False when it is
        over ``endpoint``'s budget for this window and address."""
        now = int(self._clock() * 1000)
        key = (ip or "unknown", endpoint)
        limit = self.limits.get(endpoint, 20)
        if self.sliding:
            times = self._times.setdefault(key, deque())
            while times and times[0] <= now - WINDOW_MS:
                times.popleft()
            times.append(now)
            return len(times) <= limit
        window = now // WINDOW_MS
        if window != self._window:
            self._window = window
            self._used.clear()
        self._used[key] += 1
        return self._used[key] <= limit


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise OkxError("51000", f"Parameter {name} error") from None


def _limit(request: web.Request, default: int, maximum: int) -> int:
    value = _int(request, "limit")
    if value is None:
        return default
    if value <= 0:
        raise OkxError("51000", "Parameter limit error")
    return min(value, maximum)


class OkxRestApi:
    """The routes of one OKX server; counters and faults live on it."""

    def __init__(self, server: OkxServer) -> None:
        self.server = server
        self.venue: OkxVenue = server.venue

    def add_routes(self, app: web.Application) -> None:
        add = app.router.add_get
        add("/api/v5/public/time", self._time)
        add("/api/v5/public/instruments", self._instruments)
        add("/api/v5/market/candles", self._candles)
        add("/api/v5/market/history-candles", self._history_candles)
        add("/api/v5/market/trades", self._trades)
        add("/api/v5/market/history-trades", self._history_trades)
        add("/api/v5/market/books", self._books)
        add("/api/v5/public/funding-rate-history", self._funding)
        add("/api/v5/public/open-interest", self._open_interest)
        add("/api/v5/rubik/stat/contracts/open-interest-history", self._open_interest_history)

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if not path.startswith("/api/v5/"):
            if self.server.sim.in_outage():
                return web.Response(status=503, text="<html>503</html>", content_type="text/html")
            return await handler(request)
        key = path[len("/api/v5/") :]
        stats = self.server.stats
        stats["requests"] += 1
        self.server.by_endpoint[key] += 1
        if self.server.sim.in_outage():
            stats["503"] += 1
            return web.Response(status=503, text="<html>503</html>", content_type="text/html")
        ip = request.remote or "unknown"
        self.server.by_ip[ip] += 1
        if not self.server.limiter.admit(key, ip):
            stats["429"] += 1
            self.server.status_429[key] += 1
            self.server.status_429_by_ip[ip] += 1
            return self._json(envelope([], "50011", "Too Many Requests"), 429)
        try:
            return await handler(request)
        except OkxError as exc:
            return self._json(envelope([], exc.code, exc.msg), exc.status)

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    def _instrument(self, request: web.Request, swap_only: bool = False) -> Instrument:
        inst_id = request.query.get("instId")
        if not inst_id:
            raise OkxError("50014", "Parameter instId can not be empty")
        inst = self.venue.instruments.get(inst_id)
        if inst is None or (swap_only and not inst.swap):
            raise OkxError("51001", "Instrument ID does not exist")
        return inst

    # -- handlers ------------------------------------------------------------------------------

    async def _time(self, request: web.Request) -> web.Response:
        return self._json(envelope([{"ts": str(self.venue.clock.now_ms())}]))

    async def _instruments(self, request: web.Request) -> web.Response:
        inst_type = request.query.get("instType")
        if not inst_type:
            raise OkxError("50014", "Parameter instType can not be empty")
        now = self.venue.clock.now_ms()
        data = [
            self.venue.instrument_json(i, now)
            for i in self.venue.instruments.values()
            if i.inst_type == inst_type.upper()
        ]
        inst_id = request.query.get("instId")
        if inst_id:
            data = [d for d in data if d["instId"] == inst_id]
        return self._json(envelope(data))

    def _candle_args(self, request: web.Request) -> tuple[Instrument, str]:
        inst = self._instrument(request)
        bar = request.query.get("bar", "1m")
        timeframe = TIMEFRAME_OF_BAR.get(bar)
        if timeframe is None:
            raise OkxError("51000", "Parameter bar error")
        return inst, timeframe

    async def _candles(self, request: web.Request) -> web.Response:
        inst, timeframe = self._candle_args(request)
        limit = _limit(request, 100, 300)
        now = self.venue.clock.now_ms()
        floor = self.venue.forming_open(timeframe, now) - (RECENT_CANDLES - 1) * approx_ms(timeframe)
        if timeframe in ("1M", "3M"):
            floor = 0
        page = self.venue.candle_page(
            inst, timeframe, _int(request, "after"), _int(request, "before"), limit, floor
        )
        return self._json(envelope(page))

    async def _history_candles(self, request: web.Request) -> web.Response:
        inst, timeframe = self._candle_args(request)
        limit = _limit(request, 100, self.server.history_candles_max)
        page = self.venue.candle_page(inst, timeframe, _int(request, "after"), _int(request, "before"), limit)
        return self._json(envelope(page))

    async def _trades(self, request: web.Request) -> web.Response:
        inst = self._instrument(request)
        limit = _limit(request, 100, 500)
        page = self.venue.trade_page(inst, limit)
        return self._json(envelope([self.venue.trade_json(inst, t) for t in page]))

    async def _history_trades(self, request: web.Request) -> web.Response:
        inst = self._instrument(request)
        limit = _limit(request, 100, 100)
        kind = request.query.get("type", "1")
        if kind not in ("1", "2"):
            raise OkxError("51000", "Parameter type error")
        by_time = kind == "2"
        before = _int(request, "before")
        if by_time and before is not None:
            raise OkxError("51000", "Parameter before error")
        page = self.venue.trade_page(inst, limit, _int(request, "after"), before, by_time)
        return self._json(envelope([self.venue.trade_json(inst, t) for t in page]))

    async def _books(self, request: web.Request) -> web.Response:
        inst = self._instrument(request)
        depth = _int(request, "sz") or 1
        depth = max(1, min(depth, 400))
        now = self.venue.clock.now_ms()
        self.venue.advance_book(inst, now)
        bids, asks = self.venue.levels(inst, depth)
        return self._json(envelope([{"asks": asks, "bids": bids, "ts": str(now)}]))

    async def _funding(self, request: web.Request) -> web.Response:
        inst = self._instrument(request, swap_only=True)
        limit = _limit(request, 100, 100)
        page = self.venue.funding_page(inst, _int(request, "after"), _int(request, "before"), limit)
        return self._json(envelope(page))

    async def _open_interest(self, request: web.Request) -> web.Response:
        inst_type = request.query.get("instType")
        if not inst_type:
            raise OkxError("50014", "Parameter instType can not be empty")
        if inst_type.upper() != "SWAP":
            return self._json(envelope([]))
        inst_id = request.query.get("instId")
        swaps = [
            i for i in self.venue.instruments.values() if i.swap and (not inst_id or i.inst_id == inst_id)
        ]
        return self._json(envelope([self.venue.open_interest(i) for i in swaps]))

    async def _open_interest_history(self, request: web.Request) -> web.Response:
        inst = self._instrument(request, swap_only=True)
        period_ms = OI_PERIODS.get(request.query.get("period", "5m"))
        if period_ms is None:
            raise OkxError("51000", "Parameter period error")
        limit = _limit(request, 100, 100)
        page = self.venue.open_interest_page(
            inst, period_ms, _int(request, "begin"), _int(request, "end"), limit
        )
        return self._json(envelope(page))
