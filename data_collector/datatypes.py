"""The data types a run collects (``data_types`` in the config), and which markets have each.

* ``ohlcv``: candles of every configured timeframe (the default, and what a run did before).
* ``trades``: aggregate trades, paged by id (spot and perpetual).
* ``mark_ohlcv``, ``index_ohlcv``, ``premium_ohlcv``: perpetual futures only; candles of the
  mark price, the index price and the premium index over every configured timeframe, stored in
  ``ohlcv`` under a price-typed key (``"mark:1h"``, see :func:`data_collector.markets.series_key`).
* ``funding_rates``: perpetual futures only; every settlement (table ``funding``).
* ``open_interest``: perpetual futures only; Binance's open interest history of every
  configured timeframe that is one of its periods (``5m`` … ``1d``, table ``open_interest``).
  The exchange serves only the last 30 days: a run asked for more is refused with one line.

A data type that a market does not have (funding for a spot symbol) fails that pair with one line
and the other pairs go on; a name that is no data type at all is a configuration error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from data_collector.echo import shown_input
from data_collector.errors import PermanentError, UsageError
from data_collector.markets import series_key

OHLCV: Final = "ohlcv"
TRADES: Final = "trades"
FUNDING_RATES: Final = "funding_rates"
OPEN_INTEREST: Final = "open_interest"
MARK_OHLCV: Final = "mark_ohlcv"
INDEX_OHLCV: Final = "index_ohlcv"
PREMIUM_OHLCV: Final = "premium_ohlcv"

#: Every data type, in the order a report lists them.
DATA_TYPES: Final = (OHLCV, TRADES, FUNDING_RATES, OPEN_INTEREST, MARK_OHLCV, INDEX_OHLCV, PREMIUM_OHLCV)
#: Types that only perpetual futures have.
PERPETUAL_ONLY: Final = frozenset({FUNDING_RATES, OPEN_INTEREST, MARK_OHLCV, INDEX_OHLCV, PREMIUM_OHLCV})
#: Types the collector fetches today; the others are reserved names.
COLLECTED: Final = frozenset(DATA_TYPES)
#: Candle data types and their price type (:data:`data_collector.markets.PRICE_OFFSETS`).
CANDLE_PRICES: Final = {OHLCV: "last", MARK_OHLCV: "mark", INDEX_OHLCV: "index", PREMIUM_OHLCV: "premium"}
DEFAULT_DATA_TYPES: Final = (OHLCV,)


def validate_data_type(name: object) -> str:
    """``name`` if it is a data type, else a :class:`UsageError` listing the valid ones."""
    if isinstance(name, str) and name in DATA_TYPES:
        return name
    shown = shown_input(name) if isinstance(name, str) else shown_input(repr(name), quoted=False)
    raise UsageError(f"unknown data type {shown}: use one of {', '.join(DATA_TYPES)}")


def validate_data_types(names: Iterable[object]) -> list[str]:
    """The data types of ``names``, validated, repeats dropped, order kept."""
    return list(dict.fromkeys(validate_data_type(n) for n in names))


def pair_keys(timeframes: Sequence[str], data_types: Sequence[str]) -> list[str]:
    """The report's pair keys of one symbol: a series key per candle type (and open interest)
    and timeframe (``"1h"``, ``"mark:1h"``, ``"oi:1h"``), the type's name for the others."""
    keys: list[str] = []
    for data_type in data_types:
        price = "oi" if data_type == OPEN_INTEREST else CANDLE_PRICES.get(data_type)
        if price is None:
            keys.append(data_type)
        else:
            keys.extend(series_key(tf, price) for tf in timeframes)
    return keys


def is_perpetual(symbol: str, market: Mapping[str, Any] | None = None) -> bool:
    """Whether ``symbol`` is a perpetual swap: ccxt's market says so, or its form is ``BASE/QUOTE:SETTLE``."""
    if market is not None and market.get("swap") is not None:
        return bool(market.get("swap"))
    return ":" in symbol


def check_market_has(data_type: str, symbol: str, market: Mapping[str, Any] | None = None) -> None:
    """Refuse a data type the market does not have, or one not collected yet, with one line.

    Raises:
        PermanentError: ``data_type`` is perpetual-only and ``symbol`` is spot, or the type is
            reserved but not collected yet. The pair fails; the run goes on.
    """
    if data_type in PERPETUAL_ONLY and not is_perpetual(symbol, market):
        raise PermanentError(
            f"{data_type} exists only for perpetual futures and {symbol} is a spot symbol; "
            f"ask for it on the perpetual (e.g. {symbol}:{symbol.split('/')[-1]}) or drop it from data_types"
        )
    if data_type not in COLLECTED:
        raise PermanentError(f"{data_type} is not collected yet by this version; drop it from data_types")
