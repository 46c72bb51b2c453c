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

validation = pytest.importorskip("data_collector.backfill.validate")
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


@pytest.mark.parametrize("column", [1, 5])
def test_huge_integer_values_are_malformed_not_overflow(column: int) -> None:
    row: list[Any] = [START, 1, 2, 0.5, 1.5, 1]
    row[column] = 10**400  # a JSON body may carry any integer; json/orjson give a Python int
    with pytest.raises(MalformedPageError):
        validate_page([row], "1m", START, END)


def test_booleans_are_not_prices() -> None:
    with pytest.raises(MalformedPageError):
        validate_page([[START, True, True, True, True, True]], "1m", START, END)


# WebSocket frames through the streamer's normaliser ----------------------------------------------

_NOW_MS = 1_700_000_000_000
_CAUGHT_BY_READER = (ValueError, KeyError, TypeError, IndexError, AttributeError)  # connection._read
_field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["1.5", "0", "-1", "nan", "inf", "1e400", "", "x", "SOLUSDT", "1m", str(_NOW_MS)])
    | st.lists(st.sampled_from(["1", "2", 3, None]), max_size=3)
    | st.dictionaries(st.sampled_from(["t", "i", "o"]), st.integers(), max_size=2)
    | st.sampled_from([_NOW_MS, _NOW_MS - 60_000, 0, -1, 2**63, _NOW_MS + 10 * 86_400_000])
)


def _good_payload(channel: str) -> dict[str, Any]:
    if channel in ("trade", "aggTrade"):
        return {"e": channel, "E": _NOW_MS, "s": "SOLUSDT", "t": 5, "a": 5, "p": "1.5", "q": "2",
                "f": 1, "l": 5, "T": _NOW_MS, "m": True, "M": True}  # fmt: skip
    if channel == "bookTicker":
        return {"u": 7, "s": "SOLUSDT", "b": "1.4", "B": "1", "a": "1.6", "A": "2"}
    if channel == "depth":
        return {"e": "depthUpdate", "E": _NOW_MS, "s": "SOLUSDT", "U": 5, "u": 9,
                "b": [["1.4", "1"]], "a": [["1.6", "0"]]}  # fmt: skip
    open_ms = _NOW_MS - _NOW_MS % 60_000
    return {"e": "kline", "E": _NOW_MS, "s": "SOLUSDT",
            "k": {"t": open_ms, "T": open_ms + 59_999, "s": "SOLUSDT", "i": "1m", "o": "1.5", "c": "1.6",
                  "h": "1.7", "l": "1.4", "v": "10", "n": 3, "x": False, "q": "15", "V": "5", "Q": "7"}}  # fmt: skip


_CHANNELS = ["trade", "aggTrade", "bookTicker", "depth", "kline_1m"]


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, Any]:
    channel = draw(st.sampled_from(_CHANNELS))
    payload = _good_payload(channel)
    target = payload["k"] if channel.startswith("kline") and draw(st.booleans()) else payload
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.integers(0, 4)) == 0:
            del target[key]
        else:
            target[key] = draw(_field_values)
    whole = draw(st.sampled_from(["dict", "dict", "dict", "list", "str", "none"]))
    return channel, {"list": [payload], "str": "payload", "none": None}.get(whole, payload)


@given(_mutated())
@example(("trade", {**_good_payload("trade"), "p": "1e400"}))
@example(("trade", {**_good_payload("trade"), "p": "-1"}))
@example(("trade", {**_good_payload("trade"), "T": 10**30}))
@example(("depth", {**_good_payload("depth"), "b": [["nan", "1"]]}))
@example(("kline_1m", {**_good_payload("kline_1m"), "k": {**_good_payload("kline_1m")["k"], "h": "1.0"}}))
@FUZZ
def test_ws_payloads_are_normalised_or_malformed(case: tuple[str, Any]) -> None:
    normalize = pytest.importorskip("data_collector.venues.binance.normalize")
    msgpack = pytest.importorskip("msgpack")
    channel, payload = case
    fn = normalize.make_normalizer("binance", "SOL/USDT", channel)
    try:
        entry_id, event = fn(payload, _NOW_MS)
    except _CAUGHT_BY_READER:
        return  # counted as malformed by the connection, which stays up
    ms, _, seq = entry_id.partition("-")
    from data_collector.streaming.normalize import MIN_TS_MS

    assert int(ms) >= MIN_TS_MS and int(seq) >= 0 and int(seq) < 2**64
    assert event["symbol"] == "SOL/USDT" and event["channel"] == channel
    for key, value in event.items():
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0, (key, value)
    for key in ("price", "bid", "ask", "open", "high", "low", "close"):
        if key in event:
            assert event[key] > 0
    msgpack.packb(event)


def test_ws_kline_open_time_must_be_on_the_grid() -> None:
    normalize = pytest.importorskip("data_collector.venues.binance.normalize")
    payload = _good_payload("kline_1m")
    payload["k"]["t"] += 7  # 7 ms past the minute: a corrupt candle key downstream (Redis id, ohlcv ts)
    with pytest.raises(_CAUGHT_BY_READER):
        normalize.make_normalizer("binance", "SOL/USDT", "kline_1m")(payload, _NOW_MS)


def test_ws_boolean_prices_are_malformed() -> None:
    normalize = pytest.importorskip("data_collector.venues.binance.normalize")
    payload = {**_good_payload("trade"), "p": True, "q": False}
    with pytest.raises(_CAUGHT_BY_READER):
        normalize.make_normalizer("binance", "SOL/USDT", "trade")(payload, _NOW_MS)


async def test_bad_ws_frames_are_skipped_and_counted_end_to_end(redis_prefix: str) -> None:
    """A hostile stream server: every bad frame is counted as malformed, the connection stays up,
    and only the valid trades reach Redis (once each)."""
    websockets = pytest.importorskip("websockets")
    orjson = pytest.importorskip("orjson")
    msgpack = pytest.importorskip("msgpack")
    streamer_mod = pytest.importorskip("data_collector.optimized_websocket")
    import asyncio
    import time

    import redis.asyncio as aioredis

    from tests.support.services import REDIS_URL

    now = int(time.time() * 1000)

    def trade(tid: int, **changes: Any) -> bytes:
        data = {"e": "trade", "E": now, "s": "SOLUSDT", "t": tid, "p": "1.5", "q": "2", "T": now + tid,
                "m": True, "M": True}  # fmt: skip
        data.update(changes)
        return orjson.dumps({"stream": "solusdt@trade", "data": data})

    bad: list[bytes | str] = [
        b"{not json",
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        trade(90, p="NaN"),
        trade(91, p="-1"),
        trade(92, q="inf"),
        trade(93, T=now + 40 * 86_400_000),  # absurd: 40 days ahead
        trade(94, T=12),  # absurd: 1970
        trade(95, t="abc"),
        trade(96, s="BTCUSDT"),  # another symbol on this stream
        trade(97, m="yes"),
        orjson.dumps({"stream": "nosuch@trade", "data": {}}),
        orjson.dumps({"stream": "solusdt@trade"}),
        b'{"stream":"solusdt@trade","data":' + b" " * (2 << 20) + b"{}}",  # 2 MB > max_frame_bytes
        "\u0000\ufffd",  # a text frame of garbage
    ]
    good = [trade(1), trade(2), trade(3)]
    frames: list[bytes | str] = [good[0], *bad[:8], good[1], *bad[8:], good[2]]
    sent = asyncio.Event()
    finished = asyncio.Event()

    async def handler(ws: Any) -> None:
        for frame in frames:
            await ws.send(frame)
        sent.set()
        await finished.wait()

    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        config = {
            "exchange": {"ws_url": f"ws://127.0.0.1:{port}"},
            "symbols": ["SOL/USDT"],
            "redis": {"url": REDIS_URL, "prefix": redis_prefix},
            "streaming": {"channels": ["trade"]},
            "logging": {"file": None},
        }
        streamer = streamer_mod.OptimizedWebSocketStreamer(config=config, batch_size=1)
        async with streamer:
            await asyncio.wait_for(sent.wait(), 15)
            for _ in range(100):
                metrics = streamer.get_metrics()
                if metrics["written"] >= 3 and metrics["malformed"] >= len(bad):
                    break
                await asyncio.sleep(0.05)
        metrics = streamer.get_metrics()
        finished.set()
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        rows = await client.xrange(f"{redis_prefix}:stream:binance:trade:SOL/USDT")
    finally:
        await client.aclose()
    ids = [msgpack.unpackb(fields[b"d"])["id"] for _, fields in rows]
    assert ids == [1, 2, 3]
    assert metrics["malformed"] == len(bad), metrics
    assert metrics["reconnects"] == 0
