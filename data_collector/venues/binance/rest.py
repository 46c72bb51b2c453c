"""The REST calls the streamer needs (symbol list, depth snapshots, kline repair, settled funding),
over plain aiohttp.

The same calls serve spot (``/api/v3/...``) and USDⓈ-M futures (``/fapi/v1/...``): the path
prefix comes from the venue (:mod:`.venue`).

ccxt is deliberately not used: importing it costs about 100 MB of RSS, more than the whole
streamer. Every request is bounded by ``timeout_s``; failures raise :class:`TransientError`
(network, 5xx, 429/418 with the server's ``Retry-After``) or :class:`PermanentError` (other 4xx).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from data_collector.errors import PermanentError, TransientError
from data_collector.markets import exchange_symbol

#: Request weight trade repairs may spend per minute: a fifth of Binance spot's 6,000.
BACKGROUND_WEIGHT_PER_MIN = 1200


class RateLimitedError(TransientError):
    """HTTP 429/418: wait ``retry_after_s`` before the next request."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def rest_base_from_urls(urls: dict[str, Any], api_prefix: str = "/api/v3") -> str | None:
    """The REST base URL (``http://host:port``) from ccxt-style ``urls`` overrides, if any.

    ``api_prefix`` ``/fapi/v1`` reads ccxt's ``fapiPublic`` (binanceusdm) instead of ``public``,
    ``/api/v5`` ccxt okx's ``rest``.
    """
    api = urls.get("api")
    name = {"/fapi/v1": "fapiPublic", "/api/v5": "rest"}.get(api_prefix, "public")
    public = api.get(name) if isinstance(api, dict) else api if isinstance(api, str) else None
    if not isinstance(public, str):
        return None
    for suffix in (api_prefix, "/api"):
        if public.endswith(suffix):
            return public[: -len(suffix)]
    return public.rstrip("/")


class RequestGate:
    """Live requests first; background ones (trade repair) only in the gaps, under a weight budget.

    A live request (depth snapshots, kline repair, funding) holds :meth:`live` while it waits and
    runs. A background request is admitted only while no live request is waiting or running, and
    only while the background weight sent in the last 60 s stays within ``background_weight_per_min``
    (the share of the exchange's per-minute weight the repair may use). Hand-written because the
    limiters at hand (aiolimiter, the backfill's :class:`~data_collector.backfill.rate_limit.RateLimiter`)
    have no priorities: a repair queued in them would delay the next depth snapshot.

    Args:
        background_weight_per_min: request weight background requests may spend per 60 s.
    """

    def __init__(self, background_weight_per_min: int) -> None:
        self.background_weight_per_min = max(1, background_weight_per_min)
        self._live = 0
        self._no_live = asyncio.Event()
        self._no_live.set()
        #: ``(loop time, weight)`` of the background requests of the last 60 s.
        self._spent: deque[tuple[float, int]] = deque()
        #: Background requests admitted, and the seconds they waited in all.
        self.background_requests = 0
        self.background_waited_s = 0.0

    @contextlib.asynccontextmanager
    async def live(self) -> AsyncIterator[None]:
        self._live += 1
        self._no_live.clear()
        try:
            yield
        finally:
            self._live -= 1
            if self._live == 0:
                self._no_live.set()

    async def background(self, weight: int) -> None:
        """Wait until a background request of ``weight`` may go out."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await self._no_live.wait()
            now = loop.time()
            spent = self._spent
            while spent and spent[0][0] <= now - 60.0:
                spent.popleft()
            used = sum(w for _, w in spent)
            if used + weight <= self.background_weight_per_min or not spent:
                if self._live == 0:
                    spent.append((now, weight))
                    self.background_requests += 1
                    self.background_waited_s += now - started
                    return
                continue
            await asyncio.sleep(spent[0][0] + 60.0 - now)


class BinanceRest:
    """A small Binance REST client (spot, or USDⓈ-M with ``api="/fapi/v1"``); owns its aiohttp
    session. Close it with :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 10.0,
        api: str = "/api/v3",
        background_weight_per_min: int = BACKGROUND_WEIGHT_PER_MIN,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        #: Live requests go first; trade repairs (``background``) wait for a quiet moment.
        self.gate = RequestGate(background_weight_per_min)
        self.api = api
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        #: After a 429/418, no request goes out before this loop time (the server's Retry-After).
        self._blocked_until = 0.0

    async def _get(self, path: str, params: dict[str, str | int], background_weight: int = 0) -> Any:
        """GET ``path``; with ``background_weight`` it is a background request of that weight
        (admitted by :attr:`gate` when no live request waits), else a live one."""
        if background_weight:
            await self.gate.background(background_weight)
            return await self._send(path, params)
        async with self.gate.live():
            return await self._send(path, params)

    async def _send(self, path: str, params: dict[str, str | int]) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.base_url}{path}"
        loop = asyncio.get_running_loop()
        wait_s = self._blocked_until - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        try:
            async with self._session.get(url, params=params) as resp:
                body = await resp.read()
                if resp.status in (418, 429):
                    retry_after = float(resp.headers.get("Retry-After", "1") or 1)
                    self._blocked_until = max(self._blocked_until, loop.time() + retry_after)
                    raise RateLimitedError(f"GET {path}: HTTP {resp.status}", retry_after)
                if resp.status >= 500:
                    raise TransientError(f"GET {path}: HTTP {resp.status}")
                if resp.status >= 400:
                    raise PermanentError(f"GET {path}: HTTP {resp.status}: {body[:200]!r}")
                return orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransientError(f"GET {path}: {type(exc).__name__}: {exc}") from None

    async def server_time(self) -> int:
        """``<api>/time``: the exchange's clock in ms."""
        data = await self._get(f"{self.api}/time", {})
        if not isinstance(data, dict) or type(data.get("serverTime")) is not int:
            raise TransientError(f"GET {self.api}/time: unexpected response")
        return int(data["serverTime"])

    async def listed_symbols(self) -> set[str]:
        """``/api/v3/exchangeInfo``: the exchange's symbols as it spells them (``SOLUSDT``)."""
        data = await self._get(f"{self.api}/exchangeInfo", {})
        symbols = data.get("symbols") if isinstance(data, dict) else None
        if not isinstance(symbols, list):
            raise TransientError(f"GET {self.api}/exchangeInfo: unexpected response")
        return {str(s["symbol"]) for s in symbols if isinstance(s, dict) and "symbol" in s}

    async def depth(self, symbol: str, limit: int) -> dict[str, Any]:
        """``/api/v3/depth``: ``{"lastUpdateId": int, "bids": [[p, q]], "asks": [[p, q]]}``."""
        data = await self._get(f"{self.api}/depth", {"symbol": exchange_symbol(symbol), "limit": limit})
        if not isinstance(data, dict) or type(data.get("lastUpdateId")) is not int:
            raise TransientError(f"GET {self.api}/depth: unexpected response")
        return data

    async def klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, *, background: bool = False
    ) -> list[list[Any]]:
        """Klines with ``start_ms <= open time <= end_ms``, oldest first (all pages); with
        ``background`` each page is a background request (weight 2: 1,000 per page)."""
        out: list[list[Any]] = []
        cursor = start_ms
        while cursor <= end_ms:
            page = await self._get(
                f"{self.api}/klines",
                {
                    "symbol": exchange_symbol(symbol),
                    "interval": interval,
                    "startTime": cursor,
                    "endTime": end_ms,
                    "limit": 1000,
                },
                background_weight=2 if background else 0,
            )
            if not isinstance(page, list) or not page:
                break
            out.extend(row for row in page if isinstance(row, list) and len(row) >= 9)
            if len(page) < 1000:
                break
            cursor = int(page[-1][0]) + 1
        return out

    async def get_json(self, path: str, params: dict[str, str | int], background_weight: int = 0) -> Any:
        """``GET <base><path>`` decoded, with this client's timeouts and 429 handling (another
        venue's endpoint: OKX's ``history-trades``, say); a background request of
        ``background_weight`` when given."""
        return await self._get(path, params, background_weight)

    async def agg_trades(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """``<api>/aggTrades?fromId=`` (a background request, weight 4 on spot, 20 on USDⓈ-M): up
        to ``limit`` aggregate trades from id ``from_id`` on, in id order, as Binance sends them
        (``a``, ``p``, ``q``, ``f``, ``l``, ``T``, ``m``)."""
        return await self._trades_from(
            "aggTrades", symbol, from_id, limit, 4 if self.api == "/api/v3" else 20
        )

    async def historical_trades(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """``<api>/historicalTrades?fromId=`` (a background request, weight 25 on spot, 20 on
        USDⓈ-M; the spot docs list no API key for it any more, so none is sent): up to ``limit``
        trades from id ``from_id`` on, in id order, as Binance sends them (``id``, ``price``,
        ``qty``, ``time``, ``isBuyerMaker``)."""
        weight = 25 if self.api == "/api/v3" else 20
        return await self._trades_from("historicalTrades", symbol, from_id, limit, weight)

    async def _trades_from(
        self, endpoint: str, symbol: str, from_id: int, limit: int, weight: int
    ) -> list[dict[str, Any]]:
        params: dict[str, str | int] = {"symbol": exchange_symbol(symbol), "fromId": from_id, "limit": limit}
        data = await self._get(f"{self.api}/{endpoint}", params, background_weight=weight)
        if not isinstance(data, list):
            raise TransientError(f"GET {self.api}/{endpoint}: unexpected response")
        return [row for row in data if isinstance(row, dict)]

    async def funding_rates(self, symbol: str, start_ms: int, end_ms: int, limit: int = 1000) -> list[Any]:
        """``/fapi/v1/fundingRate`` (weight 1): the first ``limit`` settlements with
        ``start_ms <= fundingTime <= end_ms``, oldest first, as Binance sends them."""
        params: dict[str, str | int] = {
            "symbol": exchange_symbol(symbol),
            "startTime": start_ms,
            "endTime": end_ms,
            "limit": limit,
        }
        data = await self._get(f"{self.api}/fundingRate", params)
        if not isinstance(data, list):
            raise TransientError(f"GET {self.api}/fundingRate: unexpected response")
        return data

    async def close(self) -> None:
        """Close the HTTP session; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
