"""OKX v5 REST for the streamer's kline repair: closed candles and the server's clock, in the shapes
:class:`~data_collector.venues.binance.rest.BinanceRest` gives them (so the repair is one code path).

``/api/v5/market/history-candles`` answers newest first, 100 a page, paged with ``after`` (older
than a ts) and ``before`` (newer than a ts), both exclusive; a row is
``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`` (a swap's ``vol`` counts contracts, its
``volCcy`` is the base volume). Only confirmed (``confirm == "1"``) candles are returned.
"""

from __future__ import annotations

import asyncio
from typing import Any

from data_collector.errors import PermanentError, TransientError
from data_collector.markets import is_perpetual, next_open_ms
from data_collector.venues.binance.rest import BinanceRest
from data_collector.venues.okx.protocol import BARS, inst_id
from data_collector.venues.okx.rules import HISTORY_CANDLES_REPAIR_PER_2S

#: Candles per ``history-candles`` page (OKX's maximum).
CANDLE_PAGE = 100
#: Pages one repair reads at most (a longer outage is the backfill's).
MAX_PAGES = 20


def _data(body: Any, path: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise TransientError(f"GET {path}: unexpected response")
    if body.get("code") not in ("0", 0):
        raise PermanentError(f"GET {path}: OKX code {body.get('code')}: {body.get('msg')}")
    return list(body["data"])


class OkxKlineRest:
    """``klines`` and ``server_time`` as :class:`BinanceRest` has them, over OKX's endpoints.

    ``history-candles`` pages go out at least ``2 s / (per_2s - 1)`` apart, each caller taking the
    next free slot (concurrent repairs share one client): a 2 s window then holds at most
    ``per_2s`` of them, and OKX never answers 429. A spacing, as :class:`.trade_source.OkxHistoryTrades`
    has, rather than a limiter library: one endpoint, one client.
    """

    def __init__(self, rest: BinanceRest, per_2s: int = HISTORY_CANDLES_REPAIR_PER_2S) -> None:
        self._rest = rest
        self._spacing_s = 2.0 / max(1, per_2s - 1)
        self._next_at = 0.0

    async def _slot(self) -> None:
        """Wait for this request's place in the spacing."""
        now = asyncio.get_running_loop().time()
        at = max(now, self._next_at)
        self._next_at = at + self._spacing_s
        if at > now:
            await asyncio.sleep(at - now)

    async def server_time(self) -> int:
        """``/api/v5/public/time``: the exchange's clock in ms."""
        data = _data(await self._rest.get_json("/api/v5/public/time", {}), "/api/v5/public/time")
        try:
            return int(data[0]["ts"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise TransientError("GET /api/v5/public/time: unexpected response") from None

    async def klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, *, background: bool = False
    ) -> list[list[Any]]:
        """Closed candles with ``start_ms <= open <= end_ms``, oldest first, as Binance kline rows
        ``[open, o, h, l, c, base volume, close ms, quote volume, trades (0: OKX gives none)]``;
        with ``background`` each page is a background request of the REST client's gate (the
        refill after a Redis restart: live requests first)."""
        path = "/api/v5/market/history-candles"
        swap = is_perpetual(symbol)
        rows: dict[int, list[Any]] = {}
        after = end_ms + 1
        for _ in range(MAX_PAGES):
            params: dict[str, str | int] = {
                "instId": inst_id(symbol),
                "bar": BARS[interval],
                "after": after,
                "before": start_ms - 1,
                "limit": CANDLE_PAGE,
            }
            await self._slot()
            page = _data(
                await self._rest.get_json(path, params, background_weight=1 if background else 0), path
            )
            for c in page:
                if not isinstance(c, list) or len(c) < 9 or c[8] != "1":
                    continue
                open_ms = int(c[0])
                if start_ms <= open_ms <= end_ms:
                    close_ms = next_open_ms(open_ms, interval) - 1
                    rows[open_ms] = [
                        open_ms,
                        c[1],
                        c[2],
                        c[3],
                        c[4],
                        c[6] if swap else c[5],
                        close_ms,
                        c[7],
                        0,
                    ]
            if len(page) < CANDLE_PAGE:
                break
            after = min(int(c[0]) for c in page)
        return [rows[k] for k in sorted(rows)]
