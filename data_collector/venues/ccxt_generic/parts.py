"""What a generic (ccxt.pro) streamer builds (:data:`PARTS`): a keeper publishing ccxt.pro's own
books, one watch loop per kind of data (which build events from ccxt's parsed structures, so its
routes' normaliser is never called).

Imported when a streamer starts (``StreamVenue.parts``): see :mod:`data_collector.venues.stream`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_collector.streaming.connection import Feed
from data_collector.streaming.normalize import MalformedEvent, Normalized, Normalizer
from data_collector.streaming.order_book import BookKeeper
from data_collector.venues.ccxt_generic.connection import CcxtBookKeeper, build_connections
from data_collector.venues.stream import StreamParts

if TYPE_CHECKING:
    from data_collector.streaming.service import StreamService


def books(service: StreamService, book_args: dict[str, Any]) -> BookKeeper:
    return CcxtBookKeeper(service.symbols, **book_args)


def connections(service: StreamService, hooks: dict[str, Any]) -> list[Feed]:
    options = service.options
    keeper = service.books if isinstance(service.books, CcxtBookKeeper) else None
    return [
        *build_connections(
            options.protocol,
            options.ccxt_config,
            options.exchange,
            service.symbols,
            service.channels,
            service.route,
            keeper,
            **hooks,
        )
    ]


def normalizer(exchange: str, symbol: str, channel: str) -> Normalizer:
    """Not called: the watch loops build events from ccxt.pro's parsed structures, not frames."""

    def unused(data: dict[str, Any], recv_ms: int) -> Normalized:
        raise MalformedEvent(f"{exchange} {symbol} {channel}: ccxt.pro parses its own frames")

    return unused


PARTS = StreamParts(books=books, connections=connections, normalizer=normalizer)
