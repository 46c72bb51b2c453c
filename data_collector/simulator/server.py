"""``SimulatedExchange``: a local Binance spot look-alike (REST + WebSocket) on aiohttp.

Long because it wires the lifecycle, the limits, the faults and both protocols of one server;
the parts it delegates live in book, formats, limits, market, rest and streams.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any

from aiohttp import web

from data_collector.config import SIMULATED_VENUE_PREFIX
from data_collector.errors import ClosedError, UsageError
from data_collector.markets import (
    MINUTE_MS,
    TIMEFRAMES,
    normalize_symbols,
    stream_symbol,
)
from data_collector.simulator.archive_listing import handle_listing
from data_collector.simulator.archives import ArchiveServer, ArchiveSettings
from data_collector.simulator.book import OrderBook, step_book
from data_collector.simulator.fapi import FuturesRestApi
from data_collector.simulator.formats import agg_trade_json, decimal8, klines_json, ticker_fields
from data_collector.simulator.limits import Faults, IpBudgets, SimClock, WeightLimiter, endpoint_key
from data_collector.simulator.market import DayCache, Rows, SymbolMarket
from data_collector.simulator.okx import OkxServer, OkxSettings, OkxVenue
from data_collector.simulator.rest import ApiError, RestApi
from data_collector.simulator.rng import stream_key
from data_collector.simulator.streams import StreamHub
from data_collector.simulator.usdm import FuturesVenue

#: ccxt options that keep ``load_markets`` to one spot request (PROTOCOL.md).
CCXT_OPTIONS: dict[str, Any] = {
    "fetchMarkets": {"types": ["spot"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
}


#: The venue label of everything collected from a simulator (``exchange.name``).
VENUE_NAME = SIMULATED_VENUE_PREFIX + "binance"
#: The venue label of the simulator's perpetuals.
FUTURES_VENUE_NAME = SIMULATED_VENUE_PREFIX + "binanceusdm"
#: ccxt ``urls.api`` keys of Binance USDⓈ-M, and their paths here.
FAPI_URL_KEYS = {
    "fapiPublic": "/fapi/v1",
    "fapiPublicV2": "/fapi/v2",
    "fapiPublicV3": "/fapi/v3",
    "fapiPrivate": "/fapi/v1",
    "fapiPrivateV2": "/fapi/v2",
    "fapiPrivateV3": "/fapi/v3",
    "fapiData": "/futures/data",
}


class WsFaults:
    """WebSocket fault switches of one simulator (``sim.ws_faults``)."""

    def __init__(self, sim: SimulatedExchange) -> None:
        self._sim = sim

    def drop_all(self) -> int:
        """Abort every connection (spot and futures) now, without a close frame. Returns how many."""
        return sum(hub.drop_all() for hub in self._sim.hubs)

    def shutdown_all(self) -> int:
        """A planned drop: ``serverShutdown`` event, then a close frame, on every connection."""
        return sum(hub.shutdown_all() for hub in self._sim.hubs)

    def stall(self, seconds: float) -> None:
        """Deliver nothing for ``seconds``; the market goes on and its frames queue on each socket.

        They arrive after the stall, late; a connection whose backlog passes the hub's
        ``max_backlog`` bytes meanwhile is disconnected (``hub.dropped_for_backlog``).
        """
        for hub in self._sim.hubs:
            hub.stalled_until_ms = self._sim.clock.now_ms() + int(seconds * 1000)

    def malformed(self) -> None:
        """Send one frame that is not valid JSON to every connection."""
        for hub in self._sim.hubs:
            hub.malformed()

    def skip_trade_id(self, symbol: str, count: int = 1) -> None:
        """Lose the next ``count`` frames of each ``trade`` and ``aggTrade`` stream of ``symbol``
        (``X/Y:Z`` for a perpetual), as when events are lost: the trades stay on the tape and REST."""
        hub = self._sim.usdm.hub if ":" in symbol else self._sim.hub
        name = (self._sim.usdm.market(symbol) if ":" in symbol else self._sim.market(symbol)).symbol
        for kind in ("trade", "aggTrade"):
            hub.skip_trades[(name, kind)] = hub.skip_trades.get((name, kind), 0) + count

    def skip_depth_id(self, symbol: str, count: int = 1, lose_content: bool = False) -> None:
        """Lose ``count`` depth update ids of ``symbol`` (``X/Y:Z`` for a perpetual).

        The next spot diff does not follow on (``U`` skips); the next futures diff's ``pu`` is
        not the ``u`` of the diff before, as when an event is lost. ``lose_content``: the lost
        event also changed levels (they are in the book and REST snapshots, never in a diff).
        """
        if ":" in symbol:
            perp = self._sim.usdm.market(symbol)
            self._sim.usdm.books[perp.symbol].skip_update_id(count, lose_content)
            return
        self._sim.books[self._sim.market(symbol).symbol].skip_update_id(count, lose_content)


class SimulatedExchange:
    """A deterministic Binance spot exchange on localhost, for tests, benchmarks and demos.

    Use it as ``async with SimulatedExchange(symbols=[...], seed=42) as sim:``. It binds
    ``host:port`` (port 0 picks a free one) and serves REST under ``/api/v3`` and WebSocket
    streams under ``/ws``, ``/stream`` and ``/stream/ws``.

    Args:
        symbols: ``BASE/QUOTE`` symbols to list.
        seed: every price, volume and trade derives from it.
        weight_limit: REQUEST_WEIGHT budget per calendar minute.
        latency_ms: fixed latency added to every REST answer.
        host: interface to bind.
        port: TCP port, 0 for any free one.
        listings: symbol -> listing time in ms (default: from the seed, in 2019-2021).
        gaps: symbol -> maintenance windows ``[(start_ms, end_ms)]``; ``None`` gives the seed's
            sparse defaults, ``{}`` or an empty list gives none.
        ws_rate: messages per second on each ``trade`` and ``bookTicker`` stream.
        faults: initial global faults (latency, jitter and fault probabilities).
        ws_ping_s: WebSocket ping interval.
        ws_max_lifetime_s: connections are closed (after ``serverShutdown``) at this age.
        ban_grace_ms: a request this long after the first 429 of a minute, still inside its
            Retry-After window, earns a 418 ban.
        ban_base_s: length of the first ban; each further ban doubles it (up to 3 days).
        ws_max_incoming_per_s: drop a WebSocket client sending more control messages a second
            than this (Binance: 5); ``None`` (default) does not limit.
        clock: the simulated wall clock (default: real time); tests freeze or advance it.
        endpoint_faults: initial per-endpoint faults, e.g. ``{"klines": Faults(error_rate=0.1)}``.
        klines_limit_max: the most klines one answer holds, whatever ``limit`` asks (Binance
            spot: 1000); lower values model a venue whose cap the client does not know.
        perpetuals: USDⓈ-M perpetuals to list (``BTC/USDT:USDT`` or ``BTC/USDT``); when any,
            a second port serves ``/fapi/v1``, ``/futures/data`` and the futures streams.
        futures_weight_limit: the futures REQUEST_WEIGHT budget per minute (Binance: 2,400).
        delistings: symbol (``LUNA/USDT`` spot, ``LUNA/USDT:USDT`` perpetual) -> delisting time
            in ms: no candles or trades from then on; spot exchangeInfo says ``BREAK``, futures
            ``SETTLING`` with ``deliveryDate`` at the delisting, as Binance does.
        futures_port: TCP port of the futures server, 0 for any free one.
        archive: how the data.binance.vision tree under ``/data/spot`` behaves (lag, zip cache).
        okx: when given, a third port serves OKX v5 (REST and WebSocket) for the same
            ``symbols`` (SPOT) and ``okx.swaps`` (SWAP), from the same seed: ``sim.okx_ccxt_config()``.
    """

    def __init__(
        self,
        symbols: Iterable[str] = ("BTC/USDT",),
        seed: int = 42,
        weight_limit: int = 6000,
        latency_ms: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        listings: dict[str, int] | None = None,
        gaps: dict[str, list[tuple[int, int]]] | None = None,
        ws_rate: float = 10.0,
        faults: Faults | None = None,
        ws_ping_s: float = 20.0,
        ws_max_lifetime_s: float = 24 * 3600.0,
        ban_grace_ms: int = 1000,
        ban_base_s: int = 120,
        ws_max_incoming_per_s: float | None = None,
        clock: SimClock | None = None,
        endpoint_faults: dict[str, Faults] | None = None,
        klines_limit_max: int = 1000,
        perpetuals: Iterable[str] = (),
        futures_weight_limit: int = 2400,
        delistings: dict[str, int] | None = None,
        futures_port: int = 0,
        archive: ArchiveSettings | None = None,
        okx: OkxSettings | None = None,
    ) -> None:
        names = normalize_symbols(symbols)
        if not names:
            raise UsageError("the simulator needs at least one symbol")
        if weight_limit <= 0:
            raise UsageError(f"weight_limit must be > 0, got {weight_limit}")
        if ws_rate < 0:
            raise UsageError(f"ws_rate must be >= 0, got {ws_rate}")
        if klines_limit_max <= 0:
            raise UsageError(f"klines_limit_max must be > 0, got {klines_limit_max}")
        self.klines_limit_max = klines_limit_max
        self.seed = int(seed)
        self.host = host
        self.port = port
        self.ws_rate = float(ws_rate)
        self.clock = clock if clock is not None else SimClock()
        self.limiter = WeightLimiter(
            weight_limit, self.clock, ban_grace_ms=ban_grace_ms, ban_base_s=ban_base_s
        )
        #: One budget per client IP, as Binance counts; ``limiter`` is the first address's.
        self.budgets = IpBudgets(self.limiter)
        listings = {k.upper(): v for k, v in (listings or {}).items()}
        delisted = {k.upper(): int(v) for k, v in (delistings or {}).items()}
        self.markets: dict[str, SymbolMarket] = {}
        # ~2 KB per cached day: 20,000 days (all symbols together) stay under ~50 MB.
        day_cache = DayCache(20_000)
        for name in names:
            if gaps is None:
                sym_gaps = None
            else:
                sym_gaps = {k.upper(): v for k, v in gaps.items()}.get(name, [])
            self.markets[name] = SymbolMarket(
                name, self.seed, listings.get(name), sym_gaps, day_cache, delisted_ms=delisted.get(name)
            )
        self.market_by_id = {m.exchange_symbol: m for m in self.markets.values()}
        self.market_by_stream = {stream_symbol(s): m for s, m in self.markets.items()}
        self.books: dict[str, OrderBook] = {
            s: OrderBook(
                stream_key(self.seed, s, "book"), 1_000_000 + stream_key(self.seed, s, "uid") % 1_000_000
            )
            for s in self.markets
        }
        self._global_faults = (faults or Faults()).validate()
        if latency_ms:
            self._global_faults.latency_ms = float(latency_ms)
            self._global_faults.validate()
        self._endpoint_faults: dict[str, Faults] = {
            str(endpoint_key(k)): f.validate() for k, f in (endpoint_faults or {}).items()
        }
        self._rng = random.Random(self.seed)
        self._outage_until_ms: float | None = None
        self._stats: Counter[str] = Counter()
        self._by_endpoint: Counter[str] = Counter()
        #: Off (None) unless a test sets ``sim.request_log = deque(maxlen=...)``: then every REST
        #: request's endpoint and query, so a test can say which requests were (not) made.
        self.request_log: deque[tuple[str, dict[str, str]]] | None = None
        self._by_status: Counter[int] = Counter()
        self.hub = StreamHub(self)
        #: The archive tree (``/data/spot/...``) and its faults: ``sim.archive.inject(...)``.
        self.archive = ArchiveServer(self, archive)
        self.futures_port = futures_port
        #: The USDⓈ-M futures venue, or None without perpetuals.
        self.futures: FuturesVenue | None = None
        perps = list(perpetuals)
        if perps:
            self.futures = FuturesVenue(
                self,
                perps,
                futures_weight_limit,
                self.clock,
                listings,
                None if gaps is None else {k.upper(): v for k, v in gaps.items()},
                delisted,
                day_cache,
                ban_grace_ms,
                ban_base_s,
            )
        self._futures_runner: web.AppRunner | None = None
        #: The OKX server, or None unless ``okx`` settings were given.
        self.okx_server: OkxServer | None = None
        if okx is not None:
            okx_venue = OkxVenue(
                self.seed,
                names,
                okx.swaps,
                self.clock,
                listings,
                None if gaps is None else {k.upper(): v for k, v in gaps.items()},
                day_cache,
            )
            self.okx_server = OkxServer(
                self,
                okx_venue,
                okx.port,
                okx.limits,
                okx.history_candles_max,
                okx.idle_timeout_s,
                okx.sliding_limits,
            )
        #: WebSocket fault switches: ``drop_all``, ``shutdown_all``, ``stall``, ``malformed``, ``skip_depth_id``.
        self.ws_faults = WsFaults(self)
        self.hub.ping_s = ws_ping_s
        self.hub.max_lifetime_s = ws_max_lifetime_s
        self.hub.max_incoming_per_s = ws_max_incoming_per_s
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._hanging: set[asyncio.Future[None]] = set()
        self._scheduled: list[asyncio.TimerHandle] = []
        self._rolling: dict[str, tuple[int, tuple[int, ...] | None]] = {}
        #: ``hold_rest``: requests past this count wait on ``_rest_gate`` until ``release_rest``.
        self._rest_hold_after: int | None = None
        self._rest_gate = asyncio.Event()
        #: REST requests waiting at the gate now.
        self.rest_held = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> SimulatedExchange:
        """Bind and start serving. Returns self."""
        if self._closed:
            raise ClosedError("this SimulatedExchange was closed; create a new one")
        if self._runner is not None:
            return self
        api = RestApi(self)
        app = web.Application(middlewares=[api.middleware])
        api.add_routes(app)
        self.archive.add_routes(app)
        app.router.add_get("/", partial(handle_listing, self.archive))
        self._runner = await self._serve(app, self.port)
        self.port = int(self._runner.addresses[0][1])
        self.hub.start()
        if self.futures is not None:
            fapi = FuturesRestApi(self, self.futures)
            fapp = web.Application(middlewares=[fapi.middleware])
            fapi.add_routes(fapp)
            try:
                self._futures_runner = await self._serve(fapp, self.futures_port)
            except OSError:
                await self.close()
                raise
            self.futures_port = int(self._futures_runner.addresses[0][1])
            self.futures.hub.start()
        if self.okx_server is not None:
            try:
                await self.okx_server.start()
            except OSError:
                await self.close()
                raise
        return self

    async def _serve(self, app: web.Application, port: int) -> web.AppRunner:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    async def close(self) -> None:
        """Stop serving and drop every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for fut in list(self._hanging):
            fut.cancel()
        for handle in self._scheduled:
            handle.cancel()
        self.release_rest()
        await self.hub.close()
        if self.futures is not None:
            await self.futures.hub.close()
        if self.okx_server is not None:
            await self.okx_server.close()
        for runner in (self._runner, self._futures_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._futures_runner = None

    async def __aenter__(self) -> SimulatedExchange:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- addresses and client configs ----------------------------------------------------------

    @property
    def rest_url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    @property
    def archive_url(self) -> str:
        """The data.binance.vision look-alike: ``http://host:port`` (files under ``/data/spot``)."""
        return self.rest_url

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` (streams at ``/ws/<name>``, ``/stream?streams=``, ``/stream/ws/<n>``)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def futures_rest_url(self) -> str:
        """``http://host:futures_port`` (``/fapi/v1``, ``/futures/data``)."""
        self._require_futures()
        return f"http://{self.host}:{self.futures_port}"

    @property
    def futures_ws_url(self) -> str:
        """``ws://host:futures_port`` (``/ws``, ``/stream``, ``/public/ws``, ``/market/ws``)."""
        self._require_futures()
        return f"ws://{self.host}:{self.futures_port}"

    @property
    def okx(self) -> OkxServer:
        """The OKX server (venue, hub, fault switches); UsageError without ``okx`` settings."""
        if self.okx_server is None:
            raise UsageError("this simulator serves no OKX; pass okx=OkxSettings(...)")
        return self.okx_server

    @property
    def okx_rest_url(self) -> str:
        """``http://host:okx_port`` (``/api/v5/...``)."""
        return self.okx.rest_url

    def okx_ccxt_config(self) -> dict[str, Any]:
        """Constructor config for ``ccxt.async_support.okx`` and ``ccxt.pro.okx``."""
        return self.okx.ccxt_config()

    def ccxt_urls(self) -> dict[str, Any]:
        """The ``urls`` override that points ccxt's binance and binanceusdm (REST and pro) here."""
        api = self.rest_url + "/api/v3"
        ws: dict[str, Any] = {"spot": self.ws_url + "/stream/ws", "margin": self.ws_url + "/stream/ws"}
        urls: dict[str, Any] = {"public": api, "private": api, "v3": api, "ws": ws}
        if self.futures is not None:
            # ccxt.pro rewrites a linear URL ending in /ws to /public/ws or /market/ws, as Binance routes.
            ws["linear"] = self.futures_ws_url + "/ws"
            for key, tail in FAPI_URL_KEYS.items():
                urls[key] = self.futures_rest_url + tail
        return {"api": urls}

    def ccxt_config(self, default_type: str = "spot") -> dict[str, Any]:
        """Constructor config for ``ccxt.async_support.binance`` and ``ccxt.pro.binance``.

        ``default_type="swap"`` loads the perpetuals (one ``/fapi/v1/exchangeInfo``) instead of
        spot; the same config serves ``binanceusdm`` (see :meth:`futures_ccxt_config`).
        """
        if default_type not in ("spot", "swap"):
            raise UsageError(f"default_type must be 'spot' or 'swap', got {default_type!r}")
        options: dict[str, Any] = {**json.loads(json.dumps(CCXT_OPTIONS)), "defaultType": default_type}
        if default_type == "swap":
            self._require_futures()
            options["fetchMarkets"] = {"types": ["linear"]}
        return {"options": options, "urls": self.ccxt_urls(), "enableRateLimit": True}

    def futures_ccxt_config(self) -> dict[str, Any]:
        """Constructor config for ``ccxt.async_support.binanceusdm`` and ``ccxt.pro.binanceusdm``."""
        return self.ccxt_config("swap")

    def futures_exchange_config(self) -> dict[str, Any]:
        """The ``exchange:`` section of our config for the perpetuals: ccxt ``binanceusdm``, here.

        Labelled :data:`FUTURES_VENUE_NAME` (``sim-binanceusdm``).
        """
        config = self.futures_ccxt_config()
        return {
            "id": "binanceusdm",
            "name": FUTURES_VENUE_NAME,
            "options": config["options"],
            "urls": config["urls"],
            "ws_url": self.futures_ws_url,
        }

    def exchange_config(self) -> dict[str, Any]:
        """The ``exchange:`` section of our config, pointing at this simulator.

        ccxt speaks to it as ``binance``; what it serves is labelled :data:`VENUE_NAME`
        (``sim-binance``), so simulated rows and keys can never pass for the real venue's.
        """
        return {
            "id": "binance",
            "name": VENUE_NAME,
            "options": {**json.loads(json.dumps(CCXT_OPTIONS)), "defaultType": "spot"},
            "urls": self.ccxt_urls(),
            "ws_url": self.ws_url,
        }

    # -- the truth -----------------------------------------------------------------------------

    def market(self, symbol: str) -> SymbolMarket:
        """The model of ``symbol`` (``SOL/USDT`` or ``SOLUSDT``); ``UsageError`` if not listed."""
        key = symbol.upper()
        market = self.markets.get(key) or self.market_by_id.get(key.replace("/", ""))
        if market is None:
            raise UsageError(f"{symbol!r} is not listed by this simulator")
        return market

    def candles(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> Rows:
        """Raw candle rows (integer ticks and lots) opening in ``[start_ms, end_ms)``."""
        if timeframe not in TIMEFRAMES:
            raise UsageError(f"unsupported timeframe {timeframe!r}")
        return self.market(symbol).candles(timeframe, start_ms, end_ms, self.clock.now_ms())

    def klines(self, symbol: str, timeframe: str, start_ms: int, end_ms: int) -> list[list[Any]]:
        """Kline arrays exactly as REST serves them, for candles opening in ``[start_ms, end_ms)``.

        Includes the forming candle if it opens in the range (its values so far).
        """
        market = self.market(symbol)
        rows = self.candles(symbol, timeframe, start_ms, end_ms)
        result: list[list[Any]] = json.loads(klines_json(rows, market, timeframe))
        return result

    def agg_trades(self, symbol: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
        """aggTrades with ``start_ms <= T < end_ms`` (up to now), as REST serves them; a perpetual's
        (``BTC/USDT:USDT``) too, whose rows lack spot's ``M``."""
        market: SymbolMarket = self.usdm.market(symbol) if ":" in symbol else self.market(symbol)
        now = self.clock.now_ms()
        out = []
        for minute in range(start_ms // MINUTE_MS, (min(end_ms, now + 1) - 1) // MINUTE_MS + 1):
            for t in market.minute_trades(minute):
                if start_ms <= t.time_ms < end_ms and t.time_ms <= now:
                    row = json.loads(agg_trade_json(t, market))
                    if ":" in symbol:
                        del row["M"]
                    out.append(row)
        return out

    def listing_ms(self, symbol: str) -> int:
        """When ``symbol`` started trading (no candles before)."""
        return self.market(symbol).listing_ms

    def gaps(self, symbol: str) -> list[tuple[int, int]]:
        """Maintenance windows ``(start_ms, end_ms)`` up to now: no candles open inside."""
        return self.market(symbol).gaps(self.clock.now_ms())

    def order_book(self, symbol: str, limit: int = 5000) -> dict[str, Any]:
        """The current book: ``{"lastUpdateId", "bids": [[price, qty]], "asks": ...}`` as floats.

        ``symbol``: spot (``SOL/USDT``), or a perpetual (``BTC/USDT:USDT``) for its futures book.
        """
        venue: Any = self.usdm if ":" in symbol else self
        market = venue.market(symbol)
        venue.advance_book(market, self.clock.now_ms())
        book = venue.books[market.symbol]
        bids, asks = book.top(limit)
        pd, qd = market.price_decimals, market.qty_decimals
        return {
            "lastUpdateId": book.update_id,
            "bids": [[p / 10**pd, q / 10**qd] for p, q in bids],
            "asks": [[p / 10**pd, q / 10**qd] for p, q in asks],
        }

    def advance_book(self, market: SymbolMarket, now_ms: int) -> None:
        """Step ``market``'s book up to ``now_ms`` around the current price."""
        step_book(self.books[market.symbol], market, now_ms)

    def rolling_24h(self, market: SymbolMarket, now: int) -> dict[str, Any] | None:
        """24 h rolling statistics (strings) or None before the listing.

        The closed minutes are aggregated once per minute; only the forming one is redone.
        """
        now_min = now // MINUTE_MS
        hit = self._rolling.get(market.symbol)
        if hit is None or hit[0] != now_min:
            start = now - 86_400_000 + 1
            closed = market.minute_rows(-(-start // MINUTE_MS), now_min)
            if len(closed):
                agg: tuple[int, ...] | None = (
                    int(closed.open_ms[0]),
                    int(closed.o[0]),
                    int(closed.h.max()),
                    int(closed.l.min()),
                    int(closed.c[-1]),
                    int(closed.v.sum()),
                    int(closed.q.sum()),
                    int(closed.n.sum()),
                )
            else:
                agg = None
            hit = (now_min, agg)
            self._rolling[market.symbol] = hit
        agg = hit[1]
        partial = market.partial_minute(now)
        if agg is None and partial is None:
            return None
        if agg is None:
            assert partial is not None
            open_ms, o, h, low, c, v, q, n = (
                now_min * MINUTE_MS,
                partial.o,
                partial.h,
                partial.l,
                partial.c,
                0,
                0,
                0,
            )
        else:
            open_ms, o, h, low, c, v, q, n = agg
        if partial is not None and partial.n:
            h, low, c = max(h, partial.h), min(low, partial.l), partial.c
            v, q, n = v + partial.v, q + partial.q, n + partial.n
        pd, qd = market.price_decimals, market.qty_decimals
        first = market.trades_before(open_ms // MINUTE_MS)
        return {
            "o": decimal8(o, pd),
            "c": decimal8(c, pd),
            "h": decimal8(h, pd),
            "l": decimal8(low, pd),
            "v": decimal8(v, qd),
            "q": decimal8(q, 8),
            "change": c - o,
            "pct": "%.3f" % ((c - o) * 100.0 / o),
            "wavg": decimal8(q * 10**pd // (v * 10 ** (8 - qd)) if v else c, pd),
            "n": n,
            "first": first,
            "last": first + n - 1,
            "open_ms": open_ms,
        }

    # -- runtime controls ----------------------------------------------------------------------

    def _faults_for(self, endpoint: str | None, create: bool = False) -> Faults:
        key = endpoint_key(endpoint)
        if key is None:
            return self._global_faults
        if key not in self._endpoint_faults and create:
            self._endpoint_faults[key] = Faults(**vars(self._global_faults))
        return self._endpoint_faults.get(key, self._global_faults)

    def set_latency(self, ms: float, jitter_ms: float = 0.0, endpoint: str | None = None) -> None:
        """Fixed plus uniformly jittered latency, for one endpoint (``"klines"``) or all."""
        Faults(latency_ms=ms, jitter_ms=jitter_ms).validate()
        f = self._faults_for(endpoint, create=True)
        f.latency_ms, f.jitter_ms = float(ms), float(jitter_ms)

    def set_faults(
        self,
        error_rate: float = 0.0,
        reset_rate: float = 0.0,
        hang_rate: float = 0.0,
        malformed_rate: float = 0.0,
        endpoint: str | None = None,
    ) -> None:
        """Fault probabilities per request: 5xx, connection reset, hang, malformed JSON."""
        Faults(
            error_rate=error_rate, reset_rate=reset_rate, hang_rate=hang_rate, malformed_rate=malformed_rate
        ).validate()
        f = self._faults_for(endpoint, create=True)
        f.error_rate, f.reset_rate = error_rate, reset_rate
        f.hang_rate, f.malformed_rate = hang_rate, malformed_rate

    def set_ws_rate(self, rate: float) -> None:
        """Messages per second of each ``trade`` and ``bookTicker`` stream, from now on."""
        if rate < 0:
            raise UsageError(f"ws_rate must be >= 0, got {rate}")
        self.ws_rate = float(rate)

    def hold_rest(self, after: int = 0) -> None:
        """Answer the first ``after`` REST requests (counted from the simulator's start) and hold
        every later one, unanswered, until :meth:`release_rest`: a run is then surely mid-way
        whatever the machine's speed, for a test that must interrupt it there. Binance's REST,
        spot and USDⓈ-M; the OKX server's requests are not held."""
        if after < 0:
            raise UsageError(f"hold_rest: after must be >= 0, got {after}")
        self._rest_gate.clear()
        self._rest_hold_after = after

    def release_rest(self) -> None:
        """Answer the held REST requests, and every later one, at once."""
        self._rest_hold_after = None
        self._rest_gate.set()

    async def rest_gate(self) -> None:
        """Wait here while :meth:`hold_rest` holds this request (the REST middleware's call)."""
        if self._rest_hold_after is None or self._stats["requests"] <= self._rest_hold_after:
            return
        self.rest_held += 1
        try:
            await self._rest_gate.wait()
        finally:
            self.rest_held -= 1

    def start_outage(self) -> None:
        """Every request fails (503) and WebSocket connections drop until ``end_outage``."""
        self._outage_until_ms = float("inf")
        for hub in self.hubs:
            hub.drop_all()

    def end_outage(self) -> None:
        """End an outage."""
        self._outage_until_ms = None

    def outage(self, seconds: float) -> None:
        """An outage that ends by itself after ``seconds`` (of real time)."""
        self.start_outage()
        self._outage_until_ms = self._loop_ms() + seconds * 1000

    def schedule_outage(self, after_s: float, seconds: float) -> None:
        """An outage of ``seconds`` that starts ``after_s`` from now."""
        loop = asyncio.get_running_loop()
        handle = loop.call_later(after_s, self.outage, seconds)
        self._scheduled.append(handle)

    @staticmethod
    def _loop_ms() -> float:
        return asyncio.get_running_loop().time() * 1000

    def in_outage(self) -> bool:
        """Whether an outage is on."""
        if self._outage_until_ms is None:
            return False
        if self._loop_ms() >= self._outage_until_ms:
            self._outage_until_ms = None
            return False
        return True

    # WebSocket faults

    def ws_drop_all(self) -> int:
        """Same as ``ws_faults.drop_all()``."""
        return self.ws_faults.drop_all()

    def ws_shutdown_all(self) -> int:
        """Same as ``ws_faults.shutdown_all()``."""
        return self.ws_faults.shutdown_all()

    def ws_stall(self, seconds: float) -> None:
        """Same as ``ws_faults.stall(seconds)``."""
        self.ws_faults.stall(seconds)

    def ws_malformed(self) -> None:
        """Same as ``ws_faults.malformed()``."""
        self.ws_faults.malformed()

    def ws_skip_depth_id(self, symbol: str, count: int = 1, lose_content: bool = False) -> None:
        """Same as ``ws_faults.skip_depth_id(symbol, count, lose_content)``."""
        self.ws_faults.skip_depth_id(symbol, count, lose_content)

    def ws_sent(self) -> dict[str, dict[str, int]]:
        """Per stream: messages produced (each sent to every subscriber) and the last id."""
        return {k: dict(v) for k, v in self.hub.sent.items()}

    def ws_connections(self) -> int:
        """Open WebSocket connections (spot and futures)."""
        return sum(len(hub.connections) for hub in self.hubs)

    @property
    def hubs(self) -> list[StreamHub]:
        """The stream hubs: spot's, then futures' if any."""
        return [self.hub] + ([self.futures.hub] if self.futures is not None else [])

    @property
    def usdm(self) -> FuturesVenue:
        """The futures venue; ``UsageError`` when the simulator lists no perpetuals."""
        return self._require_futures()

    def _require_futures(self) -> FuturesVenue:
        if self.futures is None:
            raise UsageError("this simulator lists no perpetuals; pass perpetuals=[...]")
        return self.futures

    def stats(self) -> dict[str, Any]:
        """Counters: requests, weight, statuses (incl. 429/418), per-endpoint requests, faults."""
        return {
            "requests": self._stats["requests"],
            "weight": self._stats["weight"],
            "used_weight_1m": self.limiter.current_used(),
            "used_weight_1m_by_ip": self.budgets.used_by_ip(),
            "weight_limit": self.limiter.limit,
            "status": {str(k): v for k, v in sorted(self._by_status.items())},
            "429": self._by_status[429],
            "418": self._by_status[418],
            "endpoints": dict(self._by_endpoint),
            "faults": {k: self._stats[k] for k in ("error", "reset", "hang", "malformed", "outage")},
            "ws_connections": self.ws_connections(),
            "ws_sent": self.ws_sent(),
            "futures": self._futures_stats(),
        }

    def _futures_stats(self) -> dict[str, Any] | None:
        if self.futures is None:
            return None
        return {
            "used_weight_1m": self.futures.limiter.current_used(),
            "used_weight_1m_by_ip": self.futures.budgets.used_by_ip(),
            "weight_limit": self.futures.limiter.limit,
            "ws_sent": {k: dict(v) for k, v in self.futures.hub.sent.items()},
        }

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats.clear()
        self._by_endpoint.clear()
        self._by_status.clear()

    def _quiet_24h(self, market: SymbolMarket, now: int) -> dict[str, Any]:
        """24 h statistics of a delisted symbol with no trade in the window, as Binance lists a
        ``BREAK`` symbol: no volume, ``firstId``/``lastId`` -1, prices at its last trade."""
        assert market.delisted_ms is not None
        end_min = market.delisted_ms // MINUTE_MS
        last = market.minute_rows(end_min - 1440, end_min)
        price = decimal8(int(last.c[-1]) if len(last) else 0, market.price_decimals)
        zero = decimal8(0, market.qty_decimals)
        out: dict[str, Any] = dict.fromkeys(("o", "h", "l", "c", "wavg"), price)
        out.update(change=0, pct="0.000", v=zero, q=decimal8(0, 8), n=0, first=-1, last=-1)
        out["open_ms"] = now - 86_400_000
        return out

    def ticker_stats(self, market: SymbolMarket, now: int) -> dict[str, Any] | None:
        """:meth:`rolling_24h`, or a delisted symbol's quiet day; None before the listing."""
        s = self.rolling_24h(market, now)
        if s is None and market.delisted_ms is not None and now >= market.delisted_ms:
            s = self._quiet_24h(market, now)
        return s

    def ticker_24hr(self, market: SymbolMarket, now: int) -> dict[str, Any]:
        """The ``/api/v3/ticker/24hr`` object of ``market`` at ``now``."""
        self.advance_book(market, now)
        (bp, bq), (ap, aq) = self.books[market.symbol].best()
        pd, qd = market.price_decimals, market.qty_decimals
        s = self.ticker_stats(market, now)
        if s is None:
            raise ApiError(-1121, "Invalid symbol.")
        return {
            **ticker_fields(market, s, now),
            "prevClosePrice": s["o"],
            "bidPrice": decimal8(bp, pd),
            "bidQty": decimal8(bq, qd),
            "askPrice": decimal8(ap, pd),
            "askQty": decimal8(aq, qd),
        }
