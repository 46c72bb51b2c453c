"""Issue 14: the generic adapter (any ccxt.pro exchange, through ``watch_*_for_symbols``) driving
the real ccxt.pro ``binance`` and ``okx`` against the simulator's two venues, into the real Redis:
the same events and keys as the native adapters, trades exactly once and in order, books equal
to the simulator's, and a gap marker after a drop (the venue's sequence is not seen)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from tests.streaming.test_stream_okx import (
    INST,
    OKX_SYMBOLS,
    SPOT,
    check_okx_trades,
    gap_reasons,
    okx_key,
    okx_sim,
    settle_okx,
)
from tests.support.services import REDIS_URL
from tests.support.streaming import (
    delete_prefix,
    entries,
    okx_stream_config,
    sent_by_stream,
    stream_config,
    wait_for,
)

CHANNELS = ["trade", "kline_1m", "depth"]


def generic(config: dict[str, Any], symbols: list[str]) -> Any:
    return OptimizedWebSocketStreamer(
        symbols=symbols, redis_client=REDIS_URL, channels=CHANNELS, config=config, adapter="ccxt"
    )


def book_levels(client: redis.Redis, key: str) -> tuple[list[Any], list[Any]] | None:
    raw = client.get(key)
    if raw is None:
        return None
    book = msgpack.unpackb(raw)
    return book["bids"], book["asks"]


async def test_generic_adapter_through_ccxt_pro_on_both_simulated_venues(
    redis_prefix: str, long_run: bool
) -> None:
    binance_prefix = redis_prefix + "b"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async with okx_sim(ws_rate=20) as sim:
            sim.okx.hub.ws_rate = 20
            okx = generic(okx_stream_config(sim, redis_prefix, watchdog_s=30.0, book_depth=10), OKX_SYMBOLS)
            binance = generic(stream_config(sim, binance_prefix, watchdog_s=30.0, book_depth=10), SPOT)
            assert okx._service.venue.kind == binance._service.venue.kind == "ccxt"
            async with okx, binance:
                assert await okx.wait_connected(20) and await binance.wait_connected(20)
                await asyncio.sleep(20 if long_run else 3)
                await settle_okx(okx, sim, redis_prefix)  # freezes the clock

                def binance_trades_written() -> bool:
                    sent = sent_by_stream(sim, SPOT)
                    return all(
                        client.xlen(f"{binance_prefix}:stream:sim-binance:trade:{s}")
                        >= sent[("trade", s)]["count"]
                        for s in SPOT
                    )

                await wait_for(binance_trades_written, what="every Binance trade sent written")

                def okx_books_true() -> bool:
                    for symbol in OKX_SYMBOLS:
                        bids, asks = sim.okx.venue.levels(sim.okx.venue.instruments[INST[symbol]], 10)
                        truth = (
                            [[float(p), float(q)] for p, q, *_ in bids],
                            [[float(p), float(q)] for p, q, *_ in asks],
                        )
                        if book_levels(client, f"{redis_prefix}:book:sim-okx:{symbol}") != truth:
                            return False
                    return True

                def binance_books_true() -> bool:
                    for symbol in SPOT:
                        book = sim.order_book(symbol, 10)
                        truth = (
                            [[float(p), float(q)] for p, q in book["bids"]],
                            [[float(p), float(q)] for p, q in book["asks"]],
                        )
                        if book_levels(client, f"{binance_prefix}:book:sim-binance:{symbol}") != truth:
                            return False
                    return True

                await wait_for(okx_books_true, what="OKX books equal to the simulator's")
                await wait_for(binance_books_true, what="Binance books equal to the simulator's")
                okx_metrics, binance_metrics = okx.get_metrics(), binance.get_metrics()
            assert check_okx_trades(client, redis_prefix, sim) >= 3 * 20
            for symbol in SPOT:
                sent = sent_by_stream(sim, SPOT)[("trade", symbol)]
                ids = [
                    e["id"] for _, e in entries(client, f"{binance_prefix}:stream:sim-binance:trade:{symbol}")
                ]
                assert len(ids) == sent["count"] and ids == list(range(ids[0], ids[0] + len(ids)))
                assert ids[-1] == sent["last_id"]
            for symbol in OKX_SYMBOLS:
                klines = [e for _, e in entries(client, okx_key(redis_prefix, "kline_1m", symbol))]
                assert klines and all(k["exchange"] == "sim-okx" and k["timeframe"] == "1m" for k in klines)
            for metrics in (okx_metrics, binance_metrics):
                assert metrics["malformed"] == 0 and metrics["reconnects"] == 0 and metrics["dropped"] == 0
    finally:
        delete_prefix(binance_prefix)
        client.close()


async def test_generic_adapter_marks_a_gap_after_a_drop(redis_prefix: str) -> None:
    async with okx_sim() as sim:
        sim.okx.hub.ws_rate = 20
        streamer = generic(okx_stream_config(sim, redis_prefix, reconnect_max_backoff_s=1.0), OKX_SYMBOLS)
        client = redis.Redis.from_url(REDIS_URL)
        async with streamer:
            assert await streamer.wait_connected(20)
            await wait_for(
                lambda: all(client.xlen(okx_key(redis_prefix, "trade", s)) for s in OKX_SYMBOLS),
                what="every trade stream written",
            )
            assert sim.okx.hub.drop_all() >= 1
            await wait_for(
                lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect after the drop"
            )

            def marked() -> bool:
                gaps = gap_reasons(client, redis_prefix)
                return all(("trade", s, "reconnect") in gaps for s in OKX_SYMBOLS)

            await wait_for(marked, what="a gap marker on every trade stream")
            await wait_for(
                lambda: all(client.get(f"{redis_prefix}:book:sim-okx:{s}") for s in OKX_SYMBOLS),
                what="books back",
            )
            conns = streamer._service.connections
        assert all(delay <= 1.0 for c in conns for _, delay in c.backoffs)
        client.close()
