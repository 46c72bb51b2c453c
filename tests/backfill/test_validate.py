"""The page validator's fast number parsing gives what ``float()`` gives, or fails as it does."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from data_collector.backfill.validate import _numbers

_decimal = st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.builds(
    lambda whole, frac: f"{whole}.{frac:08d}",
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**8 - 1),
)
_value = (
    _decimal
    | st.text(alphabet='0123456789.,-+eE[] _x"nulltrue', max_size=8)
    | st.sampled_from(["nan", "NaN", "inf", "Infinity", "1e999", "-0", " 1", "1 ", "1_0", "0x10", "١٢"])
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.none()
    | st.booleans()
)


def _via_float(column: list[Any]) -> list[float] | type[Exception]:
    try:
        return [float(v) for v in column]
    except (TypeError, ValueError, OverflowError) as exc:
        return type(exc)


def _via_numbers(column: list[Any]) -> list[float] | type[Exception]:
    try:
        return _numbers(column)
    except (TypeError, ValueError, OverflowError) as exc:
        return type(exc)


def _same(a: list[float] | type[Exception], b: list[float] | type[Exception]) -> bool:
    if not isinstance(a, list) or not isinstance(b, list):
        return a == b
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))
        for x, y in zip(a, b, strict=True)
    )


@given(st.lists(_value, max_size=12))
@example(["1,2", "3"])
@example(["1.5,2.5", "3.5"])
@example(["1]", "[2"])
@example(["1", "true"])
@example(["1", "100"])
@example(["0.1", "1e999"])
@example(["123.45000000", "-0"])
@settings(max_examples=500, deadline=None)
def test_numbers_equal_float_for_any_column(column: list[Any]) -> None:
    assert _same(_via_numbers(column), _via_float(column))
    result = _via_numbers(column)
    if isinstance(result, list):
        assert all(type(x) is float for x in result)


@pytest.mark.parametrize("text", ["0.00000001", "99999.99999999", "1234567.89012345", "5e-324"])
def test_binance_style_strings_round_exactly(text: str) -> None:
    assert _numbers([text, text]) == [float(text), float(text)]
