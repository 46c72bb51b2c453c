"""The generic adapter: any other ccxt.pro exchange, through its ``watch_*_for_symbols`` methods
(:mod:`.connection`), and the backfill through plain ccxt with its own ``rateLimit`` pacing.

Slower and weaker than the native adapters (see the README's table): every message goes through
ccxt's parsing and caches, books are ccxt's (no sequence or checksum of ours: a gap marker is
written on every reconnect instead), and nothing is repaired over REST.
"""

from __future__ import annotations

from data_collector.venues.base import Guarantees, VenueAdapter
from data_collector.venues.stream import StreamVenue

#: What the generic adapter streams: trades, books (top N, no depth diffs) and klines.
CHANNELS = ("trade", "depth")

GENERIC = VenueAdapter(
    name="ccxt_generic",
    ids=(),
    guarantees=Guarantees(
        book="ccxt.pro's own book (its checks where the venue has them); none of ours",
        gap_markers="on every reconnect and restart (no sequence to follow)",
        trade_repair="none",
        archives="none (REST only)",
        rate_limit="ccxt's rateLimit interval between requests",
    ),
)


def stream(protocol: str) -> StreamVenue:
    """The generic streaming entry for ccxt.pro exchange ``protocol``."""
    return StreamVenue(
        protocol=protocol,
        market_type="spot",
        rest_api="",
        default_rest_url="",
        default_ws_url="",
        channels=CHANNELS,
        chained_by_pu=False,
        kind="ccxt",
        one_connection=True,
        sequenced=False,
        repairs_trades=False,
        repairs_klines=False,
    )


__all__ = ["CHANNELS", "GENERIC", "stream"]
