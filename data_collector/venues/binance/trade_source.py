"""Binance's lost trades by id (spot and USDⓈ-M): aggregate trades from
``<api>/aggTrades?fromId=first&limit=1000``, raw trades from ``<api>/historicalTrades?fromId=``."""

from __future__ import annotations

from data_collector.markets import exchange_symbol
from data_collector.streaming.trade_sources import Fetched
from data_collector.venues.binance.rest import BinanceRest


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


class BinanceHistoricalTrades:
    """Binance's raw trades by id (``historicalTrades?fromId=``, 1,000 a page), shaped as the
    ``trade`` stream's frame would have carried them (``E``: the trade time)."""

    channel = "trade"
    page = 1000

    def __init__(self, rest: BinanceRest) -> None:
        self._rest = rest

    async def fetch(self, symbol: str, first_id: int, last_id: int) -> list[Fetched]:
        rows = await self._rest.historical_trades(symbol, first_id, min(self.page, last_id - first_id + 1))
        sym = exchange_symbol(symbol)
        return [
            (
                row["id"],
                {
                    "s": sym,
                    "E": row.get("time"),
                    "t": row["id"],
                    "p": row.get("price"),
                    "q": row.get("qty"),
                    "T": row.get("time"),
                    "m": row.get("isBuyerMaker"),
                },
            )
            for row in rows
            if type(row.get("id")) is int
        ]
