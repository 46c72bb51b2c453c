"""One ccxt client plus its rate limiter, timeouts and retries: the collector's only way out.

ccxt's own throttler is switched off (``enableRateLimit=False``): our :class:`RateLimiter` paces
every request, with the exchange's weight budget where the exchange reports it. Responses are
observed through ccxt's ``on_rest_response`` hook, which runs in the task that made the request,
so the weight header and ``Retry-After`` are attributed to the right request even when many are
in flight (``exchange.last_response_headers`` is shared by all of them and may already belong to
another response by the time the caller reads it).

Long because it is the one way out for both venues (spot and futures): building the ccxt client,
its weights, pacing, retries and the candle page fetcher, which share the client's state.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import ccxt.async_support as ccxt

from data_collector.backfill.monitor import CollectorMonitor
from data_collector.backfill.plan import Range
from data_collector.backfill.rate_limit import RateLimiter, Reservation, measure_server_offset
from data_collector.backfill.validate import MalformedPageError, raw_kline_rows, raw_trade_rows, validate_page
from data_collector.config import Config
from data_collector.errors import (
    CollectorError,
    ConfigError,
    InvalidSymbolError,
    InvalidTimeframeError,
    PermanentError,
    ServerUnavailableError,
    TransientError,
)
from data_collector.picking import pick
from data_collector.retrying import http_status_of, is_transient, retry_policy
from data_collector.storage.base import Candle
from data_collector.venues import adapter_for
from data_collector.venues.binance.weights import (
    BINANCE_FUTURES_WEIGHTS,
    BINANCE_WEIGHTS,
    futures_kline_weight,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ccxt's ``price`` parameter of ``fetch_ohlcv`` per stored price type.
CCXT_PRICES = {"mark": "mark", "index": "index", "premium": "premiumIndex"}


_reservation: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "dc_reservation", default=None
)
#: The endpoint of the request in flight in this task (per-endpoint window mode).
_endpoint: contextvars.ContextVar[str | None] = contextvars.ContextVar("dc_endpoint", default=None)


@dataclass(slots=True)
class CallFigures:
    """What the calls made under one context cost: requests, 429s, 418s and weight (a distributed
    job's own, whatever else its worker runs meanwhile)."""

    requests: int = 0
    http_429: int = 0
    http_418: int = 0
    weight: int = 0


#: Set by whoever wants the figures of the calls made under it (the distributed worker, per job):
#: every client adds to it too. The tasks a call starts copy the context, so they count here.
call_figures: contextvars.ContextVar[CallFigures | None] = contextvars.ContextVar(
    "dc_call_figures", default=None
)


@dataclass(frozen=True, slots=True)
class ExchangeSettings:
    """What :class:`ExchangeClient` uses: the ``exchange`` section and two ``performance`` keys.

    Build it with :meth:`from_config`, or directly in a test (only ``id`` is required).
    """

    #: The ccxt class id, e.g. ``"binance"``.
    id: str
    #: Overrides of ccxt's ``urls`` (the simulator sets these).
    urls: Mapping[str, Any] = field(default_factory=dict)
    #: Extra ccxt ``options``.
    options: Mapping[str, Any] = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    max_retries: int = 7
    ohlcv_page_limit: int = 1000
    #: Weight per minute; ``None`` reads it from the exchange (Binance: 6000).
    weight_limit: int | None = None
    rate_limit_margin: float = 0.01
    #: Requests per minute on top of the weight budget (``performance.api_rate_limit``); ``None``: no cap.
    requests_per_min: int | None = None
    #: Requests in flight at once, over all tasks (``performance.requests_in_flight``).
    requests_in_flight: int = 32
    #: The config section these settings come from, for messages.
    section: str = "exchange"
    #: Requests per 2 s window of named endpoints, over the venue's own (OKX: from ccxt's table).
    endpoint_limits: Mapping[str, int] = field(default_factory=dict)
    #: Local address requests leave from (a distributed worker's own IP, issue 17); None: any.
    source_address: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> ExchangeSettings:
        ex = config.exchange
        same = ("id", "urls", "options", "timeout_s", "max_retries", "ohlcv_page_limit")
        return cls(
            **pick(ex, *same, "weight_limit", "rate_limit_margin", "endpoint_limits"),
            **pick(config.performance, "requests_in_flight", requests_per_min="api_rate_limit"),
            api_key=ex.api_key.get_secret_value() if ex.api_key is not None else None,
            secret=ex.secret.get_secret_value() if ex.secret is not None else None,
        )


@dataclass(slots=True)
class RequestStats:
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    http_418: int = 0
    malformed: int = 0
    timeouts: int = 0


class ExchangeClient:
    """Owns one ccxt exchange instance and the :class:`RateLimiter` shared by its users.

    Use it as ``async with ExchangeClient(settings) as client:`` (which opens it) or call
    :meth:`open` and :meth:`close` yourself.

    Args:
        settings: what to connect to and how (:meth:`ExchangeSettings.from_config`).
        clock: wall clock in seconds, for the limiter.
        monitor: receives every call's duration and outcome, and every retry.
        exchange: a ccxt exchange instance (or a stand-in with the same methods) to use instead
            of building one from ``settings``; the client then owns it and closes it.
    """

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        clock: Callable[[], float] = time.time,
        monitor: CollectorMonitor | None = None,
        exchange: Any = None,
    ) -> None:
        self.settings = settings
        self.stats = RequestStats()
        self.monitor = monitor
        self._clock = clock
        #: What the venue's folder knows (paging, pacing, listing): :mod:`data_collector.venues`.
        self.venue = venue = adapter_for(settings.id)
        self.weight_mode = venue.weight_headers or settings.weight_limit is not None
        #: Paced per endpoint over 2 s windows (OKX), request by request in ccxt's ``fetch2``.
        self.window_mode = venue.endpoint_limits is not None and settings.weight_limit is None
        #: A futures venue: klines weigh by their limit.
        self.futures = settings.id in venue.futures_ids or settings.options.get("defaultType") in (
            "swap",
            "future",
        )
        self.limiter = RateLimiter(
            requests_per_min=settings.requests_per_min,
            weight_per_min=(settings.weight_limit or 6000) if self.weight_mode else None,
            safety_margin=settings.rate_limit_margin,
            clock=clock,
        )
        self.exchange: Any = None
        #: What this client shares with other workers behind its IP, through Redis: a weight
        #: budget (``SharedWeightBudget``, weight mode), spent after the local limiter's
        #: reservation, or per-endpoint windows (``SharedEndpointWindows``, window mode), a slot
        #: of which each HTTP request takes after its local window; None: this IP is its own.
        self.shared_budget: Any = None
        self._session: Any = None
        self._given_exchange: Any = exchange
        self._in_flight = asyncio.Semaphore(settings.requests_in_flight)
        self._closed = False
        self.markets: dict[str, Any] = {}
        #: The most candles one OHLCV answer has held: the server's cap per answer is at least
        #: this, so an answer with fewer candles was not cut short (see ``page_coverage``).
        self.most_candles_seen = 0

    @property
    def id(self) -> str:
        return self.settings.id

    async def __aenter__(self) -> ExchangeClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _build(self) -> Any:
        ex = self.settings
        cls = getattr(ccxt, ex.id, None)
        if cls is None:
            raise ConfigError(f"exchange.id: {ex.id!r} is not a ccxt exchange id such as 'binance'")
        params: dict[str, Any] = {
            "enableRateLimit": False,
            "timeout": int(ex.timeout_s * 1000),
            "options": dict(ex.options),
        }
        if ex.urls:
            params["urls"] = _deep_merge(dict(getattr(cls, "urls", {}) or {}), ex.urls)
        if ex.api_key is not None:
            params["apiKey"] = ex.api_key
        if ex.secret is not None:
            params["secret"] = ex.secret
        if ex.source_address is not None:
            # ccxt builds its own session without a local address; given one, it leaves it to us.
            connector = aiohttp.TCPConnector(local_addr=(ex.source_address, 0))
            self._session = params["session"] = aiohttp.ClientSession(connector=connector)
        exchange = cls(params)
        if ex.urls:
            # ccxt deep-extends describe() with the params, so the override wins; keep it explicit.
            exchange.urls = _deep_merge(dict(exchange.urls), ex.urls)
        return self._attach(exchange)

    def _attach(self, exchange: Any) -> Any:
        """Route ``exchange``'s requests through this client: our limiter paces, our hook observes."""
        exchange.enableRateLimit = False
        exchange.on_rest_response = self._on_rest_response
        if self.venue.raw_rows:
            # ccxt's per-field helpers, sort and filter cost more per candle than everything else
            # we do with a page; kline arrays and aggTrades need no mapping, and validate_page
            # and validate_trades check them.
            exchange.parse_ohlcvs = raw_kline_rows
            exchange.parse_trades = raw_trade_rows
        if self.window_mode and self.venue.endpoint_limits is not None:
            limits = {
                **self.venue.endpoint_limits(exchange, self.limiter.window_s),
                **self.settings.endpoint_limits,
            }
            self.limiter.set_endpoint_limits(limits)
            exchange.fetch2 = self._paced_fetch2(exchange.fetch2)
        elif not self.weight_mode:
            self.limiter.fallback_interval_s = float(getattr(exchange, "rateLimit", 0) or 0) / 1000.0
        return exchange

    def _paced_fetch2(self, fetch2: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """ccxt's ``fetch2`` behind the limiter's window of its endpoint (every HTTP request of a
        ccxt call, ``load_markets``' several included, waits for its own endpoint's window), and
        for its slot in the endpoint's shared window when workers behind this IP share them."""

        async def paced(
            path: str, api: Any = "public", method: str = "GET", params: Any = None, config: Any = None
        ) -> Any:
            shared = None if self.weight_mode else self.shared_budget  # a budget is spent in ``_one``
            reservation = await self.limiter.acquire_endpoint(path, shared=shared)
            figures = call_figures.get()
            if figures is not None:
                figures.weight += reservation.weight
            token = _endpoint.set(path)
            try:
                # The in-flight bound and the timeout start once the window lets it go: a page
                # waiting for a full endpoint holds no slot another endpoint could use, and its
                # wait (several windows when many pages queue) is never taken for a stall.
                async with self._in_flight, asyncio.timeout(self._call_timeout_s()):
                    return await fetch2(path, api, method, params if params is not None else {}, config or {})
            finally:
                _endpoint.reset(token)

        return paced

    def _on_rest_response(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        headers: Mapping[str, str],
        body: str,
        request_headers: Any,
        request_body: Any,
    ) -> str:
        reservation = _reservation.get()
        figures = call_figures.get()
        if code == 429:
            self.stats.http_429 += 1
            if figures is not None:
                figures.http_429 += 1
            endpoint = _endpoint.get()
            if endpoint is not None and self.limiter.window_mode:
                log.warning("%s answered 429 on %s: that endpoint pauses one window", self.id, endpoint)
                self.limiter.pause_endpoint(endpoint)
        elif code == 418:
            self.stats.http_418 += 1
            if figures is not None:
                figures.http_418 += 1
        self.limiter.observe_headers(
            headers, reservation_minute=reservation.minute if reservation is not None else None
        )
        if 200 <= code < 300:
            text = body.strip() if isinstance(body, str) else ""
            # ccxt turns an unparsable or empty 200 body into a text response, which fetch_ohlcv
            # would read as "no candles": that must be a retried error, never an empty range.
            if not text or text[0] not in "[{" or text[-1] not in "]}":
                self.stats.malformed += 1
                raise ccxt.BadResponse(f"{self.id} {method} {url}: malformed body {text[:60]!r}")
        return body

    async def open(self) -> None:
        """Create the client, load the markets and measure the server clock offset.

        Raises:
            ServerUnavailableError: the exchange cannot be reached (after retries).
        """
        if self.exchange is not None:
            return
        given, self._given_exchange = self._given_exchange, None
        self.exchange = self._attach(given) if given is not None else self._build()
        exchange = self.exchange
        exchange.enableLastJsonResponse = True
        try:
            await self.call(exchange.load_markets, weight=self.weight("exchangeInfo"), attempts=3)
            info = exchange.last_json_response
            self._configure_weight_limit(info)
            if exchange.has.get("fetchTime"):
                asked = self._clock()
                offset = await measure_server_offset(
                    lambda: self.call(exchange.fetch_time, weight=self.weight("time"), attempts=3),
                    clock=self._clock,
                )
                self.limiter.set_server_offset(offset)
                # The midpoint rule is off by at most half the round trip; a request's trip to the
                # server adds the other half. Wait that much past each boundary.
                rtt_s = self._clock() - asked
                self.limiter.boundary_guard_s = max(self.limiter.boundary_guard_s, min(rtt_s, 2.0) + 0.05)
        except PermanentError:
            raise
        except (TransientError, ccxt.BaseError, OSError) as exc:
            raise ServerUnavailableError(f"exchange {self.id}", _brief(exc)) from None
        finally:
            exchange.enableLastJsonResponse = False
            exchange.last_json_response = None
        self.markets = exchange.markets or {}

    def _configure_weight_limit(self, info: object) -> None:
        if not self.weight_mode or self.settings.weight_limit is not None:
            return
        if isinstance(info, dict):
            for limit in info.get("rateLimits", []) or []:
                if (
                    isinstance(limit, dict)
                    and limit.get("rateLimitType") == "REQUEST_WEIGHT"
                    and limit.get("interval") == "MINUTE"
                    and int(limit.get("intervalNum", 1)) == 1
                ):
                    self.limiter.set_weight_limit(int(limit["limit"]))
                    log.info("weight budget from exchangeInfo: %s per minute", limit["limit"])
                    if self.shared_budget is not None:
                        # Shared from here on at the exchange's limit; until now (this exchangeInfo
                        # and nothing else) at the configured or default one.
                        self.shared_budget.set_weight_limit(self.limiter.budget)

    async def close(self) -> None:
        """Close the HTTP session; safe to call twice."""
        self._closed = True
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            exchange, self._given_exchange = self._given_exchange, None
        if exchange is not None:
            await exchange.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def server_now_ms(self) -> int:
        return int(self.limiter.server_now() * 1000)

    def market(self, symbol: str) -> dict[str, Any]:
        """The ccxt market of ``symbol``, or a clear :class:`InvalidSymbolError`."""
        market = self.markets.get(symbol)
        if market is None:
            raise InvalidSymbolError(f"unknown symbol {symbol!r}: {self.id} does not list it")
        return dict(market)

    def check_timeframe(self, timeframe: str) -> None:
        timeframes = getattr(self.exchange, "timeframes", None) or {}
        if timeframes and timeframe not in timeframes:
            raise InvalidTimeframeError(
                f"timeframe {timeframe!r} is not supported by {self.id}: use one of {', '.join(timeframes)}"
            )

    def check_page_limit(self, symbol: str) -> None:
        """Refuse an ``exchange.ohlcv_page_limit`` above the exchange's documented maximum.

        ccxt documents it per market type (``features``, fetchOHLCV ``limit``: 1000 on Binance
        spot) and silently asks for no more; a larger page would come back cut short.

        Raises:
            ConfigError: the limit is above the maximum for ``symbol``'s market.
        """
        limit = self.settings.ohlcv_page_limit
        cap = self.venue.ohlcv_page_limit
        if cap is not None and limit > cap:
            raise ConfigError(
                f"{self.settings.section}.ohlcv_page_limit: {limit} is above {cap}, "
                f"{self.venue.ohlcv_page_reason}; set it to {cap} or less"
            )
        maximum = self.exchange.feature_value(symbol, "fetchOHLCV", "limit")
        if isinstance(maximum, int) and 0 < maximum < limit:
            raise ConfigError(
                f"{self.settings.section}.ohlcv_page_limit: {limit} is above {self.id}'s maximum of {maximum} candles "
                f"per request ({symbol}); set it to {maximum} or less"
            )

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        weight: int = 1,
        attempts: int | None = None,
        **kwargs: Any,
    ) -> T:
        """Run one exchange call under the limiter, a timeout and the retry policy."""
        timeout_s = self.settings.timeout_s
        policy = retry_policy(
            attempts=attempts or self.settings.max_retries + 1,
            on_retry=lambda state: self._count_retry(),
        )
        async for attempt in policy:
            with attempt:
                if self.window_mode:  # bounded request by request in ``fetch2``
                    return await self._one(fn, args, kwargs, weight, None)
                async with self._in_flight:
                    return await self._one(fn, args, kwargs, weight, timeout_s)
        raise AssertionError("unreachable: the retry policy re-raises")  # pragma: no cover

    def _call_timeout_s(self) -> float:
        """The bound on one call from outside ccxt (which has its own ``timeout``)."""
        return self.settings.timeout_s * 1.5 + 1.0

    async def _one(
        self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any, weight: int, timeout_s: float | None
    ) -> T:
        # In window mode every HTTP request waits for its endpoint's window in ``fetch2``.
        reservation = (
            None if self.window_mode else await self.limiter.acquire(weight if self.weight_mode else 1)
        )
        if self.shared_budget is not None and self.weight_mode:
            await self.shared_budget.acquire(weight)
        token = _reservation.set(reservation)
        started = time.perf_counter()
        status: int | None = None
        ok = False
        figures = call_figures.get()
        if figures is not None:
            figures.requests += 1
            if reservation is not None:  # None in window mode: each HTTP request counts in ``fetch2``
                figures.weight += reservation.weight
        try:
            self.stats.requests += 1
            async with asyncio.timeout(None if timeout_s is None else self._call_timeout_s()):
                result = await fn(*args, **kwargs)
            ok = True
        except TimeoutError:
            self.stats.timeouts += 1
            raise
        except ccxt.DDoSProtection as exc:
            status = http_status_of(exc)
            if self.window_mode:
                raise  # the endpoint's gate is closed (``_on_rest_response``); the others go on
            log.warning("%s answered %s: every request pauses (Retry-After)", self.id, status)
            if self.limiter.gate_open_in_s <= 0:
                # No Retry-After header: back off for the rest of the minute.
                self.limiter.pause(60.0 - self.limiter.server_now() % 60.0)
            raise
        finally:
            _reservation.reset(token)
            if reservation is not None:
                self.limiter.release(reservation)
            if self.monitor is not None:
                self.monitor.record_api_call((time.perf_counter() - started) * 1000, ok, status=status)
                limiter = self.limiter
                if limiter.weight_limit is not None and reservation is not None:
                    self.monitor.record_request_weight(
                        reservation.weight,
                        limiter.used_weight,
                        limiter.weight_limit,
                        limiter.budget,
                        limiter.minute_left_s,
                    )
        return result

    def _count_retry(self) -> None:
        self.stats.retries += 1
        if self.monitor is not None:
            self.monitor.record_retry()

    def weight(self, endpoint: str) -> int:
        """The weight of ``endpoint`` (``exchangeInfo``, ``time``) on the budget this client paces:
        USDⓈ-M futures' own table, or spot's."""
        return (BINANCE_FUTURES_WEIGHTS if self.futures else BINANCE_WEIGHTS)[endpoint]

    def kline_weight(self, limit: int) -> int:
        """The weight of one klines request of ``limit`` candles on this venue."""
        return futures_kline_weight(limit) if self.futures else BINANCE_WEIGHTS["klines"]

    async def fetch_page(
        self, symbol: str, timeframe: str, page: Range, limit: int, price: str = "last"
    ) -> list[Candle]:
        """Fetch and validate the candles opening in ``page`` (at most ``limit`` of them).

        ``price``: ``last`` (traded), or ``mark``, ``index``, ``premium`` (perpetuals).
        """
        start, end = page
        params: dict[str, Any] = {"until": end - 1}
        if price != "last":
            params["price"] = CCXT_PRICES[price]

        async def fetch() -> list[Candle]:
            try:
                rows = await self.exchange.fetch_ohlcv(
                    symbol, timeframe, since=start, limit=limit, params=params
                )
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                self.stats.malformed += 1
                raise MalformedPageError(f"unparsable page: {exc}") from None
            try:
                candles = validate_page(rows, timeframe, start, end, signed=price == "premium")
            except MalformedPageError:
                self.stats.malformed += 1
                raise
            self.most_candles_seen = max(self.most_candles_seen, len(candles))
            return candles

        return await self.call(fetch, weight=self.kline_weight(limit))

    async def first_candle_ms(self, symbol: str, timeframe: str = "1m") -> int | None:
        """The open time of the exchange's first candle of ``symbol`` (its listing), if any.

        OKX gives it in the instrument (``listTime``) and answers ``since=0`` with nothing, so
        it is read from the loaded markets there, without a request.
        """
        if self.venue.listing_ms is not None:
            return self.venue.listing_ms(self.markets.get(symbol))

        async def fetch() -> int | None:
            rows = await self.exchange.fetch_ohlcv(symbol, timeframe, since=0, limit=1)
            if not rows:
                return None
            ts = rows[0][0]
            if not isinstance(ts, int):
                raise MalformedPageError(f"first candle has no timestamp: {rows[0]!r:.60}")
            return ts

        return await self.call(fetch, weight=self.kline_weight(1))


def classify(exc: BaseException) -> CollectorError:
    """Map a failure to the project's errors with a one-line message (no secrets, no traceback)."""
    if isinstance(exc, CollectorError):
        return exc
    if isinstance(exc, ccxt.BadSymbol):
        return InvalidSymbolError(f"the exchange rejected the symbol: {_brief(exc)}")
    if is_transient(exc):
        return TransientError(f"gave up after retries: {_brief(exc)}")
    return PermanentError(_brief(exc))


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
