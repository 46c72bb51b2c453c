"""Symbols and timeframes: validation and time arithmetic shared by every part of the project.

Symbols are canonical ccxt symbols in upper case: ``BASE/QUOTE`` for spot (``SOL/USDT``) and
``BASE/QUOTE:SETTLE`` for a perpetual swap (``BTC/USDT:USDT``; :func:`normalize_market` checks that form alone). Anything else is rejected here, before it can reach SQL, a Redis key or a URL. Timeframes are ccxt strings
(``1m`` … ``1M``); each has a fixed small-integer code used as a database key, which must never
change once data has been written with it.

All times are UTC integers in milliseconds (``*_ms``).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from data_collector.echo import shown_input
from data_collector.errors import InvalidSymbolError, InvalidTimeframeError

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
#: 1970-01-01 was a Thursday; Binance's weekly candles open on Mondays (1970-01-05).
WEEK_OFFSET_MS = 4 * DAY_MS

#: ccxt timeframe -> fixed-length duration in ms (``1M`` is calendar months, handled apart).
TIMEFRAME_MS: dict[str, int] = {
    "1s": SECOND_MS,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": HOUR_MS,
    "2h": 2 * HOUR_MS,
    "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS,
    "8h": 8 * HOUR_MS,
    "12h": 12 * HOUR_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": WEEK_MS,
}

#: Every timeframe Binance spot serves, shortest first.
TIMEFRAMES: tuple[str, ...] = (*TIMEFRAME_MS, "1M")

#: Stable database codes, written out so that no reordering of the tuples above can renumber
#: stored keys. Append only: a code, once used, keeps its meaning forever (a test pins them).
TIMEFRAME_CODES: dict[str, int] = {
    "1s": 0,
    "1m": 1,
    "3m": 2,
    "5m": 3,
    "15m": 4,
    "30m": 5,
    "1h": 6,
    "2h": 7,
    "4h": 8,
    "6h": 9,
    "8h": 10,
    "12h": 11,
    "1d": 12,
    "3d": 13,
    "1w": 14,
    "1M": 15,
}
CODE_TIMEFRAMES: dict[int, str] = {code: tf for tf, code in TIMEFRAME_CODES.items()}

DEFAULT_TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")

_SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}(:[A-Z0-9]{1,20})?$")

#: Candle price types and their database offsets: a candle series is stored in ``ohlcv`` under
#: the code ``TIMEFRAME_CODES[timeframe] + PRICE_OFFSETS[price]``, so every price type has its own
#: key and its own coverage. ``last`` (traded prices) keeps the plain timeframe codes. Append only.
PRICE_OFFSETS: dict[str, int] = {"last": 0, "mark": 100, "index": 200, "premium": 300}
PRICE_TYPES: tuple[str, ...] = tuple(PRICE_OFFSETS)
#: Series key (``"1h"``, ``"mark:1h"``) -> database code, and back.
SERIES_CODES: dict[str, int] = {
    (tf if price == "last" else f"{price}:{tf}"): code + offset
    for price, offset in PRICE_OFFSETS.items()
    for tf, code in TIMEFRAME_CODES.items()
}
#: The funding rates' coverage lives in ``coverage`` under this code (their rows in ``funding``).
FUNDING_SERIES = "funding"
SERIES_CODES[FUNDING_SERIES] = 1000
#: Binance's open interest periods (``openInterestHist``); their coverage lives under
#: ``"oi:<period>"`` = 2000 + the period's timeframe code (their rows in ``open_interest``).
OPEN_INTEREST_PERIODS: tuple[str, ...] = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
SERIES_CODES.update({f"oi:{p}": 2000 + TIMEFRAME_CODES[p] for p in OPEN_INTEREST_PERIODS})
CODE_SERIES: dict[int, str] = {code: key for key, code in SERIES_CODES.items()}
_PERPETUAL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}:[A-Z0-9]{1,20}$")


def normalize_symbol(symbol: object) -> str:
    """Return the canonical ``BASE/QUOTE`` form of ``symbol`` or raise ``InvalidSymbolError``.

    Lower case is accepted and upper-cased; anything but letters, digits, one slash and (for a
    perpetual) one ``:SETTLE`` suffix is refused.
    """
    if not isinstance(symbol, str):
        raise InvalidSymbolError(f"symbol must be a string like 'SOL/USDT', got {type(symbol).__name__}")
    text = symbol.strip().upper()
    if not _SYMBOL_RE.match(text):
        raise InvalidSymbolError(
            f"invalid symbol {shown_input(symbol)}: use BASE/QUOTE (spot) or BASE/QUOTE:SETTLE (perpetual) "
            "with letters and digits, e.g. 'SOL/USDT' or 'SOL/USDT:USDT'"
        )
    return text


def normalize_symbols(symbols: Iterable[object]) -> list[str]:
    """Normalise a list of symbols, dropping repeats but keeping order."""
    return list(dict.fromkeys(normalize_symbol(s) for s in symbols))


def normalize_market(symbol: object) -> str:
    """The canonical ccxt form of a spot symbol (``SOL/USDT``) or a perpetual (``BTC/USDT:USDT``).

    Raises:
        InvalidSymbolError: anything else, named with what to write instead.
    """
    if isinstance(symbol, str) and ":" in symbol:
        text = symbol.strip().upper()
        if _PERPETUAL_RE.match(text):
            return text
        raise InvalidSymbolError(
            f"invalid perpetual {shown_input(symbol)}: use BASE/QUOTE:SETTLE with letters and digits, "
            "e.g. 'BTC/USDT:USDT'"
        )
    return normalize_symbol(symbol)


def normalize_markets(symbols: Iterable[object]) -> list[str]:
    """:func:`normalize_market` over a list, dropping repeats but keeping order."""
    return list(dict.fromkeys(normalize_market(s) for s in symbols))


def is_perpetual(symbol: str) -> bool:
    """Whether ``symbol`` (canonical) names a perpetual (``BTC/USDT:USDT``)."""
    return ":" in symbol


def is_perpetual_symbol(symbol: str) -> bool:
    """Whether ``symbol`` has the perpetual form ``BASE/QUOTE:SETTLE``."""
    return ":" in symbol


def exchange_symbol(symbol: str) -> str:
    """``SOL/USDT`` -> ``SOLUSDT`` (Binance's REST form); ``BTC/USDT:USDT`` -> ``BTCUSDT``, as
    Binance USDⓈ-M names its perpetuals."""
    return normalize_market(symbol).partition(":")[0].replace("/", "")
    """``SOL/USDT`` (or ``SOL/USDT:USDT``) -> ``SOLUSDT`` (Binance's REST form)."""
    return normalize_symbol(symbol).split(":")[0].replace("/", "")


def stream_symbol(symbol: str) -> str:
    """``SOL/USDT`` (or ``SOL/USDT:USDT``) -> ``solusdt`` (Binance's WebSocket stream form)."""
    return exchange_symbol(symbol).lower()


_PATTERN_PART = r"[A-Z0-9*?\[\]!]{1,40}"
_PATTERN_RE = re.compile(rf"^{_PATTERN_PART}/{_PATTERN_PART}(:{_PATTERN_PART})?$")
_WILDCARDS = frozenset("*?[")


def is_symbol_pattern(entry: str) -> bool:
    """Whether a ``symbols`` entry is a pattern (holds ``*``, ``?`` or ``[``)."""
    return any(c in _WILDCARDS for c in entry)


def normalize_symbol_entry(entry: object) -> str:
    """An exact symbol or perpetual (:func:`normalize_market`) or a pattern like ``*/USDT``, upper-cased.

    Raises:
        InvalidSymbolError: neither a symbol nor a ``BASE/QUOTE[:SETTLE]`` pattern.
    """
    if isinstance(entry, str) and is_symbol_pattern(entry):
        text = entry.strip().upper()
        if _PATTERN_RE.match(text):
            return text
        raise InvalidSymbolError(
            f"invalid symbol pattern {shown_input(entry)}: use BASE/QUOTE with * ? [..], e.g. '*/USDT'"
        )
    return normalize_market(entry)


def validate_timeframe(timeframe: object) -> str:
    """Return ``timeframe`` if it is a supported ccxt timeframe, else raise ``InvalidTimeframeError``."""
    if isinstance(timeframe, str) and timeframe in TIMEFRAME_CODES:
        return timeframe
    shown = (
        shown_input(timeframe) if isinstance(timeframe, str) else shown_input(repr(timeframe), quoted=False)
    )
    raise InvalidTimeframeError(f"unknown timeframe {shown}: use one of {', '.join(TIMEFRAMES)}")


def timeframe_code(timeframe: str) -> int:
    """The fixed small-integer database code of ``timeframe``, or of a series key (``"mark:1h"``)."""
    code = SERIES_CODES.get(timeframe)
    return code if code is not None else TIMEFRAME_CODES[validate_timeframe(timeframe)]


def series_key(timeframe: str, price: str = "last") -> str:
    """The key of a candle series: ``"1h"`` for traded prices, ``"mark:1h"`` for mark prices
    (and ``"oi:1h"`` for open interest, ``price="oi"``)."""
    if price == "oi":
        return f"oi:{validate_timeframe(timeframe)}"
    if price not in PRICE_OFFSETS:
        raise InvalidTimeframeError(
            f"unknown price type {shown_input(price)}: use one of {', '.join(PRICE_TYPES)}"
        )
    timeframe = validate_timeframe(timeframe)
    return timeframe if price == "last" else f"{price}:{timeframe}"


def split_series(key: str) -> tuple[str, str]:
    """``"mark:1h"`` -> ``("1h", "mark")``; ``"1h"`` -> ``("1h", "last")``."""
    price, _, timeframe = key.rpartition(":")
    return timeframe, price or "last"


def _month_index(ts_ms: int) -> int:
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return (dt.year - 1970) * 12 + dt.month - 1


def _month_start_ms(index: int) -> int:
    year, month0 = divmod(index, 12)
    return calendar.timegm((1970 + year, month0 + 1, 1, 0, 0, 0)) * SECOND_MS


def candle_open_ms(ts_ms: int, timeframe: str) -> int:
    """Open time of the candle of ``timeframe`` that contains ``ts_ms``."""
    if timeframe == "1M":
        return _month_start_ms(_month_index(ts_ms))
    step = TIMEFRAME_MS[validate_timeframe(timeframe)]
    if timeframe == "1w":
        return ts_ms - (ts_ms - WEEK_OFFSET_MS) % step
    return ts_ms - ts_ms % step


def next_open_ms(open_ms: int, timeframe: str) -> int:
    """Open time of the candle after the one opening at ``open_ms`` (which must be aligned)."""
    if timeframe == "1M":
        return _month_start_ms(_month_index(open_ms) + 1)
    return open_ms + TIMEFRAME_MS[validate_timeframe(timeframe)]


def candle_close_ms(open_ms: int, timeframe: str) -> int:
    """Binance's closeTime: the last millisecond of the candle."""
    return next_open_ms(open_ms, timeframe) - 1


def candle_opens(start_ms: int, end_ms: int, timeframe: str) -> list[int]:
    """Open times of every candle with ``start_ms <= open < end_ms``, first one aligned up."""
    first = candle_open_ms(start_ms, timeframe)
    if first < start_ms:
        first = next_open_ms(first, timeframe)
    if timeframe != "1M":
        step = TIMEFRAME_MS[timeframe]
        return list(range(first, max(first, end_ms), step))
    out: list[int] = []
    t = first
    while t < end_ms:
        out.append(t)
        t = next_open_ms(t, timeframe)
    return out


def count_candles(start_ms: int, end_ms: int, timeframe: str) -> int:
    """How many candles of ``timeframe`` open in ``[start_ms, end_ms)``."""
    if end_ms <= start_ms:
        return 0
    if timeframe == "1M":
        return len(candle_opens(start_ms, end_ms, timeframe))
    first = candle_open_ms(start_ms, timeframe)
    if first < start_ms:
        first = next_open_ms(first, timeframe)
    step = TIMEFRAME_MS[timeframe]
    return max(0, -(-(end_ms - first) // step))
