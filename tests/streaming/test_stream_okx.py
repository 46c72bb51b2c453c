"""Issue 14, acceptance 4: the streamer on the simulator's Binance and OKX venues at once, with
the real Redis: every sent trade exactly once and in order; OKX books published only while their
checksum and sequence hold (each published book equals the simulator's book at that seqId); a
corrupted checksum and a skipped seqId each force a resync with a gap marker; drops and stalls
reconnect within the backoff bound, with gap markers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from data_collector.errors import UsageError
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.streaming.test_stream_e2e import check_exactly_once
from tests.support.services import REDIS_URL
from tests.support.streaming import (
    delete_prefix,
    entries,
    okx_stream_config,
    record_okx_books,
    stream_config,
    tap_books,
    wait_for,
)
from tests.support.streaming import settle_quietly as settle

SPOT = ["BTC/USDT", "SOL/USDT"]
OKX_SYMBOLS = [*SPOT, "BTC/USDT:USDT"]
INST = {"BTC/USDT": "BTC-USDT", "SOL/USDT": "SOL-USDT", "BTC/USDT:USDT": "BTC-USDT-SWAP"}
OKX_CHANNELS = ["trade", "depth", "bookTicker", "ticker", "kline_1m"]
DEPTH = 20


def okx_sim(**kwargs: Any) -> SimulatedExchange:
    return SimulatedExchange(symbols=SPOT, seed=42, gaps={}, okx=OkxSettings(swaps=["BTC/USDT"]), **kwargs)


def okx_streamer(sim: SimulatedExchange, prefix: str, channels: list[str], **streaming: Any) -> Any:
    return OptimizedWebSocketStreamer(
        symbols=OKX_SYMBOLS,
        redis_client=REDIS_URL,
        channels=channels,
        config=okx_stream_config(sim, prefix, book_depth=DEPTH, **streaming),
    )


def okx_key(prefix: str, channel: str, symbol: str) -> str:
    return f"{prefix}:stream:sim-okx:{channel}:{symbol}"


def check_okx_trades(client: redis.Redis, prefix: str, sim: SimulatedExchange) -> int:
    """Every OKX trade the simulator sent is in its stream once, in order. Returns the total."""
    total = 0
    for symbol in OKX_SYMBOLS:
        count, first, last = sim.okx.hub.trades_sent[INST[symbol]]
        ids = [e["id"] for _, e in entries(client, okx_key(prefix, "trade", symbol))]
        assert ids == list(range(first, last + 1)) and len(ids) == count, (symbol, len(ids), count)
        total += count
    return total


async def settle_okx(streamer: Any, sim: SimulatedExchange, prefix: str) -> None:
    """With the clock frozen: wait until every trade sent is in Redis and the writer is idle
    (bbo-tbt is pushed every tick even with nothing new, so "nothing arrives" never comes)."""
    sim.clock.freeze()
    client = redis.Redis.from_url(REDIS_URL)
    await asyncio.sleep(0.3)  # a tick built before the freeze may still be on its way

    def written() -> bool:
        sent = sim.okx.hub.trades_sent
        return streamer.get_metrics()["queue_depth"] == 0 and all(
            client.xlen(okx_key(prefix, "trade", s)) >= sent.get(INST[s], [0])[0] for s in OKX_SYMBOLS
        )

    await wait_for(written, what="every OKX trade sent written")
    client.close()


def check_books(
    published: list[tuple[str, dict[str, Any] | None]], truth: dict[tuple[str, int], Any]
) -> dict[str, int]:
    """Every book published equals the simulator's at its seqId. Returns publishes per symbol."""
    counts: dict[str, int] = {}
    for _, book in published:
        if book is None:
            continue
        expected = truth.get((INST[book["symbol"]], book["update_id"]))
        assert expected is not None, (book["symbol"], book["update_id"])
        assert (book["bids"], book["asks"]) == expected, (book["symbol"], book["update_id"])
        counts[book["symbol"]] = counts.get(book["symbol"], 0) + 1
    return counts


def gap_reasons(client: redis.Redis, prefix: str) -> list[tuple[str, str, str]]:
    return [
        (f[b"channel"].decode(), f[b"symbol"].decode(), f[b"reason"].decode())
        for _, f in client.xrange(f"{prefix}:gaps:sim-okx")
    ]


async def test_both_venues_at_once_every_trade_exactly_once_and_only_true_books(
    redis_prefix: str, long_run: bool
) -> None:
    binance_prefix = redis_prefix + "b"
    async with okx_sim(ws_rate=40) as sim:
        sim.okx.hub.ws_rate = 40
        truth = record_okx_books(sim, DEPTH)
        okx = okx_streamer(sim, redis_prefix, OKX_CHANNELS, watchdog_s=30.0)
        published = tap_books(okx)
        binance = OptimizedWebSocketStreamer(
            symbols=SPOT,
            redis_client=REDIS_URL,
            channels=["trade", "depth"],
            config=stream_config(sim, binance_prefix, watchdog_s=30.0),
        )
        try:
            async with okx, binance:
                assert await okx.wait_connected() and await binance.wait_connected()
                await asyncio.sleep(20 if long_run else 3)
                await settle(binance, sim)  # freezes the clock: no new trades nor book states
                await settle_okx(okx, sim, redis_prefix)
                # The clock is frozen: each book's last publish is the simulator's book now.
                for symbol in OKX_SYMBOLS:
                    book = okx.order_book(symbol)
                    assert book is not None, symbol
                    inst = sim.okx.venue.instruments[INST[symbol]]
                    assert book["update_id"] == inst.book.update_id
                okx_metrics, binance_metrics = okx.get_metrics(), binance.get_metrics()
            client = redis.Redis.from_url(REDIS_URL)
            assert check_okx_trades(client, redis_prefix, sim) >= 3 * 40
            binance_total = check_exactly_once(client, binance_prefix, sim, SPOT)
            assert binance_metrics["written"] == binance_total
            counts = check_books(published, truth)
            assert all(counts.get(s, 0) >= 3 for s in OKX_SYMBOLS), counts
            for channel in ("bookTicker", "ticker", "kline_1m", "depth"):
                assert all(client.xlen(okx_key(redis_prefix, channel, s)) for s in OKX_SYMBOLS), channel
            assert okx_metrics["malformed"] == 0 and okx_metrics["book_resyncs"] == 0
            assert okx_metrics["reconnects"] == 0 and okx_metrics["gaps"] == 0
            assert not client.xlen(f"{redis_prefix}:gaps:sim-okx")
            client.close()
        finally:
            delete_prefix(binance_prefix)


async def test_okx_corrupt_checksum_and_skipped_seq_each_resync_with_no_wrong_book(redis_prefix: str) -> None:
    async with okx_sim() as sim:
        sim.okx.hub.ws_rate = 20
        truth = record_okx_books(sim, DEPTH)
        streamer = okx_streamer(sim, redis_prefix, ["depth", "trade"])
        published = tap_books(streamer)
        keeper = streamer._service.books
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: all(streamer.order_book(s) for s in OKX_SYMBOLS), what="books in sync")

            def republished(symbol: str, after: int) -> bool:
                return any(b is not None and b["symbol"] == symbol for _, b in published[after:])

            # A wrong checksum: the book leaves Redis and comes back from a new snapshot.
            mark = len(published)
            sim.okx.hub.corrupt_checksum("BTC-USDT")
            await wait_for(lambda: keeper.checksum_errors >= 1, what="the checksum mismatch seen")
            await wait_for(lambda: republished("BTC/USDT", mark + 1), what="BTC/USDT resynced")
            key = f"{redis_prefix}:book:sim-okx:BTC/USDT"
            assert (key, None) in published[mark:]  # deleted while out of sync
            # A lost update (its prevSeqId names a seqId never seen): the same.
            mark = len(published)
            sim.okx.hub.skip_seq("BTC-USDT-SWAP")
            await wait_for(lambda: keeper.sequence_breaks >= 1, what="the sequence break seen")
            await wait_for(lambda: republished("BTC/USDT:USDT", mark + 1), what="the swap resynced")
            assert (f"{redis_prefix}:book:sim-okx:BTC/USDT:USDT", None) in published[mark:]
            await wait_for(lambda: streamer.get_metrics()["gaps"] >= 2, what="both gap markers")
            await settle_okx(streamer, sim, redis_prefix)
            metrics = streamer.get_metrics()
        client = redis.Redis.from_url(REDIS_URL)
        gaps = gap_reasons(client, redis_prefix)
        assert ("depth", "BTC/USDT", "book") in gaps and ("depth", "BTC/USDT:USDT", "book") in gaps
        assert keeper.checksum_errors == 1 and keeper.sequence_breaks == 1
        assert metrics["book_resyncs"] == 2 and metrics["reconnects"] == 0
        check_books(published, truth)
        # Trades streamed on through both resyncs.
        check_okx_trades(client, redis_prefix, sim)
        client.close()


async def test_okx_drop_and_stall_reconnect_within_the_backoff_bound_with_gap_markers(
    redis_prefix: str,
) -> None:
    async with okx_sim() as sim:
        sim.okx.hub.ws_rate = 20
        truth = record_okx_books(sim, DEPTH)
        streamer = okx_streamer(sim, redis_prefix, ["trade", "depth"], reconnect_max_backoff_s=1.0)
        published = tap_books(streamer)
        async with streamer:
            assert await streamer.wait_connected()
            client = redis.Redis.from_url(REDIS_URL)
            await wait_for(
                lambda: all(client.xlen(okx_key(redis_prefix, "trade", s)) for s in OKX_SYMBOLS),
                what="every trade stream written",
            )

            def trade_gaps(n: int) -> bool:
                gaps = gap_reasons(client, redis_prefix)
                return all(gaps.count(("trade", s, "reconnect")) >= n for s in OKX_SYMBOLS)

            assert sim.okx.hub.drop_all() >= 1
            await wait_for(
                lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect after the drop"
            )
            await wait_for(lambda: trade_gaps(1), what="a gap marker on every trade stream")
            reconnects = streamer.get_metrics()["reconnects"]
            # A stall: sockets open, pongs answered, no data. The watchdog (1 s) reconnects.
            sim.okx.hub.stall(2.5)
            await wait_for(
                lambda: streamer.get_metrics()["reconnects"] > reconnects, what="a reconnect on the stall"
            )
            await wait_for(lambda: trade_gaps(2), what="a second gap marker on every trade stream")
            await wait_for(
                lambda: all(streamer.order_book(s) for s in OKX_SYMBOLS), what="books back in sync"
            )
            conns = streamer._service.connections
            metrics = streamer.get_metrics()
        gaps = gap_reasons(client, redis_prefix)
        assert all(gaps.count(("depth", s, "reconnect")) >= 2 for s in OKX_SYMBOLS), gaps
        # Every wait was within the bound: reconnect_max_backoff_s, and min_backoff_s (0.2 s) for the
        # first attempt after a connection that had carried data.
        waits = [w for c in conns for w in c.backoffs]
        assert waits and all(delay <= 1.0 for _, delay in waits)
        assert all(delay <= 0.2 for attempt, delay in waits if attempt == 0)
        assert metrics["dropped"] == 0
        check_books(published, truth)
        client.close()


async def test_okx_text_ping_keeps_a_quiet_connection_that_okx_would_drop(redis_prefix: str) -> None:
    # OKX closes a connection after 30 s without traffic; here after 1 s. The feed goes quiet
    # (a stall) for 3 s while the watchdog allows 30: only the client's pings keep it open.
    async with SimulatedExchange(symbols=SPOT, seed=42, gaps={}, okx=OkxSettings(idle_timeout_s=1.0)) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=SPOT,
            redis_client=REDIS_URL,
            channels=["depth"],
            config=okx_stream_config(sim, redis_prefix, watchdog_s=30.0),
        )
        for conn in streamer._service.connections:
            conn.ping_interval_s = 0.3
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: all(streamer.order_book(s) for s in SPOT), what="books in sync")
            sim.okx.hub.stall(3.0)
            await wait_for(lambda: all(c.pings >= 5 for c in streamer._service.connections), what="pings")
            await wait_for(
                lambda: not sim.okx.hub._stalled_until > asyncio.get_running_loop().time(),
                what="the stall's end",
            )
            await wait_for(lambda: all(streamer.order_book(s) for s in SPOT), what="books after the stall")
            assert streamer.get_metrics()["reconnects"] == 0
            assert all(c.connects == 1 for c in streamer._service.connections)


def test_okx_streamer_refuses_to_store_spot_and_swap_candles_as_one_market_type() -> None:
    config = {"exchange": {"id": "okx", "name": "sim-okx"}, "logging": {"file": None}}
    with pytest.raises(UsageError, match="spot symbols or perpetuals, not both"):
        OptimizedWebSocketStreamer(
            symbols=OKX_SYMBOLS,
            redis_client=REDIS_URL,
            channels=["kline_1m"],
            config=config,
            store_candles=True,
        )
    with pytest.raises(UsageError, match="OKX streams no 8h candles"):
        OptimizedWebSocketStreamer(symbols=SPOT, redis_client=REDIS_URL, channels=["kline_8h"], config=config)


async def test_okx_book_asks_again_when_its_snapshot_does_not_come(redis_prefix: str) -> None:
    async with okx_sim() as sim:
        streamer = okx_streamer(sim, redis_prefix, ["depth"])
        keeper = streamer._service.books
        asked: list[str] = []
        resubscribe = keeper._resubscribe

        def first_request_lost(symbol: str) -> None:
            asked.append(symbol)
            if len(asked) > 1:  # the first resubscription never reaches the venue
                resubscribe(symbol)

        keeper._resubscribe = first_request_lost
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: streamer.order_book("SOL/USDT") is not None, what="SOL/USDT in sync")
            sim.okx.hub.corrupt_checksum("SOL-USDT")
            await wait_for(lambda: keeper.checksum_errors == 1, what="the mismatch")
            await wait_for(lambda: streamer.order_book("SOL/USDT") is not None, timeout_s=15, what="resynced")
        assert asked == ["SOL/USDT", "SOL/USDT"]
