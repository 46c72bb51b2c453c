"""The cache's value format: exact round trips, header byte, compression (pure logic)."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.frames import frame_with_everything
from utils import serialization
from utils.serialization import CorruptValueError, SerializationError, decode, encode

SCALARS: list[Any] = [
    {"data": "value", "nested": {"list": [1, 2.5, None, True, False, "x"]}},
    b"\x00\xffbytes",
    2**63 - 1,
    -(2**63),
    2**80,
    -(2**90),
    1.5e-300,
    Decimal("1.2300"),
    Decimal("-0.00000001"),
    Decimal("1E+30"),
    dt.datetime(2024, 1, 1, 12, 30, 15, 123456, tzinfo=dt.UTC),
    dt.datetime(2024, 10, 27, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"), fold=1),
    dt.datetime(2024, 1, 1, 5, 45, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
    dt.datetime(2024, 1, 1, 5, 45, tzinfo=dt.timezone(dt.timedelta(hours=-3), "BRT")),
    dt.datetime(2024, 1, 1, 5, 45),
    dt.date(2024, 2, 29),
    dt.time(23, 59, 59, 999999),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    {1: "int key", "s": "str key"},
    [],
    {},
    "",
]


@pytest.mark.parametrize("value", SCALARS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("compression", ["none", "zlib", "lz4"])
def test_values_round_trip_exactly(value: Any, compression: Any) -> None:
    data, _ = encode(value, compression, threshold=0)
    back = decode(data)
    assert back == value
    assert type(back) is type(value)
    if isinstance(value, (dt.datetime, dt.time)):
        assert back.tzinfo == value.tzinfo
        assert back.fold == value.fold
    if isinstance(value, Decimal):
        assert str(back) == str(value)


def test_nan_float_survives() -> None:
    assert math.isnan(decode(encode(float("nan"))[0]))


@pytest.mark.parametrize("compression", ["none", "zlib", "lz4"])
def test_dataframe_with_datetimeindex_mixed_dtypes_and_nans_round_trips(compression: Any) -> None:
    frame = frame_with_everything()
    back = decode(encode(frame, compression, threshold=0)[0])
    pd.testing.assert_frame_equal(back, frame, check_exact=True, check_freq=True)
    assert back.index.tz == frame.index.tz
    assert list(back.dtypes.astype(str)) == list(frame.dtypes.astype(str))


def test_series_index_and_multiindex_round_trip() -> None:
    series = pd.Series([1.5, np.nan, 3.0], index=pd.Index(["a", "b", "c"], name="k"), name="close")
    pd.testing.assert_series_equal(decode(encode(series)[0]), series, check_exact=True)
    frame = pd.DataFrame(
        np.arange(6.0).reshape(3, 2),
        columns=pd.MultiIndex.from_tuples([("BTC", "open"), ("BTC", "close")]),
        index=pd.MultiIndex.from_tuples([("x", 1), ("y", 2), ("z", 3)], names=["sym", "n"]),
    )
    pd.testing.assert_frame_equal(decode(encode(frame)[0]), frame, check_exact=True)
    empty = pd.DataFrame({"a": pd.Series([], dtype="float32")})
    pd.testing.assert_frame_equal(decode(encode(empty)[0]), empty)
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    back = decode(encode(array)[0])
    assert back.dtype == array.dtype and (back == array).all()


def test_header_byte_names_version_and_compression() -> None:
    small, _ = encode({"a": 1}, "lz4", threshold=1024)
    assert small[0] == (serialization.FORMAT_VERSION << 4) | 0
    candles = [
        [1706630400000 + i * 60_000, 43519.34 + i, 43936.0, 43171.0, 43488.71, 20.5] for i in range(1000)
    ]
    for name, code in (("zlib", 1), ("lz4", 2)):
        data, logical = encode(candles, name, threshold=1024)
        assert data[0] == (serialization.FORMAT_VERSION << 4) | code
        assert len(data) < logical
        assert decode(data) == candles
    # a reader configured differently still reads every form
    assert decode(encode(candles, "zlib", 0)[0]) == decode(encode(candles, "lz4", 0)[0]) == candles


def test_candle_batch_is_stored_in_at_most_half_its_json_size() -> None:
    rng = np.random.default_rng(1)
    closes = np.round(43000 * np.cumprod(1 + rng.normal(0, 0.001, 1000)), 2)
    candles = [
        [
            1706630400000 + i * 60_000,
            float(c),
            float(c) + 5.5,
            float(c) - 4.25,
            float(c) + 1.0,
            round(float(v), 5),
        ]
        for i, (c, v) in enumerate(zip(closes, rng.exponential(20, 1000), strict=True))
    ]
    stored, _ = encode(candles, "lz4", threshold=1024)
    assert len(stored) <= 0.5 * len(json.dumps(candles))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x20abc", b"\x12garbage", b"\x11garbage", bytes([0x10, 0xC1]), bytes([0x10, 0xC7, 1, 99, 0])],
)
def test_foreign_or_corrupt_bytes_raise_corrupt_value_error(data: bytes) -> None:
    with pytest.raises(CorruptValueError):
        decode(data)


def test_unsupported_types_raise_serialization_error() -> None:
    with pytest.raises(SerializationError, match="set"):
        encode({"a": {1, 2}})
    with pytest.raises(SerializationError):
        encode(object())


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**100), max_value=2**100)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.decimals(allow_nan=False)
    | st.datetimes(timezones=st.just(dt.UTC) | st.none()),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_like)
def test_property_round_trip(value: Any) -> None:
    assert decode(encode(value, "lz4", threshold=16)[0]) == value


def test_columnar_rows_keep_int_float_nan_and_extremes() -> None:
    rows = [[-(2**63), 2**63 - 1, float("nan"), -0.0, float("inf")] for _ in range(10)]
    rows[3] = [2**63 - 1, -(2**63), 1.0, 5e-324, -float("inf")]
    back = decode(encode(rows, "none", 0)[0])
    assert [[type(v) for v in r] for r in back] == [[type(v) for v in r] for r in rows]
    assert repr(back) == repr(rows)
    mixed = [[1, 2.0]] * 9 + [[1.0, 2.0]]  # a column mixing int and float is packed row-wise
    assert [[type(v) for v in r] for r in decode(encode(mixed)[0])] == [[type(v) for v in r] for r in mixed]
    nested = {"candles": [(1, 2.0)] * 20, "n": 20}
    assert decode(encode(nested)[0]) == {"candles": [[1, 2.0]] * 20, "n": 20}


numeric_rows = st.integers(min_value=1, max_value=7).flatmap(
    lambda width: st.lists(
        st.tuples(
            *[
                st.integers(min_value=-(2**63), max_value=2**63 - 1)
                if j % 2 == 0
                else st.floats(allow_nan=False)
                for j in range(width)
            ]
        ).map(list),
        min_size=0,
        max_size=40,
    )
)


@settings(max_examples=200, deadline=None)
@given(numeric_rows)
def test_property_numeric_row_batches_round_trip_with_types(rows: list[list[Any]]) -> None:
    back = decode(encode(rows, "lz4", threshold=64)[0])
    assert back == rows
    assert [[type(v) for v in r] for r in back] == [[type(v) for v in r] for r in rows]
