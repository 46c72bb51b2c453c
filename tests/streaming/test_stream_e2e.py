"""The streamer against the real simulator and the real Redis: issue 4's acceptance 2-6."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL, PrivateRedis
from tests.support.streaming import CHANNELS, SYMBOLS, entries, sent_by_stream, stream_config, wait_for
from tests.support.streaming import settle_quietly as settle


def key(prefix: str, channel: str, symbol: str) -> str:
    return f"{prefix}:stream:sim-binance:{channel}:{symbol}"


def check_exactly_once(client: redis.Redis, prefix: str, sim: SimulatedExchange, symbols: list[str]) -> int:
    """Every message the simulator sent is in its stream once, in order. Returns the total."""
    total = 0
    for (channel, symbol), sent in sent_by_stream(sim, symbols).items():
        got = entries(client, key(prefix, channel, symbol))
        events = [e for _, e in got]
        assert len(got) == sent["count"], (channel, symbol, len(got), sent)
        assert all(e["symbol"] == symbol and e["channel"] == channel for e in events)
        if channel == "trade":
            ids = [e["id"] for e in events]
            assert ids == list(range(ids[0], ids[0] + len(ids))) and ids[-1] == sent["last_id"]
        elif channel == "depth":
            assert all(
                b["first_update_id"] == a["update_id"] + 1 for a, b in zip(events, events[1:], strict=False)
            )
            assert events[-1]["update_id"] == sent["last_id"]
        elif channel == "bookTicker":
            ids = [e["update_id"] for e in events]
            assert ids == sorted(ids) and ids[-1] == sent["last_id"]
        else:
            assert events[-1]["open_ms"] == sent["last_id"]
        total += len(got)
    return total


def written_everywhere(client: redis.Redis, prefix: str, channels: list[str], symbols: list[str]) -> bool:
    """Whether every (channel, symbol) stream has at least one entry in Redis."""
    return all(client.xlen(key(prefix, c, s)) for c in channels for s in symbols)


async def test_every_sent_message_is_in_its_stream_exactly_once_in_order(
    redis_prefix: str, long_run: bool
) -> None:
    async with SimulatedExchange(symbols=SYMBOLS, seed=42, ws_rate=40) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=SYMBOLS,
            redis_client=REDIS_URL,
            channels=CHANNELS,
            config=stream_config(sim, redis_prefix, watchdog_s=30.0),
        )
        async with streamer:
            assert await streamer.wait_connected()
            await asyncio.sleep(20 if long_run else 4)
            await settle(streamer, sim)
            client = redis.Redis.from_url(REDIS_URL)
            for symbol in SYMBOLS:
                book = msgpack.unpackb(client.get(f"{redis_prefix}:book:sim-binance:{symbol}"))
                assert 0 < len(book["bids"]) <= 20 and book["bids"][0][0] < book["asks"][0][0]
        metrics = streamer.get_metrics()
    # A stopped streamer leaves no book behind that nobody keeps in sync.
    assert client.get(f"{redis_prefix}:book:sim-binance:SOL/USDT") is None
    total = check_exactly_once(client, redis_prefix, sim, SYMBOLS)
    assert len(sent_by_stream(sim, SYMBOLS)) == len(SYMBOLS) * len(CHANNELS)
    assert metrics["written"] == total and metrics["deduplicated"] == 0 and metrics["malformed"] == 0
    assert metrics["reconnects"] == 0 and metrics["dropped"] == 0
    latest = msgpack.unpackb(client.get(f"{redis_prefix}:latest:sim-binance:trade:SOL/USDT"))
    last_trade = entries(client, key(redis_prefix, "trade", "SOL/USDT"))[-1][1]
    assert latest == last_trade
    client.close()


def _gap_streams(client: redis.Redis, prefix: str) -> set[tuple[str, str]]:
    return {
        (f[b"channel"].decode(), f[b"symbol"].decode())
        for _, f in client.xrange(f"{prefix}:gaps:sim-binance")
    }


async def test_drop_then_stall_reconnects_marks_the_gap_and_repairs_closed_klines(redis_prefix: str) -> None:
    symbols = ["SOL/USDT", "BTC/USDT"]
    async with SimulatedExchange(symbols=symbols, seed=7, ws_rate=20) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=symbols,
            redis_client=REDIS_URL,
            channels=["trade", "kline_1m", "depth"],
            config=stream_config(sim, redis_prefix),
        )
        async with streamer:
            assert await streamer.wait_connected()
            probe = redis.Redis.from_url(REDIS_URL)
            # Every stream has had an event before the drop, so each one gets its gap marker.
            channels = ["trade", "kline_1m", "depth"]
            await wait_for(
                lambda: written_everywhere(probe, redis_prefix, channels, symbols),
                what="every stream written",
            )
            sim.ws_drop_all()
            await wait_for(
                lambda: streamer.get_metrics()["reconnects"] >= 1, what="a reconnect after the drop"
            )
            await wait_for(lambda: streamer.connected, what="connected again")
            # The stall hides three minutes of exchange time: candles close that no frame reports.
            sim.clock.advance(180_000)
            sim.ws_stall(2.5)
            await wait_for(
                lambda: streamer.get_metrics()["repaired_klines"] >= 2 * len(symbols), what="repair"
            )
            stall_end_ms = sim.hub.stalled_until_ms
            await wait_for(lambda: sim.clock.now_ms() >= stall_end_ms, what="the stall to end")
            counts = {s: probe.xlen(key(redis_prefix, "trade", s)) for s in symbols}
            await wait_for(
                lambda: all(probe.xlen(key(redis_prefix, "trade", s)) > counts[s] for s in symbols),
                what="trades flowing again after the stall",
            )
            # A stream's gap is marked at its first event after the reconnect; depth's first
            # event waits for the book's REST snapshot, which may come last on a loaded machine.
            expected = {(c, s) for c in channels for s in symbols}
            await wait_for(
                lambda: _gap_streams(probe, redis_prefix) >= expected, what="a gap marker on every stream"
            )
            probe.close()
            await settle(streamer, sim)
        metrics = streamer.get_metrics()
        conn = streamer._service.connections[0]
        now_ms = sim.clock.now_ms()
        truth = {s: sim.klines(s, "1m", now_ms - 600_000, now_ms) for s in symbols}

    assert metrics["reconnects"] >= 2 and metrics["rest_errors"] == 0
    # Every wait before a reconnect stayed within its capped, jittered backoff bound.
    assert conn.backoffs and all(d <= min(30.0, 0.2 * 2**a) for a, d in conn.backoffs)
    client = redis.Redis.from_url(REDIS_URL)
    gaps = [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in client.xrange(f"{redis_prefix}:gaps:sim-binance")
    ]
    assert {(g["channel"], g["symbol"]) for g in gaps} == {
        (c, s) for c in ("trade", "kline_1m", "depth") for s in symbols
    }
    assert all(int(g["from_ms"]) <= int(g["to_ms"]) for g in gaps)
    for symbol in symbols:
        trades = [e["id"] for _, e in entries(client, key(redis_prefix, "trade", symbol))]
        assert len(trades) == len(set(trades)) and trades == sorted(trades)
        klines = [e for _, e in entries(client, key(redis_prefix, "kline_1m", symbol))]
        closed = [k for k in klines if k["closed"]]
        opens = [k["open_ms"] for k in closed]
        assert len(opens) == len(set(opens)), "a closed candle was written twice"
        assert len(opens) >= 3 and opens == list(range(opens[0], opens[-1] + 1, 60_000)), (
            "a closed candle is missing"
        )
        assert any(k.get("repaired") for k in closed)
        by_open = {int(row[0]): row for row in truth[symbol]}
        for k in closed:
            row = by_open[k["open_ms"]]
            assert [k["open"], k["high"], k["low"], k["close"], k["volume"]] == [float(v) for v in row[1:6]]
    client.close()


async def test_local_book_equals_the_simulators_and_a_skipped_id_forces_a_resync(
    redis_prefix: str, long_run: bool
) -> None:
    symbol = "ETH/USDT"
    published: list[dict[str, Any]] = []
    async with SimulatedExchange(symbols=[symbol], seed=3, ws_rate=5) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=[symbol],
            redis_client=REDIS_URL,
            channels=["depth"],
            config=stream_config(sim, redis_prefix, watchdog_s=30.0, book_publish_interval_ms=50),
        )
        client = redis.asyncio.Redis.from_url(REDIS_URL)

        async def watch_books() -> None:
            while True:
                raw = await client.get(f"{redis_prefix}:book:sim-binance:{symbol}")
                if raw is not None:
                    published.append(msgpack.unpackb(raw))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_books())
        async with streamer:
            await wait_for(lambda: streamer.order_book(symbol) is not None, what="the first sync")
            await asyncio.sleep(60 if long_run else 3)
            skipped_from = sim.order_book(symbol)["lastUpdateId"]
            sim.ws_skip_depth_id(symbol, 3)
            await wait_for(lambda: streamer.get_metrics()["book_resyncs"] >= 1, what="a resync")
            await wait_for(lambda: streamer.order_book(symbol) is not None, what="the book back in sync")
            await wait_for(
                lambda: any(b["update_id"] > skipped_from + 3 for b in published),
                what="a book published after the resync",
            )
            sim.clock.freeze()
            want = sim.order_book(symbol)
            await wait_for(
                lambda: (streamer.order_book(symbol) or {}).get("update_id") == want["lastUpdateId"],
                what="the last diff",
            )
            local = streamer.order_book(symbol)
            await wait_for(
                lambda: bool(published) and published[-1]["update_id"] == want["lastUpdateId"],
                what="the last book published",
            )
            final = msgpack.unpackb(await client.get(f"{redis_prefix}:book:sim-binance:{symbol}"))
        watcher.cancel()
        await client.aclose()

    assert local is not None
    assert local["bids"] == want["bids"] and local["asks"] == want["asks"]
    assert final["bids"] == want["bids"][:20] and final["asks"] == want["asks"][:20]
    # No book built across the skipped ids was ever published: after the skip, the only books
    # are those rebuilt from a snapshot taken after it.
    after = [b for b in published if b["update_id"] > skipped_from]
    assert after and all(b["update_id"] > skipped_from + 3 for b in after)
    for book in published:
        bids, asks = [p for p, _ in book["bids"]], [p for p, _ in book["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
    assert published[-1]["bids"] == want["bids"][:20] and published[-1]["asks"] == want["asks"][:20]


async def test_redis_paused_buffers_within_bound_counts_loss_and_writes_no_duplicate(
    redis_prefix: str, private_redis: PrivateRedis
) -> None:
    symbol = "SOL/USDT"
    buffer_max = 300
    depths: list[int] = []
    async with SimulatedExchange(symbols=[symbol], seed=11, ws_rate=100) as sim:
        cfg = stream_config(
            sim, redis_prefix, redis_url=private_redis.url, buffer_max=buffer_max, watchdog_s=30.0
        )
        cfg["redis"]["socket_timeout_s"] = 0.5
        cfg["redis"]["connect_timeout_s"] = 0.5
        streamer = OptimizedWebSocketStreamer(
            symbols=[symbol], redis_client=private_redis.url, channels=["trade", "bookTicker"], config=cfg
        )
        async with streamer:
            assert await streamer.wait_connected()
            probe = redis.Redis.from_url(private_redis.url)
            await wait_for(
                lambda: written_everywhere(probe, redis_prefix, ["trade", "bookTicker"], [symbol]),
                what="both streams written before the pause",
            )
            probe.close()
            private_redis.pause()
            try:
                for _ in range(50):
                    await asyncio.sleep(0.1)
                    depths.append(streamer.get_metrics()["queue_depth"])
                paused = streamer.get_metrics()
            finally:
                private_redis.resume()
            await wait_for(lambda: streamer.get_metrics()["queue_depth"] < 50, what="the buffer to drain")
            # settle() waits until the queue is empty and the counters stand still.
            await settle(streamer, sim)
        metrics = streamer.get_metrics()
        sent = sent_by_stream(sim, [symbol])

    # The writer gave up on the stopped server after its timeouts instead of hanging.
    assert paused["redis_errors"] >= 1 and paused["written"] < sum(s["count"] for s in sent.values())
    assert max(depths) <= buffer_max and max(depths) > 0
    assert metrics["dropped"] > 0
    client = redis.Redis.from_url(private_redis.url)
    stored = 0
    for (channel, sym), info in sent.items():
        got = entries(client, key(redis_prefix, channel, sym))
        ids = [i for i, _ in got]
        assert len(ids) == len(set(ids))
        if channel == "trade":
            trade_ids = [e["id"] for _, e in got]
            assert trade_ids == sorted(set(trade_ids)) and trade_ids[-1] == info["last_id"]
        stored += len(got)
    # Nothing lost silently: what is not in Redis was counted as dropped, or as unconfirmed when
    # it was dropped after a write whose reply never came (Redis may have applied it).
    total_sent = sum(s["count"] for s in sent.values())
    assert stored + metrics["dropped"] <= total_sent <= stored + metrics["dropped"] + metrics["unconfirmed"]
    client.close()


async def test_malformed_frames_are_counted_and_skipped_and_the_connection_stays(redis_prefix: str) -> None:
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=5, ws_rate=20) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=["SOL/USDT"],
            redis_client=REDIS_URL,
            channels=["trade"],
            config=stream_config(sim, redis_prefix, watchdog_s=30.0),
        )
        async with streamer:
            assert await streamer.wait_connected()
            probe = redis.Redis.from_url(REDIS_URL)
            await wait_for(
                lambda: written_everywhere(probe, redis_prefix, ["trade"], ["SOL/USDT"]),
                what="a trade written",
            )
            probe.close()
            for n in range(1, 4):
                sim.ws_malformed()
                await wait_for(
                    lambda n=n: streamer.get_metrics()["malformed"] >= n, what=f"malformed frame {n}"
                )
            await settle(streamer, sim)
        metrics = streamer.get_metrics()
    assert metrics["malformed"] == 3 and metrics["reconnects"] == 0
    client = redis.Redis.from_url(REDIS_URL)
    check_exactly_once(client, redis_prefix, sim, ["SOL/USDT"])
    client.close()


@pytest.mark.slow
async def test_one_minute_of_five_symbols_and_four_channels(redis_prefix: str) -> None:
    async with SimulatedExchange(symbols=SYMBOLS, seed=42, ws_rate=200) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=SYMBOLS,
            redis_client=REDIS_URL,
            channels=CHANNELS,
            config=stream_config(sim, redis_prefix),
        )
        async with streamer:
            assert await streamer.wait_connected()
            await asyncio.sleep(60)
            await settle(streamer, sim)
    client = redis.Redis.from_url(REDIS_URL)
    check_exactly_once(client, redis_prefix, sim, SYMBOLS)
    client.close()


async def test_streams_split_across_connections_and_subscribed_beyond_the_url(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import data_collector.optimized_websocket as facade
    from data_collector.streaming.connection import ConnectionSettings

    symbols = SYMBOLS[:3]
    channels = ["trade", "bookTicker", "aggTrade"]
    # A URL that holds one stream, one stream per SUBSCRIBE: eight control messages on one
    # connection, which the simulator (like Binance) drops past 5 a second.
    monkeypatch.setattr(
        facade,
        "ConnectionSettings",
        functools.partial(ConnectionSettings, url_max_chars=60, subscribe_chunk=1),
    )
    async with SimulatedExchange(symbols=symbols, seed=8, ws_rate=20, ws_max_incoming_per_s=5) as sim:
        split = OptimizedWebSocketStreamer(
            symbols=symbols,
            redis_client=REDIS_URL,
            channels=channels,
            config=stream_config(sim, redis_prefix, max_streams_per_connection=4),
        )
        connections = split._service.connections
        assert len(connections) == 3 and all(len(c.streams) == 3 for c in connections)
        await split.astop()

        streamer = OptimizedWebSocketStreamer(
            symbols=symbols,
            redis_client=REDIS_URL,
            channels=channels,
            config=stream_config(sim, redis_prefix, watchdog_s=30.0),
        )
        (conn,) = streamer._service.connections
        assert conn.url.count("@") == 1 and len(conn.streams) == 9
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: len(sim.ws_sent()) == 9, what="every stream subscribed")
            probe = redis.Redis.from_url(REDIS_URL)
            await wait_for(
                lambda: written_everywhere(probe, redis_prefix, ["trade", "bookTicker"], symbols),
                what="every trade and bookTicker stream written",
            )
            probe.close()
            await settle(streamer, sim)
        metrics = streamer.get_metrics()
        assert sim.hub.dropped_for_rate == 0
    assert metrics["malformed"] == 0 and metrics["reconnects"] == 0
    client = redis.Redis.from_url(REDIS_URL)
    for (channel, symbol), sent in sent_by_stream(sim, symbols).items():
        got = entries(client, key(redis_prefix, channel, symbol))
        if channel == "aggTrade":
            ids = [e["id"] for _, e in got]
            assert ids == sorted(set(ids)) and (not ids or ids[-1] == sent["last_id"])
        assert len(got) == sent["count"], (channel, symbol)
    client.close()


async def test_pings_are_answered_and_server_shutdown_is_survived(redis_prefix: str) -> None:
    # The simulator pings every 0.3 s (aiohttp closes a client that does not pong) and ends every
    # connection after 1.5 s with serverShutdown, as Binance does after 24 h.
    async with SimulatedExchange(
        symbols=["SOL/USDT"], seed=6, ws_rate=20, ws_ping_s=0.3, ws_max_lifetime_s=1.5
    ) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=["SOL/USDT"],
            redis_client=REDIS_URL,
            channels=["trade", "depth"],
            config=stream_config(sim, redis_prefix, watchdog_s=30.0),
        )
        async with streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: streamer.get_metrics()["reconnects"] >= 2, what="two planned drops")
            sim.ws_shutdown_all()
            await wait_for(
                lambda: streamer.get_metrics()["reconnects"] >= 3, what="a reconnect after shutdown"
            )
            await wait_for(lambda: streamer.connected, what="connected again")
            probe = redis.Redis.from_url(REDIS_URL)
            trade_key = key(redis_prefix, "trade", "SOL/USDT")
            before = probe.xlen(trade_key)
            await wait_for(lambda: probe.xlen(trade_key) > before, what="a trade after the reconnect")
            probe.close()
            await settle(streamer, sim)
        metrics = streamer.get_metrics()
    # One marker per stream per reconnect, except that a connection ended before a stream's first
    # event leaves its gap open: the next connection's first event closes it (one marker).
    assert metrics["malformed"] == 0 and metrics["gaps"] >= 4
    client = redis.Redis.from_url(REDIS_URL)
    trades = [e["id"] for _, e in entries(client, key(redis_prefix, "trade", "SOL/USDT"))]
    assert (
        trades == sorted(set(trades))
        and len(trades) == sent_by_stream(sim, ["SOL/USDT"])[("trade", "SOL/USDT")]["count"]
    )
    client.close()
