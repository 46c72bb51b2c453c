"""Closed klines from the stream (and the REST repair) reach the candle store, equal to REST's."""

from __future__ import annotations

from typing import Any

import pytest

from data_collector.config import load_config
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from data_collector.storage import open_store
from tests.support.streaming import stream_config, wait_for


@pytest.mark.parametrize("symbol", ["SOL/USDT", "SOL/USDT:USDT"])
async def test_closed_klines_are_stored_with_rest_values(
    base_config: dict[str, Any], redis_prefix: str, symbol: str
) -> None:
    futures = symbol.endswith(":USDT")
    perpetuals = [symbol] if futures else []
    async with SimulatedExchange(symbols=["SOL/USDT"], perpetuals=perpetuals, seed=21, ws_rate=5) as sim:
        cfg = {**stream_config(sim, redis_prefix, futures=futures), "database": base_config["database"]}
        streamer = OptimizedWebSocketStreamer(symbols=[symbol], channels=["kline_1m"], config=cfg)
        async with streamer:
            assert await streamer.wait_connected()
            # Subscribed and streaming: the forming candle's first update has been written.
            await wait_for(lambda: streamer.get_metrics()["written"] >= 1, what="the first kline")
            sim.clock.advance(60_000)  # the forming candle closes on the stream
            await wait_for(lambda: streamer.get_metrics()["candles_stored"] >= 1, what="a stored candle")
            sim.clock.advance(120_000)  # two more close while the connection is down
            sim.ws_drop_all()
            await wait_for(
                lambda: streamer.get_metrics()["candles_stored"] >= 3, what="repaired candles stored"
            )
            metrics = streamer.get_metrics()
        now_ms = sim.clock.now_ms()
        venue = sim.usdm if futures else sim
        rest = venue.klines(symbol, "1m", now_ms - 600_000, now_ms)

    assert metrics["store_errors"] == 0 and metrics["repaired_klines"] >= 2
    store = open_store(load_config(cfg))
    await store.initialize()
    try:
        label = "sim-binanceusdm" if futures else "sim-binance"
        instrument = await store.ensure_instrument(label, symbol, base="SOL", quote="USDT")
        assert instrument.market_type == ("swap" if futures else "spot")
        stored = await store.load(instrument.id, "1m", now_ms - 600_000, now_ms)
    finally:
        await store.close()
    by_open = {int(row[0]): [float(v) for v in row[1:6]] for row in rest}
    assert len(stored) >= 3
    for ts, o, h, lo, c, v in stored:
        assert [o, h, lo, c, v] == by_open[ts]
    opens = [c[0] for c in stored]
    assert opens == list(range(opens[0], opens[-1] + 1, 60_000))


async def test_an_unreachable_database_is_retried_counted_and_never_blocks_the_stream(
    redis_prefix: str,
) -> None:
    from tests.support.services import free_port

    symbol = "SOL/USDT"
    async with SimulatedExchange(symbols=[symbol], seed=22, ws_rate=20) as sim:
        cfg = {
            **stream_config(sim, redis_prefix),
            "database": {
                "url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test",
                "connect_timeout_s": 1,
            },
        }
        streamer = OptimizedWebSocketStreamer(symbols=[symbol], channels=["trade", "kline_1m"], config=cfg)
        async with streamer:
            assert await streamer.wait_connected()
            sim.clock.advance(60_000)
            await wait_for(lambda: streamer.get_metrics()["store_errors"] >= 1, what="a failed store write")
            written = streamer.get_metrics()["written"]
            await wait_for(
                lambda: streamer.get_metrics()["written"] > written + 20, what="the stream going on"
            )
        metrics = streamer.get_metrics()
    assert metrics["candles_stored"] == 0 and metrics["redis_errors"] == 0


async def test_a_permanent_refusal_stops_the_sink_once_and_the_stream_goes_on(
    base_config: dict[str, Any], redis_prefix: str, caplog: Any
) -> None:
    import asyncpg

    from tests.support.services import PG_ADMIN_DSN

    symbol = "SOL/USDT"
    schema = base_config["database"]["schema"]
    store = open_store(load_config(base_config))
    await store.initialize()  # the tables exist; then the server is made to refuse every candle
    await store.close()
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'ALTER TABLE "{schema}".ohlcv ADD CONSTRAINT refuse_all CHECK (false) NOT VALID')
    finally:
        await conn.close()
    async with SimulatedExchange(symbols=[symbol], seed=23, ws_rate=20) as sim:
        cfg = {**stream_config(sim, redis_prefix), "database": base_config["database"]}
        streamer = OptimizedWebSocketStreamer(symbols=[symbol], channels=["trade", "kline_1m"], config=cfg)
        async with streamer:
            assert await streamer.wait_connected()
            sink = streamer._service.candles
            assert sink is not None
            sim.clock.advance(60_000)
            await wait_for(lambda: sink.failed is not None, what="the sink giving up")
            for _ in range(3):  # candles closing after the refusal are counted, not retried
                errors = streamer.get_metrics()["store_errors"]
                sim.clock.advance(60_000)
                await wait_for(
                    lambda e=errors: streamer.get_metrics()["store_errors"] > e, what="a counted candle"
                )
            written = streamer.get_metrics()["written"]
            await wait_for(
                lambda: streamer.get_metrics()["written"] > written + 20, what="the stream going on"
            )
            metrics = streamer.get_metrics()
    assert metrics["candles_stored"] == 0 and metrics["store_errors"] >= 4
    refusals = [r for r in caplog.records if "can no longer be stored" in r.getMessage()]
    assert len(refusals) == 1
