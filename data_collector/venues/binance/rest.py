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
from typing import Any

import aiohttp
import orjson

from data_collector.errors import PermanentError, TransientError
from data_collector.markets import exchange_symbol


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


class BinanceRest:
    """A small Binance REST client (spot, or USDⓈ-M with ``api="/fapi/v1"``); owns its aiohttp
    session. Close it with :meth:`close`."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, api: str = "/api/v3") -> None:
        self.base_url = base_url.rstrip("/")
        self.api = api
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        #: After a 429/418, no request goes out before this loop time (the server's Retry-After).
        self._blocked_until = 0.0

    async def _get(self, path: str, params: dict[str, str | int]) -> Any:
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

    async def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[list[Any]]:
        """Klines with ``start_ms <= open time <= end_ms``, oldest first (all pages)."""
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
            )
            if not isinstance(page, list) or not page:
                break
            out.extend(row for row in page if isinstance(row, list) and len(row) >= 9)
            if len(page) < 1000:
                break
            cursor = int(page[-1][0]) + 1
        return out

    async def get_json(self, path: str, params: dict[str, str | int]) -> Any:
        """``GET <base><path>`` decoded, with this client's timeouts and 429 handling (another
        venue's endpoint: OKX's ``history-trades``, say)."""
        return await self._get(path, params)

    async def agg_trades(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """``<api>/aggTrades?fromId=``: up to ``limit`` aggregate trades from id ``from_id`` on, in id
        order, as Binance sends them (``a``, ``p``, ``q``, ``f``, ``l``, ``T``, ``m``)."""
        data = await self._get(
            f"{self.api}/aggTrades", {"symbol": exchange_symbol(symbol), "fromId": from_id, "limit": limit}
        )
        if not isinstance(data, list):
            raise TransientError(f"GET {self.api}/aggTrades: unexpected response")
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
