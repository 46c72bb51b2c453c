"""Pure parts of the archive source: which files a range needs, and how a CSV is read."""

from __future__ import annotations

import io
import zipfile

import pytest

from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.venues.binance.archive_fetch import ArchiveFailure, parse_klines, unzip_one
from data_collector.venues.binance.archive_plan import split_for_archives

NOV_29 = 1_732_838_400_000  # 2024-11-29
DEC_1 = 1_733_011_200_000
JAN_1 = 1_735_689_600_000
LATER = JAN_1 + 400 * DAY_MS


def test_whole_months_monthly_whole_days_daily_the_rest_rest() -> None:
    files, rest = split_for_archives(
        [(NOV_29 + 12 * HOUR_MS, JAN_1 + DAY_MS + 6 * HOUR_MS)], LATER, daily_lag_ms=0, monthly_lag_ms=0
    )
    assert [(f.period, f.date) for f in files] == [
        ("daily", "2024-11-30"),
        ("monthly", "2024-12"),
        ("daily", "2025-01-01"),
    ]
    assert rest == [(NOV_29 + 12 * HOUR_MS, NOV_29 + DAY_MS), (JAN_1 + DAY_MS, JAN_1 + DAY_MS + 6 * HOUR_MS)]


def test_lag_keeps_unpublished_files_with_rest() -> None:
    now = JAN_1 + 2 * DAY_MS  # December ended two days ago: monthly not out yet, daily ones are
    files, rest = split_for_archives(
        [(DEC_1, JAN_1 + DAY_MS)], now, daily_lag_ms=DAY_MS, monthly_lag_ms=3 * DAY_MS
    )
    assert [f.period for f in files] == ["daily"] * 31 + ["daily"]
    assert rest == []
    files, rest = split_for_archives([(DEC_1, now)], now, daily_lag_ms=DAY_MS, monthly_lag_ms=3 * DAY_MS)
    assert files[-1].date == "2025-01-01" and rest == [(JAN_1 + DAY_MS, now)]


SPOT_ROWS = (
    b"1735689540000,1.0,2.0,0.5,1.5,10.0,1735689599999,1,1,1,1,0\n"
    b"1735689600000000,1.5,2.5,1.0,2.0,11.0,1735689659999999,1,1,1,1,0\n"
)


def test_header_row_and_microseconds_are_found_by_the_data() -> None:
    want = [(1735689540000, 1.0, 2.0, 0.5, 1.5, 10.0), (1735689600000, 1.5, 2.5, 1.0, 2.0, 11.0)]
    assert parse_klines(SPOT_ROWS) == want
    header = b"open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
    assert parse_klines(header + SPOT_ROWS) == want
    assert parse_klines(header) == [] and parse_klines(b"") == []
    with pytest.raises(ArchiveFailure):
        parse_klines(b"1735689540000,1.0,x,0.5\n")


def test_a_zip_that_does_not_open_is_a_failure() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.csv", SPOT_ROWS * 50)
    good = out.getvalue()
    assert unzip_one(good) == SPOT_ROWS * 50
    with pytest.raises(ArchiveFailure, match="corrupt zip"):
        unzip_one(good[:40] + bytes(b ^ 0xFF for b in good[40:80]) + good[80:])
