"""Choosing the universe: which symbols a run collects, resolved from the exchange's markets.

``symbols`` lists exact ccxt symbols (``SOL/USDT``) and shell-style patterns (``*/USDT``,
``*/USDT:USDT``, ``[BE]*/USDT``; :mod:`fnmatch`, case-sensitive after upper-casing). At the start of
each run :func:`resolve_universe` turns them into symbols:

* a pattern matches its venue's markets (``client.markets``, loaded when the client opened): the
  futures venue's for a pattern with a ``:SETTLE`` part (``*/USDT:USDT``), spot's otherwise;
* ``universe.top: N`` keeps the N trading matches of each venue with the highest 24 h quote
  volume (the venue's 24 h tickers: ``fetch_tickers``, one request of weight 80 on Binance spot,
  or 2/40 for at most 20/100 symbols; 40 on USDⓈ-M); exact names are always kept and never ranked;
* a market that is not trading (ccxt ``active`` False: Binance spot status ``BREAK``) is a
  delisted symbol. A pattern skips it unless ``universe.include_delisted: true``; an exact name
  of one is refused (:class:`InvalidSymbolError`, exit code 2) unless that is set. With it set,
  the run collects the symbol's history up to its end: pages after the last candle come back
  empty and are recorded as ``'empty'`` coverage, so the next run does not ask again.

What the real exchange tells about delistings (Binance spot, ``/api/v3/exchangeInfo``): only the
status. A symbol being wound down says ``BREAK`` (which a trading halt says too), without a
delisting time; once Binance removes it, it vanishes from exchangeInfo and ccxt no longer knows
it, so it cannot be collected this way at all. Its candles end where trading ended. Futures
(``/fapi/v1/exchangeInfo``) say ``SETTLING``/``CLOSE`` and move ``deliveryDate`` to the delisting:
:func:`delisted_at` reads it, and the run's plan stops there (no request past it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from data_collector.backfill.exchange import ExchangeClient
from data_collector.errors import InvalidSymbolError, UsageError
from data_collector.markets import is_symbol_pattern, normalize_symbol_entry
from data_collector.venues.binance.weights import MAX_NAMED_TICKERS, ticker_weight

if TYPE_CHECKING:
    from data_collector.config import Config

log = logging.getLogger(__name__)


def exact_symbols(entries: Sequence[str]) -> list[str]:
    """The entries of ``symbols`` that are not patterns."""
    return [entry for entry in entries if not is_symbol_pattern(entry)]


@dataclass(frozen=True, slots=True)
class UniverseSettings:
    """How patterns become symbols: the ``universe`` section of the config."""

    #: Keep the N trading pattern matches with the highest 24 h quote volume; None: all of them.
    top: int | None = None
    #: Collect delisted (not trading) symbols up to their end instead of skipping/refusing them.
    include_delisted: bool = False

    @classmethod
    def from_config(cls, config: Config) -> UniverseSettings:
        return cls(top=config.universe.top, include_delisted=config.universe.include_delisted)


@dataclass(slots=True)
class Universe:
    """The symbols of one run and how they were chosen (:meth:`describe` is the printed line)."""

    symbols: list[str]
    patterns: list[str] = field(default_factory=list)
    top: int | None = None
    #: Delisted markets a pattern matched and left out (``include_delisted`` is off).
    skipped_delisted: list[str] = field(default_factory=list)
    #: Delisted markets collected up to their end (``include_delisted`` is on).
    delisted: list[str] = field(default_factory=list)
    #: 24 h quote volume of each ranked symbol.
    quote_volume: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what the run collects, and which delisted symbols it skips or includes."""
        how = ""
        if self.patterns:
            how = " from " + ", ".join(self.patterns)
            if self.top is not None:
                how += f" (top {self.top} by 24h quote volume)"
        line = f"symbols{how}: {', '.join(self.symbols) or '(none)'}"
        if self.delisted:
            line += f"; delisted, collected up to their end: {', '.join(self.delisted)}"
        if self.skipped_delisted:
            line += (
                f"; skipped {len(self.skipped_delisted)} delisted: {', '.join(self.skipped_delisted)} "
                "(universe.include_delisted: true collects them)"
            )
        return line


def is_delisted(market: Mapping[str, Any]) -> bool:
    """Not trading by the exchange's word (ccxt ``active`` False; None, as for options, is unknown)."""
    return market.get("active") is False


#: Binance USDⓈ-M's ``deliveryDate`` of a perpetual still listed (2100-12-25).
NO_DELIVERY_MS = 4133404800000


def delisted_at(market: Mapping[str, Any] | None) -> int | None:
    """When a delisted market stopped trading, where the exchange says so; None otherwise.

    Binance USDⓈ-M moves a delisted perpetual's ``deliveryDate`` (ccxt keeps it in ``info`` only:
    a swap has no ``expiry``) to the delisting and says ``SETTLING``/``CLOSE``. Binance spot
    exposes no delisting time in ``exchangeInfo`` (only ``BREAK``), so a spot symbol gets None.
    """
    if market is None or not is_delisted(market) or market.get("type") != "swap":
        return None
    info = market.get("info")
    raw = info.get("deliveryDate") if isinstance(info, Mapping) else None
    try:
        delivery = int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return delivery if delivery is not None and 0 < delivery < NO_DELIVERY_MS else None


#: The opened client of a symbol's (or a pattern's) venue: spot, or futures for ``BASE/QUOTE:SETTLE``.
ClientFor = Callable[[str], Awaitable[ExchangeClient]]


async def resolve_universe(
    client_for: ClientFor, entries: Sequence[str], settings: UniverseSettings
) -> Universe:
    """The symbols ``entries`` name on their venues' exchanges, in order, without repeats.

    An entry with a ``:SETTLE`` part (``BTC/USDT:USDT``, ``*/USDT:USDT``) is looked up in the
    futures venue's markets, any other in the spot venue's. ``top`` keeps the N busiest
    pattern matches of each venue, ranked by that venue's own 24 h tickers.

    Exact symbols the exchange does not list are kept: the run reports them as failed pairs
    (or refuses the run when it lists none), as before.

    Raises:
        InvalidSymbolError: an exact delisted symbol without ``include_delisted``, or a pattern
            that matches no market.
        UsageError: ``top`` over one venue's matches of several quote currencies or market
            types, whose quote volumes cannot be compared.
    """
    exact: list[str] = []
    patterns: list[str] = []
    for raw in entries:
        entry = normalize_symbol_entry(raw)
        (patterns if is_symbol_pattern(entry) else exact).append(entry)
    universe = Universe(symbols=[], patterns=patterns, top=settings.top if patterns else None)
    for symbol in exact:
        client = await client_for(symbol)
        market = client.markets.get(symbol)
        if market is not None and is_delisted(market):
            if not settings.include_delisted:
                raise InvalidSymbolError(
                    f"symbols: {symbol} is not trading on {client.id} (status "
                    f"{_status(market)}: delisted or halted); set universe.include_delisted: true "
                    "to collect it up to its end"
                )
            universe.delisted.append(symbol)
    # Matches per venue, in pattern order: each venue's are ranked by its own tickers.
    by_venue: dict[ExchangeClient, list[str]] = {}
    for pattern in patterns:
        client = await client_for(pattern)
        hits = sorted(s for s in client.markets if fnmatchcase(s, pattern))
        if not hits:
            raise InvalidSymbolError(f"symbols: {pattern!r} matches no market of {client.id}")
        matched = by_venue.setdefault(client, [])
        matched.extend(s for s in hits if s not in matched and s not in exact)
    chosen: list[str] = []
    delisted: list[str] = []
    for client, matched in by_venue.items():
        markets = client.markets
        trading = [s for s in matched if not is_delisted(markets[s])]
        delisted += [s for s in matched if is_delisted(markets[s])]
        if settings.top is not None and trading:
            volumes = await _quote_volumes(client, trading)
            universe.quote_volume.update(volumes)
            trading = sorted(trading, key=lambda s: (-volumes[s], s))[: settings.top]
        chosen += trading
    if settings.include_delisted:
        universe.delisted.extend(delisted)
        chosen += delisted
    else:
        universe.skipped_delisted = delisted
    universe.symbols = list(dict.fromkeys([*exact, *chosen]))
    if not universe.symbols:
        raise InvalidSymbolError(
            f"symbols: {', '.join(patterns)} match only delisted markets "
            f"({', '.join(delisted)}); set universe.include_delisted: true to collect them"
        )
    log.info("%s", universe.describe())
    return universe


async def resolve_configured(
    client_for: ClientFor, config: Config, symbols: Sequence[str] | None = None
) -> Universe:
    """:func:`resolve_universe` of ``symbols`` (default: the config's ``symbols``) under its ``universe``."""
    entries = list(symbols or config.symbols)
    return await resolve_universe(client_for, entries, UniverseSettings.from_config(config))


async def _quote_volumes(client: ExchangeClient, symbols: list[str]) -> dict[str, float]:
    """24 h quote volume of each of ``symbols`` (one market type and quote currency), 0 if unknown."""
    markets = client.markets
    quotes = sorted({str(markets[s].get("quote")) for s in symbols})
    types = sorted({str(markets[s].get("type")) for s in symbols})
    if len(quotes) > 1 or len(types) > 1:
        example = "*/USDT:USDT" if client.futures else "*/USDT"
        raise UsageError(
            f"universe.top ranks by 24h quote volume, which is in each market's quote currency: the "
            f"matches span {', '.join(quotes)} ({', '.join(types)}); use patterns of one quote, e.g. '{example}'"
        )
    if client.futures:
        # USDⓈ-M's /fapi/v1/ticker/24hr takes one symbol or none: ccxt asks for all (weight 40).
        tickers: dict[str, Any] = await client.call(
            client.exchange.fetch_tickers, None, weight=client.weight("ticker/24hr")
        )
    else:
        named = symbols if len(symbols) <= MAX_NAMED_TICKERS else None
        tickers = await client.call(client.exchange.fetch_tickers, named, weight=ticker_weight(len(symbols)))
    return {s: float((tickers.get(s) or {}).get("quoteVolume") or 0.0) for s in symbols}


def _status(market: Mapping[str, Any]) -> str:
    info = market.get("info")
    return str(info.get("status", "not trading")) if isinstance(info, Mapping) else "not trading"
