"""Issue 12: settled funding rates from the perpetual stream reach the backfill's ``funding`` table.

The simulator's clock is moved just past the next funding time (``T`` of the mark prices seen),
so a settlement happens at once: the streamer stores the settled rate as ``/fapi/v1/fundingRate``
serves it, equal to the simulator's truth and to the row the REST backfill stores; a backfill over
the same range afterwards adds no second row. A reconnect, or a restart, across the settlement
does not lose it, nor does a ``fundingRate`` endpoint failing for a while. Real Redis, PostgreSQL
and SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import ccxt
import pytest

from data_collector.backfill.validate import validate_funding
from data_collector.config import load_config
from data_collector.errors import UsageError
from data_collector.markets import FUNDING_SERIES, HOUR_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from data_collector.storage import open_store
from data_collector.storage.funding import FundingRate
from data_collector.streaming.funding import ccxt_funding_rows
from tests.support.backfill import config_for
from tests.support.services import PG_ADMIN_DSN
from tests.support.streaming import stream_config, wait_for

PERP = "BTC/USDT:USDT"
VENUE = "sim-binanceusdm"
DAY_OF_SETTLEMENTS = 24 * HOUR_MS


def _database(base_config: dict[str, Any], backend: str, path: Path) -> dict[str, Any]:
    if backend == "sqlite":
        return {"url": f"sqlite+aiosqlite:///{path}"}
    return dict(base_config["database"])


def _truth(sim: SimulatedExchange, start_ms: int, end_ms: int) -> list[FundingRate]:
    rows = sim.usdm.funding_history(PERP, start_ms, end_ms - 1)
    return [(r["fundingTime"], float(r["fundingRate"]), float(r["markPrice"])) for r in rows]


async def _stored(
    database: dict[str, Any], start_ms: int, end_ms: int
) -> tuple[list[FundingRate], list[Any]]:
    """The funding rows in ``[start_ms, end_ms)`` and the funding coverage of ``database``."""
    store = open_store(load_config({"database": database, "logging": {"file": None}}))
    await store.initialize()
    try:
        inst = await store.ensure_instrument(VENUE, PERP, base="BTC", quote="USDT", market_type="swap")
        rows = await store.load_funding(inst.id, start_ms, end_ms)
        cover = [(c.start_ms, c.end_ms, c.kind) for c in await store.coverage(inst.id, FUNDING_SERIES)]
        return rows, cover
    finally:
        await store.close()


def _streamer(
    sim: SimulatedExchange, prefix: str, database: dict[str, Any], seen: list[dict[str, Any]]
) -> OptimizedWebSocketStreamer:
    config = {**stream_config(sim, prefix, futures=True), "database": database}
    return OptimizedWebSocketStreamer(
        symbols=[PERP], channels=["markPrice@1s"], config=config, on_mark_price=seen.append
    )


async def _next_funding_time(seen: list[dict[str, Any]]) -> int:
    """Once a mark price has come (so the streamer knows ``T``), that next funding time."""
    await wait_for(lambda: bool(seen), what="a mark price")
    t = seen[-1]["next_funding_ms"]
    assert isinstance(t, int) and t % (8 * HOUR_MS) == 0
    return t


def _past(sim: SimulatedExchange, t: int) -> None:
    """Move the simulator's clock just past funding time ``t``: the settlement happens now."""
    sim.clock.advance(t + 500 - sim.clock.now_ms())


async def _stored_as_truth(sim: SimulatedExchange, database: dict[str, Any], t: int) -> None:
    """The one settlement at ``t`` is stored in ``database`` as the simulator settled it."""
    want = _truth(sim, t, t + 1)
    rows, _ = await _stored(database, t - DAY_OF_SETTLEMENTS, t + DAY_OF_SETTLEMENTS)
    assert len(want) == 1 and rows == want


async def _backfill(sim: SimulatedExchange, database: dict[str, Any], start_ms: int, end_ms: int) -> Any:
    config = config_for(
        {"database": database, "logging": {"file": None}},
        sim,
        symbols=[PERP],
        data_types=["funding_rates"],
        futures_exchange={**sim.futures_exchange_config(), "timeout_s": 2.0},
    )
    async with OptimizedDataCollector(config) as collector:
        return await collector.collect(symbols=[PERP], start=start_ms, end=end_ms)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_a_settlement_on_the_stream_stores_the_backfills_row_once(
    base_config: dict[str, Any], redis_prefix: str, tmp_path: Path, backend: str
) -> None:
    database = _database(base_config, backend, tmp_path / "stream.db")
    seen: list[dict[str, Any]] = []
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[PERP], seed=17) as sim:
        async with _streamer(sim, redis_prefix, database, seen) as streamer:
            t = await _next_funding_time(seen)
            _past(sim, t)
            await wait_for(lambda: streamer.get_metrics()["funding_stored"] >= 1, what="a stored settlement")
            await wait_for(lambda: seen[-1]["next_funding_ms"] > t, what="the next funding time")
            metrics = streamer.get_metrics()
        want = _truth(sim, t, t + 1)
        stream_rows, stream_cover = await _stored(database, t - DAY_OF_SETTLEMENTS, t + DAY_OF_SETTLEMENTS)
        # The estimate the stream showed last before the settlement is not what was settled.
        last_estimate = [e["funding_rate"] for e in seen if e["next_funding_ms"] == t][-1]
        # The backfill's own row, in a store the stream never wrote.
        sim.clock.advance(120_000)  # the backfill leaves the last minute (settlements not yet published)
        start, end = t - DAY_OF_SETTLEMENTS, t + 60_000
        alone = tmp_path / "backfill-only.db"
        await _backfill(sim, {"url": f"sqlite+aiosqlite:///{alone}"}, start, end)
        backfill_rows, _ = await _stored({"url": f"sqlite+aiosqlite:///{alone}"}, start, end)
        # The backfill afterwards, over the same range, on the stream's store.
        report = await _backfill(sim, database, start, end)
        after_rows, after_cover = await _stored(database, start, end)
        truth = _truth(sim, start, end)

    assert metrics["funding_stored"] == 1 and metrics["store_errors"] == 0 and metrics["rest_errors"] == 0
    assert len(want) == 1 and want[0][0] == t
    assert stream_rows == want
    assert stream_cover == [(t, t + 1, "data")]
    assert want[0][1] != last_estimate
    assert [r for r in backfill_rows if r[0] == t] == want
    assert len(truth) == 4 and after_rows == truth == backfill_rows
    assert report.rows_written == 3, report.summary()  # the streamed settlement was there already
    assert after_cover == [(start, end, "data")]


@pytest.mark.parametrize("across", ["reconnect", "restart"])
async def test_a_settlement_across_a_reconnect_or_a_restart_is_still_stored(
    base_config: dict[str, Any], redis_prefix: str, across: str
) -> None:
    database = dict(base_config["database"])
    seen: list[dict[str, Any]] = []

    def stored() -> bool:
        return bool(streamer.get_metrics()["funding_stored"] >= 1)

    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[PERP], seed=23) as sim:
        async with _streamer(sim, redis_prefix, database, seen) as streamer:
            t = await _next_funding_time(seen)
            if across == "reconnect":
                sim.ws_drop_all()  # the connection drops, and the settlement passes before it is back
                _past(sim, t)
                await wait_for(stored, what="a stored settlement")
            else:
                await wait_for(lambda: streamer.get_metrics()["written"] >= 1, what="a mark price in Redis")
        metrics = streamer.get_metrics()
        if across == "reconnect":
            assert metrics["reconnects"] >= 1
        else:
            assert metrics["funding_stored"] == 0
            _past(sim, t)  # settled while no streamer runs; the next one starts from Redis
            async with _streamer(sim, redis_prefix, database, []) as streamer:
                await wait_for(stored, what="a stored settlement")
        assert streamer.get_metrics()["funding_stored"] == 1
        await _stored_as_truth(sim, database, t)


async def test_a_failing_funding_rate_endpoint_is_asked_again_until_the_row_is_stored(
    base_config: dict[str, Any], redis_prefix: str
) -> None:
    database = dict(base_config["database"])
    seen: list[dict[str, Any]] = []
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[PERP], seed=31) as sim:
        async with _streamer(sim, redis_prefix, database, seen) as streamer:
            t = await _next_funding_time(seen)
            sim.set_faults(error_rate=1.0, endpoint="fapi/v1/fundingRate")
            _past(sim, t)
            await wait_for(lambda: streamer.get_metrics()["rest_errors"] >= 1, what="a 5xx answer")
            sim.set_faults(malformed_rate=1.0, endpoint="fapi/v1/fundingRate")
            await wait_for(lambda: streamer.get_metrics()["rest_errors"] >= 2, what="a malformed answer")
            sim.set_faults(endpoint="fapi/v1/fundingRate")
            await wait_for(lambda: streamer.get_metrics()["funding_stored"] >= 1, what="a stored settlement")
            assert streamer.get_metrics()["funding_stored"] == 1
        await _stored_as_truth(sim, database, t)


async def test_a_store_refusing_funding_for_good_still_stores_candles(
    base_config: dict[str, Any], redis_prefix: str, caplog: Any
) -> None:
    database = dict(base_config["database"])
    store = open_store(load_config(base_config))
    await store.initialize()  # the tables exist; then the server is made to refuse every funding row
    await store.close()
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(
            f'ALTER TABLE "{database["schema"]}".funding ADD CONSTRAINT no CHECK (false) NOT VALID'
        )
    finally:
        await conn.close()
    seen: list[dict[str, Any]] = []
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[PERP], seed=37) as sim:
        config = {**stream_config(sim, redis_prefix, futures=True), "database": database}
        streamer = OptimizedWebSocketStreamer(
            symbols=[PERP], channels=["markPrice@1s", "kline_1m"], config=config, on_mark_price=seen.append
        )
        async with streamer:
            sink = streamer._service.candles
            assert sink is not None
            t = await _next_funding_time(seen)
            _past(sim, t)
            await wait_for(lambda: sink.funding_failed is not None, what="the funding rows refused")
            stored = streamer.get_metrics()["candles_stored"]
            sim.clock.advance(60_000)  # a candle closes after the refusal
            await wait_for(lambda: streamer.get_metrics()["candles_stored"] > stored, what="a stored candle")
            metrics = streamer.get_metrics()
        assert sink.failed is None
    assert metrics["funding_stored"] == 0 and metrics["store_errors"] == 1
    refusals = [r for r in caplog.records if "funding rates can no longer be stored" in r.getMessage()]
    assert len(refusals) == 1


def test_the_streamers_reading_of_funding_rate_is_ccxts() -> None:
    """``/fapi/v1/fundingRate`` items, read without ccxt, give the rows the backfill gets through
    ccxt's own parser (string or integer times, negative rates, no mark price)."""
    items: list[Any] = [
        {
            "symbol": "BTCUSDT",
            "fundingTime": 1621267200000,
            "fundingRate": "-0.00010000",
            "markPrice": "34287.5",
        },
        {"symbol": "BTCUSDT", "fundingTime": "1621296000001", "fundingRate": "0.00030000", "markPrice": ""},
        {"symbol": "BTCUSDT", "fundingTime": 1621324800000, "fundingRate": 0.0001, "markPrice": 34000},
        {"symbol": "BTCUSDT", "fundingTime": 1621353600000, "fundingRate": "1E-8"},
    ]
    exchange = ccxt.binanceusdm()
    by_ccxt = validate_funding(exchange.parse_funding_rate_histories(items, None, None, None), 0, 2**62)
    assert validate_funding(ccxt_funding_rows(items), 0, 2**62) == by_ccxt
    assert [r[0] for r in by_ccxt] == [1621267200000, 1621296000001, 1621324800000, 1621353600000]
    assert [r[2] for r in by_ccxt] == [34287.5, None, 34000.0, None]


@pytest.mark.parametrize(("venue", "symbol"), [("binanceusdm", PERP), ("binance", "BTC/USDT")])
def test_store_funding_without_perpetual_mark_prices_is_refused_in_one_line(venue: str, symbol: str) -> None:
    config = {"exchange": {"id": venue}, "logging": {"file": None}}
    channels = ["aggTrade"] if venue == "binanceusdm" else ["trade"]
    with pytest.raises(UsageError, match="store_funding needs perpetuals") as refused:
        OptimizedWebSocketStreamer(symbols=[symbol], channels=channels, config=config, store_funding=True)
    assert "\n" not in str(refused.value)
