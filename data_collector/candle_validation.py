"""Checks every page of candles before it may be stored: a malformed page is retried, never written."""

from __future__ import annotations

import math
from collections.abc import Sequence

from data_collector.errors import TransientError
from data_collector.markets import candle_open_ms
from data_collector.storage.base import Candle


class MalformedPageError(TransientError):
    """The exchange answered with data that cannot be right; fetching the page again may fix it."""


def validate_page(rows: object, timeframe: str, start_ms: int, end_ms: int) -> list[Candle]:
    """Return the page as clean candles, or raise :class:`MalformedPageError`.

    A page is valid when it is a list of ``[ts, open, high, low, close, volume]`` rows whose
    timestamps are integers aligned to ``timeframe``, strictly increasing and inside
    ``[start_ms, end_ms)``, whose prices are finite and positive with ``low <= open, close <= high``,
    and whose volume is finite and not negative.
    """
    if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
        raise MalformedPageError(f"expected a list of candles, got {type(rows).__name__}")
    out: list[Candle] = []
    previous = start_ms - 1
    for index, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or len(row) < 6:
            raise MalformedPageError(f"candle {index} is not a [ts, o, h, l, c, v] row: {row!r:.80}")
        ts = row[0]
        if isinstance(ts, float) and ts.is_integer():
            ts = int(ts)
        if not isinstance(ts, int) or isinstance(ts, bool):
            raise MalformedPageError(f"candle {index} has a non-integer timestamp {ts!r:.40}")
        if ts <= previous:
            raise MalformedPageError(f"candle {index} at {ts} is out of order or outside the page")
        if ts >= end_ms:
            raise MalformedPageError(f"candle {index} at {ts} is after the page end {end_ms}")
        if candle_open_ms(ts, timeframe) != ts:
            raise MalformedPageError(f"candle {index} at {ts} is not aligned to {timeframe}")
        try:
            o, h, low, c, v = (float(x) for x in row[1:6])
        except (TypeError, ValueError):
            raise MalformedPageError(f"candle {index} has a non-numeric value: {row!r:.80}") from None
        if not all(math.isfinite(x) for x in (o, h, low, c, v)):
            raise MalformedPageError(f"candle {index} at {ts} has a non-finite value")
        if min(o, h, low, c) <= 0 or v < 0:
            raise MalformedPageError(f"candle {index} at {ts} has a non-positive price or negative volume")
        if not (low <= o <= h and low <= c <= h):
            raise MalformedPageError(f"candle {index} at {ts} breaks low <= open, close <= high")
        out.append((ts, o, h, low, c, v))
        previous = ts
    return out
