"""The fast paths of the Parquet tier's reads: the seam merge, the frame built from pieces, and
rows read by binary COPY without ORDER BY coming back in key order, bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pandas as pd

from data_collector.markets import timeframe_code
from data_collector.storage import CandleBatch, CandleStore, CoverageRange, TradeBatch, TradeCoverage
from data_collector.storage.archive import columns_frame, trade_columns_frame
from data_collector.storage.archive_series import FUNDING_SPEC, OPEN_INTEREST_SPEC, fields_frame
from data_collector.storage.funding import funding_frame
from data_collector.storage.open_interest import open_interest_frame
from data_collector.storage.parquet_files import CANDLE_FIELDS, OHLCV_SPEC, TRADES_SPEC, Columns, DataSpec
from data_collector.storage.postgres_archive import PostgresArchiveSide, parse_binary_copy
from data_collector.storage.store import candles_frame, trades_frame
from tests.storage.test_archive import store  # noqa: F401  (the fixture)
from tests.support.archive import END_MS, START_MS, SYMBOL, TIMEFRAME, VENUE, candles, trades

HOUR_MS = 3_600_000


def _columns(keys: np.ndarray, tag: float) -> Columns:
    keys = np.unique(keys).astype(np.int64)
    values = {name: tag + np.arange(len(keys)) / 100 + i for i, name in enumerate(CANDLE_FIELDS)}
    return Columns(OHLCV_SPEC, {"ts": keys, **values})


def _naive_union(old: Columns, new: Columns) -> dict[int, tuple[float, ...]]:
    rows = {int(k): tuple(float(old.arrays[n][i]) for n in CANDLE_FIELDS) for i, k in enumerate(old.ts)}
    rows.update({int(k): tuple(float(new.arrays[n][i]) for n in CANDLE_FIELDS) for i, k in enumerate(new.ts)})
    return dict(sorted(rows.items()))


def test_union_equals_a_dict_merge_where_the_newer_side_wins() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        old = _columns(rng.integers(0, 60, rng.integers(0, 40)), 1.0)
        start = int(rng.integers(0, 70))
        new = _columns(rng.integers(start, start + 20, rng.integers(0, 15)), 2.0)
        got = old.union(new)
        want = _naive_union(old, new)
        assert got.ts.tolist() == list(want)
        assert [tuple(float(got.arrays[n][i]) for n in CANDLE_FIELDS) for i in range(len(got))] == list(
            want.values()
        )


def test_a_frame_from_pieces_equals_the_stores_frame() -> None:
    rows = candles(START_MS, START_MS + 100 * HOUR_MS)
    whole = Columns(
        OHLCV_SPEC, {n: np.array([r[i] for r in rows], d) for i, (n, d) in enumerate(OHLCV_SPEC.fields)}
    )
    pieces = [whole.slice(0, 30), Columns.empty(OHLCV_SPEC), whole.slice(30, 100)]
    pd.testing.assert_frame_equal(columns_frame(pieces), candles_frame(rows))
    pd.testing.assert_frame_equal(columns_frame(whole), candles_frame(rows))
    pd.testing.assert_frame_equal(columns_frame(Columns.empty(OHLCV_SPEC)), candles_frame([]))


def _whole(spec: DataSpec, rows: list[tuple[Any, ...]]) -> Columns:
    return Columns(spec, {n: np.array([r[i] for r in rows], d) for i, (n, d) in enumerate(spec.fields)})


def test_trade_and_point_frames_from_the_seam_pieces_equal_the_stores_frames() -> None:
    """The loaders of trades, funding and open interest build their frames from the same seam
    pieces as candles (one copy): equal to the stores' frames, with a row at the seam once."""
    rows = trades(0, 100)
    older, newer = _whole(TRADES_SPEC, rows[:60]), _whole(TRADES_SPEC, rows[50:])
    pieces = older.union_pieces(newer)
    assert len(pieces) > 1
    pd.testing.assert_frame_equal(trade_columns_frame(pieces), trades_frame(rows))
    rates = [(START_MS + i * 8 * HOUR_MS, 1e-4 * i, 100.0 + i) for i in range(40)]
    points = [(START_MS + i * HOUR_MS, 10.0 + i, 1000.0 * i) for i in range(40)]
    for spec, got, want in (
        (FUNDING_SPEC, rates, funding_frame(rates)),
        (OPEN_INTEREST_SPEC, points, open_interest_frame(points)),
    ):
        pieces = _whole(spec, got[:25]).union_pieces(_whole(spec, got[20:]))
        pd.testing.assert_frame_equal(fields_frame(pieces), want)
        assert not fields_frame(pieces).index.has_duplicates


async def test_rows_stored_out_of_order_are_read_back_in_key_order(store: CandleStore) -> None:  # noqa: F811
    instrument = await store.ensure_instrument(VENUE, SYMBOL, base="SOL", quote="USDT")
    # Newest first, one write per week: the heap holds the rows in reverse time order.
    weeks = list(range(START_MS, END_MS, 7 * 24 * HOUR_MS))
    for start in reversed(weeks):
        end = min(start + 7 * 24 * HOUR_MS, END_MS)
        await store.write(
            [CandleBatch(instrument.id, TIMEFRAME, candles(start, end), [CoverageRange(start, end, "data")])]
        )
        first, last = (start - START_MS) // 600_000, (end - START_MS) // 600_000
        await store.write_trades(
            [TradeBatch(instrument.id, trades(first, last), [TradeCoverage(first, last, start, end)])]
        )
    side = PostgresArchiveSide(store)
    got = await side.read_range(OHLCV_SPEC, (instrument.id, timeframe_code(TIMEFRAME)), START_MS, END_MS)
    assert got.ts.tolist() == [c[0] for c in candles(START_MS, END_MS)]
    assert got.arrays["close"].tolist() == [c[4] for c in candles(START_MS, END_MS)]
    got_trades = await side.read_range(TRADES_SPEC, (instrument.id,), START_MS, END_MS)
    want = trades(0, (END_MS - START_MS) // 600_000)
    assert got_trades.key.tolist() == [t[0] for t in want]
    assert got_trades.arrays["price"].tolist() == [t[2] for t in want]


# Values a float column can hold that a careless decode changes: NaN, both zeros, both
# infinities, the smallest subnormal, the largest finite values, and one that is not a tick.
EDGE_FLOATS = [
    float("nan"),
    -0.0,
    0.0,
    float("inf"),
    float("-inf"),
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1,
]
# The int64 extremes (the range read is [min, max): the largest key it can hold is max - 1).
EDGE_TS = [-(2**63), -1, 0, 1, START_MS, END_MS - 1, 2**63 - 2]


def _bits(values: np.ndarray) -> list[int]:
    """A float column's exact bits: NaN equals itself and -0.0 differs from 0.0."""
    return np.ascontiguousarray(values, dtype="<f8").view("<u8").tolist()


def _binary_copy(rows: list[tuple[object, ...]], types: str) -> bytes:
    """What PostgreSQL's ``COPY ... TO STDOUT (FORMAT binary)`` sends for ``rows``, field types
    as :mod:`struct` codes (``q`` bigint, ``d`` float8, ``?`` boolean), built field by field."""
    out = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    for row in rows:
        out.append(struct.pack(">h", len(row)))
        for code, value in zip(types, row, strict=True):
            field = struct.pack(f">{code}", value)
            out.append(struct.pack(">i", len(field)) + field)
    out.append(struct.pack(">h", -1))
    return b"".join(out)


def test_binary_copy_is_parsed_bit_exact_and_sorted_by_key() -> None:
    floats = iter(EDGE_FLOATS * 8)
    candle_rows = [(ts, *(next(floats) for _ in CANDLE_FIELDS)) for ts in reversed(EDGE_TS)]
    got = parse_binary_copy(OHLCV_SPEC, _binary_copy(candle_rows, "qddddd"))
    want = sorted(candle_rows)
    assert got.ts.tolist() == [r[0] for r in want]
    for i, name in enumerate(CANDLE_FIELDS, start=1):
        assert _bits(got.arrays[name]) == _bits(np.array([r[i] for r in want]))
    trade_rows = [
        (2**63 - 1, 2**63 - 1, float("nan"), -0.0, -(2**63), 2**63 - 1, True),
        (-(2**63), -(2**63), 1e308, 5e-324, 0, -1, False),
        (7, 0, 0.1, float("inf"), 3, 5, True),
    ]
    got = parse_binary_copy(TRADES_SPEC, _binary_copy(trade_rows, "qqddqq?"))
    want = sorted(trade_rows)
    for i, (name, dtype) in enumerate(TRADES_SPEC.fields):
        column = [r[i] for r in want]
        if dtype == "<f8":
            assert _bits(got.arrays[name]) == _bits(np.array(column)), name
        else:
            assert got.arrays[name].dtype == np.dtype(dtype) and got.arrays[name].tolist() == column, name
    assert len(parse_binary_copy(OHLCV_SPEC, _binary_copy([], ""))) == 0


async def test_edge_values_come_back_from_postgres_bit_exact(store: CandleStore) -> None:  # noqa: F811
    """The real server's binary COPY of candles holding every edge value (inserted out of key
    order; the extreme times land in the default partition)."""
    instrument = await store.ensure_instrument(VENUE, SYMBOL, base="SOL", quote="USDT")
    code = timeframe_code(TIMEFRAME)
    floats = iter(EDGE_FLOATS * 8)
    rows = [(ts, *(next(floats) for _ in CANDLE_FIELDS)) for ts in EDGE_TS[::2] + EDGE_TS[1::2]]
    insert = "INSERT INTO {s}.ohlcv (instrument_id, timeframe, ts, open, high, low, close, volume) "
    async with store._connect() as (_, conn):  # store.write refuses NaN and infinite prices
        await conn.executemany(
            store._sql(insert + "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            [(instrument.id, code, *row) for row in rows],
        )
    got = await PostgresArchiveSide(store).read_range(OHLCV_SPEC, (instrument.id, code), -(2**63), 2**63 - 1)
    want = sorted(rows)
    assert got.ts.tolist() == [r[0] for r in want]
    for i, name in enumerate(CANDLE_FIELDS, start=1):
        assert _bits(got.arrays[name]) == _bits(np.array([r[i] for r in want])), name
