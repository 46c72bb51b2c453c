"""What the streamer knows of a venue it speaks: :class:`StreamVenue`, one per native protocol.

Each venue folder defines its entries (``binance/venue.py``: spot and USDⓈ-M; ``okx/``: OKX v5;
``ccxt_generic/``: any other ccxt.pro exchange). The streaming service, the book keepers and the
command line read these fields instead of branching on the venue's id.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from data_collector.errors import UsageError
from data_collector.markets import exchange_symbol, is_perpetual

if TYPE_CHECKING:
    from data_collector.streaming.connection import Feed
    from data_collector.streaming.normalize import Normalizer
    from data_collector.streaming.order_book import BookKeeper
    from data_collector.streaming.trade_sources import TradeSource
    from data_collector.venues.binance.rest import BinanceRest

#: The venue's ccxt constructor config (``urls``, ``options``, ``timeout``) -> (where it asked,
#: as "the exchange at <url>", and the venue's ids of what it lists).
ListedIds = Callable[[Mapping[str, Any], "StreamVenue"], Awaitable[tuple[str, set[str]]]]


@dataclass(frozen=True, slots=True)
class StreamParts:
    """What a venue folder builds for a running streamer (``StreamVenue.parts`` names it)."""

    #: (the :class:`~data_collector.streaming.service.StreamService`, not imported here: it
    #: reaches the backfill; the keeper's shared keyword arguments) -> the book keeper of ``depth``.
    books: Callable[[Any, dict[str, Any]], BookKeeper]
    #: (the service, the connection hooks: ``submit``, ``metrics``, ``settings``, ``on_connect``,
    #: ``on_disconnect``, ``on_resume``) -> its connections, routes from ``service.route``.
    connections: Callable[[Any, dict[str, Any]], list[Feed]]
    #: (exchange, canonical symbol, channel) -> the payload normaliser of that stream.
    normalizer: Callable[[str, str, str], Normalizer]


@dataclass(frozen=True, slots=True)
class StreamVenue:
    """One venue's streaming protocol: hosts, channels, the book rule and the repairs it allows."""

    #: ``exchange.id`` that selects it.
    protocol: str
    #: ``spot`` or ``swap`` (the ``market_type`` of the instruments its candles are stored under).
    market_type: str
    #: REST path prefix (``/api/v3``, ``/fapi/v1``, ``/api/v5``).
    rest_api: str
    default_rest_url: str
    default_ws_url: str
    #: Channels besides ``kline_<tf>``.
    channels: tuple[str, ...]
    #: Depth diffs chain by ``pu`` (USDⓈ-M) rather than by ``U == previous u + 1`` (spot).
    chained_by_pu: bool
    #: The snapshot sizes ``depth`` serves, smallest first (empty: any up to 5000).
    snapshot_limits: tuple[int, ...] = ()
    #: The adapter: ``binance``, ``okx`` (native) or ``ccxt`` (generic, through ccxt.pro).
    kind: str = "binance"
    #: One connection carries spot and swaps alike (else one venue entry per market type).
    one_connection: bool = False
    #: Trade and depth payloads carry ids the shared sequence check follows (gap markers on a skip).
    sequenced: bool = True
    #: Lost aggregate trades are fetched back by id over REST (:mod:`~data_collector.streaming.trade_repair`).
    repairs_trades: bool = True
    #: The streamer's REST client -> where lost trades are fetched back by id, one source per
    #: repaired channel (``None``: nowhere, the gaps stay marked); see
    #: :mod:`data_collector.streaming.trade_sources`.
    trade_sources: Callable[[BinanceRest], tuple[TradeSource, ...]] | None = None
    #: The streamer's REST client -> what serves its klines repair (``None``: that client itself,
    #: Binance's ``klines``).
    kline_rest: Callable[[BinanceRest], Any] | None = None
    #: The channel whose trades (live and repaired) go on into the trades table with
    #: ``streaming.store_trades``, their ids the venue's contiguous trade ids (``None``: none).
    stored_trades: str | None = "aggTrade"
    #: Requests per rate-limit window of each endpoint the trade backfill job that closes the
    #: trades table's holes may send (over the backfill's own limits), so that it and the live
    #: REST repair (``trade_sources``) together stay inside the venue's limit.
    trade_job_limits: Mapping[str, int] = field(default_factory=dict)
    #: Klines missed across a reconnect are fetched back over REST.
    repairs_klines: bool = True
    #: How to ask which symbols the venue lists before streaming (``None``: not asked).
    listed_ids: ListedIds | None = None
    #: A canonical symbol -> the venue's id of it (what ``listed_ids`` returns).
    native_id: Callable[[str], str] = exchange_symbol
    #: Its :class:`StreamParts` as ``module:NAME``, imported when a streamer starts. A path, not
    #: an import: the config reads this registry, and the streaming package (which the parts
    #: import) reads the config.
    parts: str = "data_collector.venues.binance.parts:PARTS"

    def stream_parts(self) -> StreamParts:
        """The :class:`StreamParts` that ``parts`` names, imported now."""
        module, _, name = self.parts.partition(":")
        found: StreamParts = getattr(importlib.import_module(module), name)
        return found

    def snapshot_limit(self, wanted: int) -> int:
        """The smallest snapshot size the venue serves that holds ``wanted`` levels (else its largest)."""
        if not self.snapshot_limits:
            return wanted
        return next((n for n in self.snapshot_limits if n >= wanted), self.snapshot_limits[-1])

    def check_symbol(self, symbol: str) -> str:
        """``symbol`` if this venue lists markets of its kind, else ``UsageError`` saying where it streams."""
        if self.one_connection:
            return symbol
        if is_perpetual(symbol) != (self.market_type == "swap"):
            if is_perpetual(symbol):
                raise UsageError(
                    f"{symbol} is a perpetual: stream it with exchange.id 'binanceusdm' "
                    f"(Binance USDⓈ-M futures), not {self.protocol!r}"
                )
            raise UsageError(
                f"{symbol} is a spot symbol: exchange.id {self.protocol!r} streams perpetuals "
                f"only; write {symbol}:{symbol.partition('/')[2]} or use exchange.id 'binance'"
            )
        return symbol
