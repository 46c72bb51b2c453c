"""An archive file's rows as columns: the checks every file passes before a row is queued."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from data_collector.markets import DAY_MS, MINUTE_MS
from data_collector.simulator.archives import zip_bytes
from data_collector.storage.candle_columns import CandleColumns
from data_collector.venues.binance.archive_fetch import (
    ArchiveFailure,
    parse_kline_columns,
    parse_klines,
    read_kline_zip,
)
from data_collector.venues.binance.archive_plan import ArchiveFile
from data_collector.venues.binance.archive_run import _check

DAY = 1_735_689_600_000  # 2025-01-01
FILE = ArchiveFile("daily", "2025-01-01", DAY, DAY + DAY_MS)


def _cols(ts: list[int]) -> CandleColumns:
    return CandleColumns.from_candles([(t, 1.0, 2.0, 0.5, 1.5, 3.0) for t in ts])


def test_a_whole_sorted_aligned_file_passes() -> None:
    _check(_cols([DAY + i * MINUTE_MS for i in range(1440)]), FILE, "1m")
    _check(_cols([DAY, DAY + 5 * MINUTE_MS]), FILE, "1m")  # holes are the exchange's gaps
    _check(_cols([]), FILE, "1m")


@pytest.mark.parametrize(
    ("ts", "bad"),
    [
        ([DAY, DAY + MINUTE_MS + 1], DAY + MINUTE_MS + 1),  # off the grid
        ([DAY, DAY + MINUTE_MS, DAY + MINUTE_MS], DAY + MINUTE_MS),  # repeated
        ([DAY, DAY + 2 * MINUTE_MS, DAY + MINUTE_MS], DAY + MINUTE_MS),  # out of order
        ([DAY - MINUTE_MS, DAY], DAY - MINUTE_MS),  # before the file
        ([DAY, DAY + DAY_MS], DAY + DAY_MS),  # after it
    ],
)
def test_a_row_out_of_place_fails_the_file_naming_it(ts: list[int], bad: int) -> None:
    with pytest.raises(ArchiveFailure, match=f"row at {bad} "):
        _check(_cols(ts), FILE, "1m")


def test_columns_hold_the_same_values_as_the_tuples() -> None:
    csv = (
        b"1735689540000,93576.00000000,93610.93000000,93537.50000000,93610.93000000,8.2192,1735689599999,0,0,0,0,0\n"
        b"1735689600000000,93610.93000000,93652.00000000,93606.02000000,93650.01000000,11.10,1735689659999999,0,0,0,0,0\n"
    )
    cols = parse_kline_columns(csv)
    assert cols.ts.dtype == np.int64 and list(cols.ts) == [1735689540000, 1735689600000]
    assert list(cols) == parse_klines(csv)
    assert cols[1] == (1735689600000, 93610.93, 93652.0, 93606.02, 93650.01, 11.1)


def test_a_zip_is_read_only_when_its_checksum_and_crc_hold() -> None:
    rows = b"".join(
        b"%d,1.5,2.5,0.5,2.0,10.0,%d,0,0,0,0,0\n" % (DAY + i * MINUTE_MS, DAY + i * MINUTE_MS + 59_999)
        for i in range(1440)
    )
    good = zip_bytes("X-1m-2025-01-01.csv", rows)
    sha = hashlib.sha256(good).hexdigest()
    cols = read_kline_zip(good, sha)
    assert len(cols) == 1440 and int(cols.ts[-1]) == DAY + 1439 * MINUTE_MS
    assert len(read_kline_zip(good, None)) == 1440  # archive.verify: false
    with pytest.raises(ArchiveFailure, match="checksum mismatch"):
        read_kline_zip(good, "0" * 64)
    mid = len(good) // 2
    spoiled = good[:mid] + bytes(b ^ 0xFF for b in good[mid : mid + 32]) + good[mid + 32 :]
    with pytest.raises(ArchiveFailure, match="corrupt zip"):
        read_kline_zip(spoiled, None)  # not verified: the zip's own CRC still catches it


def test_a_trade_batch_proves_what_the_rest_page_rule_gives() -> None:
    """Coverage read off the columns equals ``trade_page_coverage`` of the same rows as a page."""
    from data_collector.backfill.trades_plan import TradeSpan, trade_page_coverage
    from data_collector.venues.binance.archive_trades import TradeColumns, batch_coverage

    n = 25
    ids = np.arange(500, 500 + n, dtype=np.int64)
    ts = DAY + np.repeat(np.arange(0, n * 1000, 2000, dtype=np.int64), 2)[:n]  # repeated times
    ones = np.ones(n)
    got = TradeColumns(ids, ts, ones, ones, ids, ids, np.zeros(n, dtype=bool))
    day, span_ids = TradeSpan(FILE.start_ms, FILE.end_ms), (500, 500 + n)
    for size in (1, 2, 7, n):
        for lo in range(0, n, size):
            hi = min(lo + size, n)
            rows = got.rows(lo, hi)
            want = trade_page_coverage(day, span_ids, (rows[0][0], rows[-1][0] + 1), rows, len(rows) + 1)
            assert batch_coverage(FILE, got, lo, hi) == want.coverage, (size, lo)


def test_the_system_pool_fallback_leaves_a_pool_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """``data_collector/__init__.py`` says a value the user set in ``ARROW_DEFAULT_MEMORY_POOL``
    wins; the reading thread's fallback must not override it, and switches when none was chosen."""
    import pyarrow as pa

    from data_collector.venues.binance.archive_fetch import _use_system_pool

    before = pa.default_memory_pool()
    other = pa.mimalloc_memory_pool() if before.backend_name != "mimalloc" else pa.jemalloc_memory_pool()
    try:
        pa.set_memory_pool(other)
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", other.backend_name)
        _use_system_pool()
        assert pa.default_memory_pool().backend_name == other.backend_name
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
        _use_system_pool()
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(before)
