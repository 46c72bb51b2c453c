"""OKX v5 REST for the streamer's kline repair: closed candles and the server's clock, in the shapes
:class:`~data_collector.venues.binance.rest.BinanceRest` gives them (so the repair is one code path).

``/api/v5/market/history-candles`` answers newest first, 100 a page, paged with ``after`` (older
than a ts) and ``before`` (newer than a ts), both exclusive; a row is
``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`` (a swap's ``vol`` counts contracts, its
``volCcy`` is the base volume). Only confirmed (``confirm == "1"``) candles are returned.
"""

from __future__ import annotations

from typing import Any

from data_collector.errors import PermanentError, TransientError
from data_collector.markets import is_perpetual, next_open_ms
from data_collector.venues.binance.rest import BinanceRest
from data_collector.venues.okx.protocol import BARS, inst_id

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
    """``klines`` and ``server_time`` as :class:`BinanceRest` has them, over OKX's endpoints."""

    def __init__(self, rest: BinanceRest) -> None:
        self._rest = rest

    async def server_time(self) -> int:
        """``/api/v5/public/time``: the exchange's clock in ms."""
        data = _data(await self._rest.get_json("/api/v5/public/time", {}), "/api/v5/public/time")
        try:
            return int(data[0]["ts"])
        except (IndexError, KeyError, TypeError, ValueError):
            raise TransientError("GET /api/v5/public/time: unexpected response") from None

    async def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> list[list[Any]]:
        """Closed candles with ``start_ms <= open <= end_ms``, oldest first, as Binance kline rows
        ``[open, o, h, l, c, base volume, close ms, quote volume, trades (0: OKX gives none)]``."""
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
            page = _data(await self._rest.get_json(path, params), path)
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
