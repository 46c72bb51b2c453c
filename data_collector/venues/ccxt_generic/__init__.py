"""The generic adapter: any other ccxt.pro exchange, through its ``watch_*_for_symbols`` methods
(:mod:`.connection`), and the backfill through plain ccxt with its own ``rateLimit`` pacing.

Slower and weaker than the native adapters (see the README's table): every message goes through
ccxt's parsing and caches, books are ccxt's (no sequence or checksum of ours: a gap marker is
written on every reconnect instead), and nothing is repaired over REST.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from data_collector.errors import TransientError
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


async def listed_ids(config: Mapping[str, Any], venue: StreamVenue) -> tuple[str, set[str]]:
    """ccxt.pro's ``load_markets``: the canonical symbols the exchange lists."""
    import ccxt.pro  # only the generic adapter loads ccxt

    exchange = getattr(ccxt.pro, venue.protocol)(copy.deepcopy(dict(config)))
    try:
        markets = await exchange.load_markets()
    except ccxt.pro.BaseError as exc:  # network, exchange or malformed answer: not the user's input
        raise TransientError(f"ccxt.pro {venue.protocol} load_markets: {exc}") from None
    finally:
        await exchange.close()
    return f"ccxt.pro's {venue.protocol}", set(markets)


def _same(symbol: str) -> str:
    return symbol


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
        stored_trades=None,
        repairs_klines=False,
        listed_ids=listed_ids,
        native_id=_same,
        parts="data_collector.venues.ccxt_generic.parts:PARTS",
    )


__all__ = ["CHANNELS", "GENERIC", "stream"]
