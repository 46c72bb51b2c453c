"""Stream payloads -> one typed event shape per channel, plus its Redis stream entry id.

The shapes and entry ids below are every venue's; each venue folder parses its own frames into
them (``venues/binance/normalize.py``, ``venues/okx/protocol.py``) with the helpers here.

Every event is a dict of plain types (floats and ints, never numeric strings) carrying
``exchange``, ``symbol`` (canonical ``SOL/USDT``, or ``BTC/USDT:USDT`` for a perpetual), ``channel``, ``event_ms`` (the exchange's
event time) and ``recv_ms`` (local receive time), both UTC milliseconds.

Entry ids are derived from the event itself and strictly increase along a stream, so a batch
that is written twice (after a timeout whose first attempt did land) is rejected by Redis
instead of duplicated:

=============  ==========================================================================
trade          ``<trade time>-<trade id>``
aggTrade       ``<trade time>-<aggregate trade id>``
depth          ``<event time>-<last update id u>`` (USDⓈ-M diffs also carry ``prev_update_id``,
               their ``pu``)
markPrice      ``<event time>-0`` (``markPrice`` and ``markPrice@1s``; USDⓈ-M only): mark and
               index price, estimated settle price, funding rate and next funding time
forceOrder     ``<trade time, or the newest before>-<sequence within that ms>`` (USDⓈ-M
               liquidations: they carry no id, so the sequence is made locally)
bookTicker     ``<event time, else receive time>-<sequence within that ms>`` (made locally:
               Binance may repeat an update id and sends no event time)
kline_<tf>     ``<open time>-<n>``: ``n = event time - open time`` while forming (at most
               ``interval - 1``), ``n = interval length`` once closed, so a closed candle has
               the same id whether it came from the stream or from the REST repair
=============  ==========================================================================

A payload that does not fit (missing or mistyped field, a boolean where a number belongs, NaN,
infinity, a non-positive price, a timestamp before 2010 or more than a day ahead, a kline open
time off its interval's grid) raises :class:`MalformedEvent`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from data_collector.echo import shown_input
from data_collector.markets import (
    TIMEFRAME_MS,
    candle_close_ms,
    candle_open_ms,
    validate_timeframe,
)

#: 2010-01-01: anything earlier is not a crypto exchange timestamp.
MIN_TS_MS = 1_262_304_000_000
#: How far ahead of the local clock an exchange timestamp may be.
MAX_AHEAD_MS = 86_400_000

Event = dict[str, Any]
#: ``(entry id, event)``
Normalized = tuple[str, Event]
Normalizer = Callable[[dict[str, Any], int], Normalized]

#: Channels the streamer understands; ``kline_<tf>`` for any timeframe.
BASE_CHANNELS = ("trade", "aggTrade", "bookTicker", "depth")
#: Channels whose events carry an ``id`` contiguous per symbol (Binance trade and aggregate-trade
#: ids): a missing id is a lost event, so their gaps are known exactly.
SEQUENCED_CHANNELS = frozenset({"trade", "aggTrade"})


class MalformedEvent(ValueError):
    """A payload that cannot be turned into a valid event."""


def validate_channel(channel: str, channels: tuple[str, ...] = BASE_CHANNELS) -> str:
    """Return ``channel`` if it is one of ``channels`` (a venue's, default spot's) or
    ``kline_<tf>``, else raise ``UsageError``."""
    from data_collector.errors import UsageError

    if channel in channels:
        return channel
    if isinstance(channel, str) and channel.startswith("kline_"):
        try:
            validate_timeframe(channel[6:])
        except UsageError as exc:
            raise UsageError(f"invalid channel {shown_input(channel)}: {exc}") from None
        return channel
    raise UsageError(
        f"unknown channel {shown_input(channel)}: use one of {', '.join(channels)} or kline_<timeframe> (kline_1m)"
    )


def _price(value: object) -> float:
    if type(value) is bool:  # bool is an int: JSON true would be a price of 1.0
        raise MalformedEvent(f"a boolean is not a price: {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int past float's range
        raise MalformedEvent("price out of range") from None
    if not (out > 0.0 and math.isfinite(out)):
        raise MalformedEvent(f"price out of range: {value!r}")
    return out


def _qty(value: object) -> float:
    if type(value) is bool:
        raise MalformedEvent(f"a boolean is not a quantity: {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except OverflowError:
        raise MalformedEvent("quantity out of range") from None
    if not (out >= 0.0 and math.isfinite(out)):
        raise MalformedEvent(f"quantity out of range: {value!r}")
    return out


def _rate(value: object) -> float:
    """A signed finite number (a funding rate may be negative)."""
    if type(value) is bool:
        raise MalformedEvent(f"a boolean is not a rate: {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (OverflowError, ValueError, TypeError):
        raise MalformedEvent(f"not a rate: {value!r}") from None
    if not math.isfinite(out):
        raise MalformedEvent(f"rate out of range: {value!r}")
    return out


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise MalformedEvent(f"not a non-negative integer: {value!r}")
    return value


def _ts(value: object, recv_ms: int) -> int:
    if type(value) is not int or not (MIN_TS_MS <= value <= recv_ms + MAX_AHEAD_MS):
        raise MalformedEvent(f"timestamp out of range: {value!r}")
    return value


def parse_levels(raw: object) -> list[list[float]]:
    if not isinstance(raw, list):
        raise MalformedEvent("levels must be a list")
    out = []
    for level in raw:
        if not isinstance(level, list) or len(level) < 2:
            raise MalformedEvent("a level must be [price, quantity]")
        out.append([_price(level[0]), _qty(level[1])])
    return out


class _LocalIds:
    """Entry ids made locally: (time, sequence within that millisecond), strictly increasing even
    when a time repeats or steps back (for payloads with no id of their own)."""

    __slots__ = ("ms", "seq")

    def __init__(self) -> None:
        self.ms = 0
        self.seq = 0

    def next(self, time_ms: int) -> str:
        if time_ms > self.ms:
            self.ms, self.seq = time_ms, 0
        else:
            self.seq += 1
        return f"{self.ms}-{self.seq}"


def kline_event(
    exchange: str,
    symbol: str,
    timeframe: str,
    *,
    open_ms: int,
    values: tuple[object, object, object, object, object, object],
    trades: int,
    closed: bool,
    event_ms: int,
    recv_ms: int,
) -> Event:
    """The kline event shape, shared by the stream and the REST gap repair.

    ``values`` are open, high, low, close, volume and quote volume (strings or numbers).
    """
    if candle_open_ms(open_ms, timeframe) != open_ms:
        raise MalformedEvent(f"kline open time {open_ms} is off the {timeframe} grid")
    o, h, lo, c = (_price(v) for v in values[:4])
    if not (lo <= min(o, c) and max(o, c) <= h):
        raise MalformedEvent("kline with low/high outside open/close")
    return {
        "exchange": exchange,
        "symbol": symbol,
        "channel": f"kline_{timeframe}",
        "event_ms": event_ms,
        "recv_ms": recv_ms,
        "timeframe": timeframe,
        "open_ms": open_ms,
        "close_ms": candle_close_ms(open_ms, timeframe),
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": _qty(values[4]),
        "quote_volume": _qty(values[5]),
        "trades": trades,
        "closed": closed,
    }


def kline_entry_id(open_ms: int, timeframe: str, event_ms: int, closed: bool) -> str:
    """Stream entry id of a kline event (see the module docstring)."""
    length = (
        candle_close_ms(open_ms, timeframe) + 1 - open_ms if timeframe == "1M" else TIMEFRAME_MS[timeframe]
    )
    if closed:
        return f"{open_ms}-{length}"
    return f"{open_ms}-{min(max(event_ms - open_ms, 0), length - 1)}"
