"""Scenario 4, payloads: REST pages (and WebSocket frames, once the streamer lands) fuzzed with
hypothesis. A bad payload is rejected (and so skipped, retried, counted), never stored corrupted and
never a traceback."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_collector.markets import MINUTE_MS, candle_open_ms

validation = pytest.importorskip("data_collector.candle_validation")
validate_page = validation.validate_page
MalformedPageError = validation.MalformedPageError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
START = 1_700_000_040_000 - (1_700_000_040_000 % MINUTE_MS)
END = START + 1000 * MINUTE_MS

_weird = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["1", "nan", "inf", "-1", "1e309", "", "abc", "0x10", "1_0", "\x00", "١٢"])
    | st.text(max_size=10)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
_ts = st.integers(min_value=START - 5 * MINUTE_MS, max_value=END + 5 * MINUTE_MS) | st.sampled_from(
    [0, -1, 2**62, START, START + 1, END, float(START), float("nan"), str(START)]
)
_row = st.lists(_weird, min_size=0, max_size=8).flatmap(
    lambda rest: _ts.map(
        lambda ts: [ts, *rest[:5], *([1.0] * max(0, 5 - len(rest)))][: 1 + max(len(rest), 0)]
    )
)
_page = st.lists(_row, max_size=6) | _weird


def _check_clean(candles: list[Any]) -> None:
    previous = START - 1
    for ts, o, h, low, c, v in candles:
        assert isinstance(ts, int) and START <= ts < END and ts > previous
        assert candle_open_ms(ts, "1m") == ts
        assert all(isinstance(x, float) and math.isfinite(x) for x in (o, h, low, c, v))
        assert min(o, h, low, c) > 0 and v >= 0 and low <= min(o, c) and max(o, c) <= h
        previous = ts


@given(_page)
@example([[START, "1", "2", "0.5", "1.5", "10"]])
@example([[START, 1, 2, 0.5, 1.5, float("nan")]])
@example([[START, -1, 2, 0.5, 1.5, 1]])
@example([[START + 1, 1, 2, 0.5, 1.5, 1]])
@example([[START, 1, 2, 0.5, 1.5, 1], [START, 1, 2, 0.5, 1.5, 1]])
@example([[END, 1, 2, 0.5, 1.5, 1]])
@example([[2**62, 1, 2, 0.5, 1.5, 1]])
@example({"code": -1121, "msg": "Invalid symbol."})
@example("<html>502 Bad Gateway</html>")
@FUZZ
def test_pages_are_clean_or_rejected(page: Any) -> None:
    try:
        candles = validate_page(page, "1m", START, END)
    except MalformedPageError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300
        return
    _check_clean(candles)


@st.composite
def _valid_pages(draw: st.DrawFn) -> list[list[Any]]:
    n = draw(st.integers(min_value=0, max_value=20))
    offsets = sorted(draw(st.sets(st.integers(min_value=0, max_value=999), min_size=n, max_size=n)))
    rows = []
    for off in offsets:
        low = draw(st.floats(min_value=1e-8, max_value=1e6))
        high = low * draw(st.floats(min_value=1.0, max_value=2.0))
        o = draw(st.floats(min_value=low, max_value=high))
        c = draw(st.floats(min_value=low, max_value=high))
        v = draw(st.floats(min_value=0, max_value=1e9))
        as_str = draw(st.booleans())
        values = [str(x) if as_str else x for x in (o, high, low, c, v)]
        rows.append([START + off * MINUTE_MS, *values])
    return rows


@given(_valid_pages())
@FUZZ
def test_valid_pages_pass_unchanged(page: list[list[Any]]) -> None:
    candles = validate_page(page, "1m", START, END)
    assert [c[0] for c in candles] == [r[0] for r in page]
    assert [c[1:] for c in candles] == [tuple(float(x) for x in r[1:6]) for r in page]
    _check_clean(candles)


@pytest.mark.xfail(strict=False, reason="candle_validation.py: float() of a huge int raises OverflowError")
@pytest.mark.parametrize("column", [1, 5])
def test_huge_integer_values_are_malformed_not_overflow(column: int) -> None:
    row: list[Any] = [START, 1, 2, 0.5, 1.5, 1]
    row[column] = 10**400  # a JSON body may carry any integer; json/orjson give a Python int
    with pytest.raises(MalformedPageError):
        validate_page([row], "1m", START, END)


@pytest.mark.xfail(strict=False, reason="candle_validation.py: booleans are accepted as prices/volumes")
def test_booleans_are_not_prices() -> None:
    with pytest.raises(MalformedPageError):
        validate_page([[START, True, True, True, True, True]], "1m", START, END)
