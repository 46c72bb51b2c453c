"""Where each venue's lost trades are fetched back by id: one small "trades by id range" per venue.

The repair (:mod:`.trade_repair`) is venue-generic: a gap marker names ids ``first..last`` of a
channel whose ids are contiguous per symbol, and a :class:`TradeSource` returns them a page at a
time, oldest first, each as the item the channel's WebSocket normaliser takes (so a repaired
trade gets the entry id, ``<trade ms>-<id>``, and the fields it would have had live).

Each venue folder owns its source, named by its :class:`~data_collector.venues.stream.StreamVenue`'s
``trade_sources``: Binance's ``aggTrades?fromId=`` (:mod:`data_collector.venues.binance.trade_source`),
OKX's ``history-trades`` (:mod:`data_collector.venues.okx.trade_source`). The generic ccxt.pro
adapter has none: its gaps stay marked.
"""

from __future__ import annotations

from typing import Any, Protocol

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
