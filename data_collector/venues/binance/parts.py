"""What a Binance streamer builds (:data:`PARTS`): the depth-diff book keeper over REST
snapshots, the combined-stream connections and the payload normalisers.

Imported when a streamer starts (``StreamVenue.parts``), not with the venue registry: these
modules import the streaming package, which reads the config, which reads the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_collector.markets import stream_symbol
from data_collector.streaming.connection import Feed, Route
from data_collector.streaming.order_book import BookKeeper
from data_collector.venues.binance.connection import (
    MAX_STREAMS_PER_CONNECTION,
    BinanceConnection,
    stream_name,
)
from data_collector.venues.binance.normalize import make_normalizer
from data_collector.venues.stream import StreamParts

if TYPE_CHECKING:
    from data_collector.streaming.service import StreamService


def books(service: StreamService, book_args: dict[str, Any]) -> BookKeeper:
    """Diffs applied over a REST snapshot, chained by ``U``/``u`` (spot) or ``pu`` (USDⓈ-M)."""
    return BookKeeper(
        service.symbols,
        rest=service.rest,
        snapshot_limit=service.venue.snapshot_limit(service.options.book_snapshot_limit),
        chained_by_pu=service.venue.chained_by_pu,
        **book_args,
    )


def connections(service: StreamService, hooks: dict[str, Any]) -> list[Feed]:
    """Combined-stream connections of at most 1024 streams, whole symbols on each."""
    options = service.options
    per_conn = min(options.max_streams_per_connection, MAX_STREAMS_PER_CONNECTION)
    symbols_per_conn = max(1, per_conn // len(service.channels))
    out: list[Feed] = []
    for start in range(0, len(service.symbols), symbols_per_conn):
        group = service.symbols[start : start + symbols_per_conn]
        streams: list[str] = []
        routes: dict[str, Route] = {}
        for symbol in group:
            for channel in service.channels:
                name = stream_name(stream_symbol(symbol), channel)
                route = service.route(symbol, channel)
                streams.append(name)
                routes[name] = route
                if channel == "depth":
                    routes[f"{stream_symbol(symbol)}@depth"] = route
        out.append(BinanceConnection(f"ws-{len(out)}", options.ws_url, streams, routes, **hooks))
    return out


PARTS = StreamParts(books=books, connections=connections, normalizer=make_normalizer)
