"""OKX's lost trades by ``tradeId``: ``/api/v5/market/history-trades?type=1&before=first-1&after=last+1&limit=100``.

Paged by ``tradeId``: ``after`` asks for older ids, ``before`` for newer, both exclusive; answers
come newest first. OKX counts 20 requests per 2 s on this endpoint and answers one too many with
HTTP 429 ``{"code": "50011"}``, so requests are spaced to stay inside it, with
:data:`~.rules.HISTORY_TRADES_JOB_PER_2S` of the window left to the trade backfill job that
closes the trades table's holes (``streaming.store_trades``), which may run at the same time.
"""

from __future__ import annotations

import asyncio

from data_collector.errors import PermanentError, TransientError
from data_collector.streaming.trade_sources import Fetched
from data_collector.venues.binance.rest import BinanceRest
from data_collector.venues.okx.protocol import inst_id
from data_collector.venues.okx.rules import HISTORY_TRADES_JOB_PER_2S, HISTORY_TRADES_PER_2S

#: OKX ``history-trades``: the repair's requests per 2 s window, and trades per page.
OKX_HISTORY_TRADES_PER_2S = HISTORY_TRADES_PER_2S - 2 * HISTORY_TRADES_JOB_PER_2S  # see rules
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
