"""The adapter interface: what every venue folder gives the shared mechanisms.

The shared mechanisms (the backfill's :class:`~data_collector.backfill.exchange.ExchangeClient`,
its rate limiter and its ``PairFetch`` kinds; the streaming service, its order books and its
repairs; the command lines) stay where they are and ask the venue's :class:`VenueAdapter` (found
by ccxt exchange id with :func:`data_collector.venues.adapter_for`) instead of branching on the
venue's id. A field left at its default means "the generic ccxt behaviour": a new venue sets only
what differs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from data_collector.venues.stream import StreamVenue

#: ``(exchange, window_s) ->`` requests per window of each endpoint (per-endpoint pacing).
EndpointLimits = Callable[[Any, float], dict[str, int]]
#: A market from ccxt's ``load_markets`` -> its listing time in ms, if the venue states it.
ListingOf = Callable[[Mapping[str, Any] | None], int | None]
#: ``(page, settlement times ascending, limit) ->`` (what an answer proves, the rest still to ask).
FundingSpan = Callable[[tuple[int, int], list[int], int], tuple[tuple[int, int], tuple[int, int] | None]]


def until_params(end_ms: int) -> dict[str, Any]:
    """ccxt's own bound of a history request: ``until`` (inclusive)."""
    return {"until": end_ms - 1}


@dataclass(frozen=True, slots=True)
class Guarantees:
    """What an adapter promises (the README's table is read from these)."""

    #: Order books: how a lost or wrong update is caught.
    book: str
    #: Gap markers written where events may be lost.
    gap_markers: str
    #: Lost trades fetched back over REST.
    trade_repair: str
    #: Bulk archives as a backfill source.
    archives: str
    #: How the backfill paces its requests.
    rate_limit: str


@dataclass(frozen=True, slots=True)
class VenueAdapter:
    """One venue: the backfill's rules, the streamer's protocol(s) and its guarantees.

    Streaming details (URLs, channels, which symbols are listed, book rules, repairs) are the
    :class:`~data_collector.venues.stream.StreamVenue` entries of ``streams``, keyed by the ccxt
    id that selects each; the subscribe protocol, ping and normalisers are the venue folder's
    connection and protocol modules.
    """

    #: The folder's name (``binance``, ``okx``, ``ccxt_generic``).
    name: str
    #: ccxt ids served natively (empty: the generic adapter, for every other ccxt id).
    ids: tuple[str, ...]
    guarantees: Guarantees
    #: The most candles one page may ask (``None``: ccxt's ``features`` maximum per market).
    ohlcv_page_limit: int | None = None
    #: Why ``ohlcv_page_limit`` is a hard cap (the end of the config error naming it).
    ohlcv_page_reason: str = ""
    #: Data types the backfill collects from it (``None``: every one the market has).
    data_types: tuple[str, ...] | None = None
    #: Paced by the ``X-MBX-USED-WEIGHT`` header and the request weights (Binance).
    weight_headers: bool = False
    #: Paced per endpoint in fixed windows, request by request (OKX): the limits per endpoint.
    endpoint_limits: EndpointLimits | None = None
    #: The listing time from the markets already loaded (no request), if the venue gives it.
    listing_ms: ListingOf | None = None
    #: One ccxt client and label for spot and perpetuals (one API for both).
    one_client: bool = False
    #: Kline arrays and aggTrades are ccxt's raw rows (ccxt's per-field parsing skipped).
    raw_rows: bool = False
    #: The extra ``params`` bounding a funding history request at ``end_ms`` (exclusive).
    funding_params: Callable[[int], dict[str, Any]] = until_params
    #: Settlements per funding page (``None``: the backfill's default).
    funding_page_limit: int | None = None
    #: Newest-first funding pages: what a full answer proves (``None``: oldest first).
    funding_span: FundingSpan | None = None
    #: The trades ``PairFetch`` class as ``module:Class``, imported when first needed (``None``:
    #: the shared one). A path, not an import: the config reads adapters, and must not pull the
    #: backfill (and through it ``utils``) in; see ``tests/test_layout.py``.
    trade_pair: str | None = None
    #: ccxt ids whose every market is a future (klines weigh by their limit there).
    futures_ids: tuple[str, ...] = ()
    #: Its bulk archive files as a backfill source, the source class as ``module:Class`` with a
    #: ``from_config(config)`` classmethod (``None``: REST only); imported when a backfill
    #: starts, as ``trade_pair`` is (Binance's data.binance.vision).
    archives: str | None = None
    #: The streamer's native protocols, by the ccxt id that selects each.
    streams: Mapping[str, StreamVenue] = field(default_factory=dict)

    def trade_pair_class(self) -> type | None:
        """The class ``trade_pair`` names, imported now (``None``: the shared one)."""
        found: type | None = _imported(self.trade_pair)
        return found

    def archive_source(self) -> Any:
        """The archive source class ``archives`` names, imported now (``None``: no archives)."""
        return _imported(self.archives)

    def serves(self, exchange_id: str) -> bool:
        return exchange_id in self.ids

    def lacking(self, data_types: list[str]) -> list[str]:
        """The data types of ``data_types`` this venue does not give."""
        if self.data_types is None:
            return []
        return [t for t in data_types if t not in self.data_types]


def _imported(path: str | None) -> Any:
    """The object ``module:name`` names, imported now (``None`` for ``None``)."""
    if path is None:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
