"""Where each venue's lost trades are fetched back by id: one small "trades by id range" per venue.

The repair (:mod:`.trade_repair`) is venue-generic: a gap marker names ids ``first..last`` of a
channel whose ids are contiguous per symbol, and a :class:`TradeSource` returns them a page at a
time, oldest first, each as the item the channel's WebSocket normaliser takes (so a repaired
trade gets the entry id, ``<trade ms>-<id>``, and the fields it would have had live).

- Binance (spot and USDⓈ-M), ``aggTrade``: ``<api>/aggTrades?fromId=first&limit=1000``.
- OKX, ``trade``: ``/api/v5/market/history-trades?type=1&before=first-1&after=last+1&limit=100``
  (paged by ``tradeId``: ``after`` asks for older ids, ``before`` for newer, both exclusive;
  answers come newest first). OKX counts 20 requests per 2 s on this endpoint and answers one
  too many with HTTP 429 ``{"code": "50011"}``, so requests are spaced to stay inside it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from data_collector.errors import PermanentError, TransientError
from data_collector.markets import exchange_symbol
from data_collector.streaming.okx.protocol import inst_id
from data_collector.streaming.rest import BinanceRest

#: A trade id and the WebSocket-shaped item the channel's normaliser takes.
Fetched = tuple[int, dict[str, Any]]


class TradeSource(Protocol):
    """A venue's trades by id range (see the module docstring)."""

    #: The channel whose gaps it repairs.
    channel: str
    #: The most trades one :meth:`fetch` returns.
    page: int

    async def fetch(self, symbol: str, first_id: int, last_id: int) -> list[Fetched]:
        """Up to :attr:`page` trades with ``first_id <= id <= last_id``, oldest first (fewer when
        REST holds no more yet)."""
        ...


class BinanceAggTrades:
    """Binance's aggregate trades by id (``aggTrades?fromId=``, 1,000 a page)."""

    channel = "aggTrade"
    page = 1000

    def __init__(self, rest: BinanceRest) -> None:
        self._rest = rest

    async def fetch(self, symbol: str, first_id: int, last_id: int) -> list[Fetched]:
        rows = await self._rest.agg_trades(symbol, first_id, min(self.page, last_id - first_id + 1))
        sym = exchange_symbol(symbol)
        return [(row["a"], {**row, "s": sym, "E": row.get("T")}) for row in rows if type(row.get("a")) is int]


#: OKX ``history-trades``: requests per 2 s window, and trades per page.
OKX_HISTORY_TRADES_PER_2S = 20
OKX_HISTORY_TRADES_PAGE = 100


class OkxHistoryTrades:
    """OKX trades by ``tradeId`` (``/api/v5/market/history-trades``, 100 a page).

    Requests go out one at a time (the repair is sequential), at least ``2 s / (limit - 1)``
    apart: any 2 s window then holds at most ``limit`` of them, so the endpoint's count is never
    passed. A spacing, not a token bucket: with one caller there is nothing to share, so no
    limiter library is needed.
    """

    channel = "trade"
    page = OKX_HISTORY_TRADES_PAGE

    def __init__(self, rest: BinanceRest, per_2s: int = OKX_HISTORY_TRADES_PER_2S) -> None:
        self._rest = rest
        self._spacing_s = 2.0 / max(1, per_2s - 1)
        self._next_at = 0.0
        #: Requests sent (the repair load).
        self.requests = 0

    async def fetch(self, symbol: str, first_id: int, last_id: int) -> list[Fetched]:
        loop = asyncio.get_running_loop()
        wait_s = self._next_at - loop.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self._next_at = loop.time() + self._spacing_s
        self.requests += 1
        upper = min(last_id, first_id + self.page - 1)
        body = await self._rest.get_json(
            "/api/v5/market/history-trades",
            {
                "instId": inst_id(symbol),
                "type": "1",
                "after": upper + 1,
                "before": first_id - 1,
                "limit": self.page,
            },
        )
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise TransientError("GET /api/v5/market/history-trades: unexpected response")
        code = body.get("code")
        if code not in ("0", 0):
            raise PermanentError(f"GET /api/v5/market/history-trades: OKX code {code}: {body.get('msg')}")
        out: list[Fetched] = []
        for item in reversed(body["data"]):
            raw = item.get("tradeId") if isinstance(item, dict) else None
            if type(raw) is str and raw.isdigit() and first_id <= int(raw) <= upper:
                out.append((int(raw), item))
        return out


def trade_source(kind: str, rest: BinanceRest) -> TradeSource | None:
    """The trade source of a streaming adapter (``binance``, ``okx``); None where REST serves no
    trades by id (the generic ccxt.pro adapter: its gaps stay marked)."""
    if kind == "binance":
        return BinanceAggTrades(rest)
    if kind == "okx":
        return OkxHistoryTrades(rest)
    return None
