"""Candles and batches with known values, for the storage tests."""

from __future__ import annotations

from data_collector.markets import MINUTE_MS
from data_collector.storage.base import CandleBatch, CoverageRange


def candles(
    start_min: int, n: int, price: float = 100.0
) -> list[tuple[int, float, float, float, float, float]]:
    return [
        ((start_min + i) * MINUTE_MS, price + i, price + i + 1, price + i - 1, price + i + 0.5, 10.0 + i)
        for i in range(n)
    ]


def batch(
    instrument_id: int, start_min: int, n: int, *, price: float = 100.0, final: bool = True
) -> CandleBatch:
    """``n`` 1m candles from minute ``start_min``, covering exactly their range as data."""
    return CandleBatch(
        instrument_id,
        "1m",
        candles(start_min, n, price),
        [CoverageRange(start_min * MINUTE_MS, (start_min + n) * MINUTE_MS, "data")],
        final=final,
    )
