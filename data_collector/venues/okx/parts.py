"""What an OKX streamer builds (:data:`PARTS`): the ``books`` keeper that resubscribes a broken
book, the ``/public`` and ``/business`` connections and the payload normalisers.

Imported when a streamer starts (``StreamVenue.parts``): see :mod:`data_collector.venues.okx`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_collector.streaming.connection import Feed
from data_collector.streaming.order_book import BookKeeper
from data_collector.venues.okx.book import OkxBookKeeper
from data_collector.venues.okx.connection import OkxConnection, build_connections, route_key
from data_collector.venues.okx.protocol import inst_id, make_normalizer
from data_collector.venues.stream import StreamParts

if TYPE_CHECKING:
    from data_collector.streaming.service import StreamService

#: Longest quiet spell before a text ``ping`` (OKX drops a connection after 30 s without traffic).
PING_INTERVAL_S = 20.0


def books(service: StreamService, book_args: dict[str, Any]) -> BookKeeper:
    """``books`` checked by ``seqId`` and checksum; a broken one is resubscribed on its connection."""

    def resubscribe(symbol: str) -> None:
        inst = inst_id(symbol)
        for conn in service.connections:
            if isinstance(conn, OkxConnection) and route_key("books", inst) in conn.routes:
                conn.resubscribe("books", inst)

    return OkxBookKeeper(service.symbols, resubscribe=resubscribe, **book_args)


def connections(service: StreamService, hooks: dict[str, Any]) -> list[Feed]:
    options = service.options
    return [
        *build_connections(
            service.symbols,
            service.channels,
            service.route,
            options.ws_url,
            per_connection=options.max_streams_per_connection,
            ping_interval_s=min(PING_INTERVAL_S, options.connection.watchdog_s / 2),
            **hooks,
        )
    ]


PARTS = StreamParts(books=books, connections=connections, normalizer=make_normalizer)
