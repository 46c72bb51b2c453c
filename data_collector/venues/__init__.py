"""One folder per venue: everything venue-specific, behind one adapter each.

=================  ==========================================================================
folder             what it holds
=================  ==========================================================================
``binance/``       Binance spot and USDⓈ-M: streaming protocols, REST calls, the archives
``okx/``           OKX v5: backfill rules, history-trades paging, WebSocket protocol, books
``ccxt_generic/``  any other ccxt exchange: ccxt.pro ``watch_*_for_symbols``, ccxt's pacing
=================  ==========================================================================

The shared mechanisms ask :func:`adapter_for` (backfill) and :func:`stream_venue` (streaming)
and read the adapter's fields (:class:`~data_collector.venues.base.VenueAdapter`,
:class:`~data_collector.venues.stream.StreamVenue`) instead of branching on a venue's id;
``tests/test_layout.py`` holds that rule. The README's "Adding a venue" says how to add one.
"""

from __future__ import annotations

from data_collector.errors import UsageError
from data_collector.venues import ccxt_generic
from data_collector.venues.base import VenueAdapter
from data_collector.venues.binance import BINANCE
from data_collector.venues.ccxt_generic import GENERIC
from data_collector.venues.okx import OKX
from data_collector.venues.stream import StreamVenue

#: The native adapters, in the README's order.
ADAPTERS: tuple[VenueAdapter, ...] = (BINANCE, OKX)
#: ``exchange.id`` -> its native streaming protocol.
STREAMS: dict[str, StreamVenue] = {p: v for a in ADAPTERS for p, v in a.streams.items()}
#: ``streaming.adapter``: the native protocol where there is one, or ccxt.pro for any venue.
STREAM_ADAPTERS = ("native", "ccxt")


def adapter_for(exchange_id: str) -> VenueAdapter:
    """The native adapter serving ccxt id ``exchange_id``, else the generic one."""
    return next((a for a in ADAPTERS if a.serves(exchange_id)), GENERIC)


def stream_venue(protocol: str, adapter: str = "native") -> StreamVenue:
    """The venue spoken for ``exchange.id`` ``protocol``: the native adapter where there is one
    (unless ``adapter`` is ``ccxt``), else the generic one if ccxt.pro has the exchange;
    ``UsageError`` for any other."""
    if adapter not in STREAM_ADAPTERS:
        raise UsageError(f"streaming.adapter must be one of {', '.join(STREAM_ADAPTERS)}, not {adapter!r}")
    venue = STREAMS.get(protocol)
    if venue is not None and adapter == "native":
        return venue
    import ccxt.pro  # only the generic adapter needs it

    if protocol not in ccxt.pro.exchanges:
        raise UsageError(
            f"unknown exchange.id {protocol!r}: the streamer speaks {', '.join(repr(p) for p in STREAMS)} "
            "natively and any ccxt.pro exchange (ccxt.pro.exchanges) through the generic adapter"
        )
    return ccxt_generic.stream(protocol)


__all__ = ["ADAPTERS", "STREAMS", "StreamVenue", "VenueAdapter", "adapter_for", "stream_venue"]
