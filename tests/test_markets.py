from __future__ import annotations

import calendar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_collector.errors import InvalidSymbolError, InvalidTimeframeError
from data_collector.markets import (
    TIMEFRAMES,
    candle_open_ms,
    candle_opens,
    count_candles,
    exchange_symbol,
    next_open_ms,
    normalize_symbol,
    stream_symbol,
    timeframe_code,
    validate_timeframe,
)


def test_symbol_forms() -> None:
    assert normalize_symbol(" sol/usdt ") == "SOL/USDT"
    assert exchange_symbol("SOL/USDT") == "SOLUSDT"
    assert stream_symbol("SOL/USDT") == "solusdt"


@pytest.mark.parametrize(
    "bad", ["'; DROP TABLE x; --", "a:b*", "../etc", "SOLUSDT", "SOL/USDT/X", "", "x" * 10_000, "ÄÖ/USDT", 5]
)
def test_bad_symbols_rejected(bad: object) -> None:
    with pytest.raises(InvalidSymbolError):
        normalize_symbol(bad)


def test_timeframe_codes_are_stable() -> None:
    # These codes are database keys: changing one corrupts stored data.
    assert [timeframe_code(tf) for tf in ("1s", "1m", "5m", "1h", "4h", "1d", "1w", "1M")] == [
        0,
        1,
        3,
        6,
        8,
        12,
        14,
        15,
    ]
    with pytest.raises(InvalidTimeframeError):
        validate_timeframe("7m")


def test_weekly_and_monthly_alignment() -> None:
    ts = 1_706_628_191_000  # 2024-01-30 15:23:11 UTC, a Tuesday
    assert candle_open_ms(ts, "1w") == 1_706_486_400_000  # Monday 2024-01-29
    assert candle_open_ms(ts, "1M") == 1_704_067_200_000  # 2024-01-01
    assert next_open_ms(1_704_067_200_000, "1M") == calendar.timegm((2024, 2, 1, 0, 0, 0)) * 1000


@given(
    st.integers(min_value=0, max_value=4_000_000_000_000),
    st.integers(min_value=0, max_value=90 * 86_400_000),
    st.sampled_from(TIMEFRAMES[1:]),
)
def test_count_matches_enumeration(start: int, span: int, tf: str) -> None:
    end = start + span
    opens = candle_opens(start, end, tf)
    assert count_candles(start, end, tf) == len(opens)
    assert all(candle_open_ms(t, tf) == t and start <= t < end for t in opens)


def test_timeframe_database_codes_are_pinned() -> None:
    # Stored rows are keyed by these codes: changing one would relabel stored candles.
    pinned = {"1s": 0, "1m": 1, "3m": 2, "5m": 3, "15m": 4, "30m": 5, "1h": 6, "2h": 7, "4h": 8}
    pinned |= {"6h": 9, "8h": 10, "12h": 11, "1d": 12, "3d": 13, "1w": 14, "1M": 15}
    assert {tf: timeframe_code(tf) for tf in TIMEFRAMES} == pinned
