"""Issue 12, acceptance 6: the streamer on the simulator's USDⓈ-M perpetuals, into the real Redis.

The book is compared with the simulator's own book at checkpoints (the clock frozen, so both
sides stand still), through a lost depth event (``skip_depth_id``) that must force a resync and a
gap marker; liquidations and mark prices are compared with what the simulator sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import orjson
import pytest
import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.fstreams import mark_price_event
from data_collector.streaming.reader import MarketDataReader
from tests.support.services import REDIS_URL
from tests.support.streaming import entries, settle_quietly, stream_config, wait_for

VENUE = "sim-binanceusdm"
PERPS = ["BTC/USDT:USDT", "ETH/USDT:USDT"]


def perp_book(sim: SimulatedExchange, symbol: str) -> dict[str, Any]:
    """The simulator's futures book now, as floats (what ``/fapi/v1/depth`` serves)."""
    book = sim.order_book(symbol)
    return {"update_id": book["lastUpdateId"], "bids": book["bids"], "asks": book["asks"]}


def _key(prefix: str, kind: str, *parts: str) -> str:
    return ":".join([prefix, kind, VENUE, *parts])


async def _checkpoint(
    sim: SimulatedExchange, streamer: OptimizedWebSocketStreamer, symbol: str, published: list[dict[str, Any]]
) -> None:
    """Stop the simulator's clock; the local and the published book must equal its book."""
    sim.clock.freeze()
    try:
        want = perp_book(sim, symbol)
        await wait_for(
            lambda: (streamer.order_book(symbol) or {}).get("update_id") == want["update_id"],
            what=f"the local book at update {want['update_id']}",
        )
        local = streamer.order_book(symbol)
        assert local is not None
        assert local["bids"] == want["bids"] and local["asks"] == want["asks"]
        await wait_for(
            lambda: bool(published) and published[-1]["update_id"] == want["update_id"],
            what=f"the book published at update {want['update_id']}",
        )
        assert published[-1]["bids"] == want["bids"][:20] and published[-1]["asks"] == want["asks"][:20]
    finally:
        sim.clock.unfreeze()


async def _book_through_a_lost_event(prefix: str, seconds: float) -> None:
    symbol = "BTC/USDT:USDT"
    published: list[dict[str, Any]] = []
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=[symbol], seed=5, ws_rate=5) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=[symbol],
            redis_client=REDIS_URL,
            channels=["depth"],
            config=stream_config(sim, prefix, futures=True, watchdog_s=30.0, book_publish_interval_ms=50),
        )
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        book_key = _key(prefix, "book", symbol)
        market = sim.usdm.market(symbol)
        sim_book = sim.usdm.books[market.symbol]
        pd, qd = market.price_decimals, market.qty_decimals
        #: update id -> the simulator's top 20 then, read as it steps (nothing advanced here).
        truth: dict[int, tuple[list[list[float]], list[list[float]]]] = {}

        async def watch_books() -> None:
            while True:
                if sim_book.update_id not in truth and sim_book.bids:
                    bids, asks = sim_book.top(20)
                    truth[sim_book.update_id] = (
                        [[p / 10**pd, q / 10**qd] for p, q in bids],
                        [[p / 10**pd, q / 10**qd] for p, q in asks],
                    )
                raw = await client.get(book_key)
                if raw is not None:
                    book = msgpack.unpackb(raw)
                    if not published or published[-1]["update_id"] != book["update_id"]:
                        published.append(book)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_books())
        try:
            async with streamer:
                await wait_for(lambda: streamer.order_book(symbol) is not None, what="the first sync")
                loop = asyncio.get_running_loop()
                half = loop.time() + seconds / 2
                while loop.time() < half:
                    await asyncio.sleep(1.0)
                    await _checkpoint(sim, streamer, symbol, published)
                skipped_from = perp_book(sim, symbol)["update_id"]
                # An event lost in transit: its ids are skipped and its level changes never sent.
                sim.ws_skip_depth_id(symbol, 3, lose_content=True)
                await wait_for(lambda: streamer.get_metrics()["book_resyncs"] >= 1, what="a resync")
                await wait_for(lambda: streamer.order_book(symbol) is not None, what="the book back in sync")
                end = loop.time() + seconds / 2
                while True:
                    await _checkpoint(sim, streamer, symbol, published)
                    if loop.time() >= end:
                        break
                    await asyncio.sleep(1.0)
                metrics = streamer.get_metrics()
        finally:
            watcher.cancel()
            await client.aclose()
        async with MarketDataReader(REDIS_URL, prefix=prefix, exchange=VENUE) as reader:
            gaps = await reader.gaps()
            diffs = await reader.range(symbol, "depth", 0, 2**62)

    assert metrics["book_resyncs"] == 1 and metrics["reconnects"] == 0
    # The lost event is marked on the depth stream, between the diffs on either side of it.
    assert [(g["reason"], g["channel"], g["symbol"]) for g in gaps] == [("book", "depth", symbol)]
    assert gaps[0]["stream"] == _key(prefix, "stream", "depth", symbol)
    broken = [(a, b) for a, b in zip(diffs, diffs[1:], strict=False) if b["prev_update_id"] != a["update_id"]]
    assert len(broken) == 1
    before, after = broken[0]
    assert before["update_id"] <= skipped_from + 3 < after["first_update_id"]
    assert gaps[0]["from_ms"] == before["event_ms"] and gaps[0]["to_ms"] == after["event_ms"]
    # No wrong book was ever published, before the lost event or after it: each one equals the
    # simulator's book at its update id (nearly all ids are seen stepping; the rest cannot be told).
    checked = [b for b in published if b["update_id"] in truth]
    assert len(checked) >= 0.8 * len(published) and any(b["update_id"] > after["update_id"] for b in checked)
    wrong = [b["update_id"] for b in checked if (b["bids"], b["asks"]) != truth[b["update_id"]]]
    assert not wrong, f"{len(wrong)} of {len(checked)} published books differ from the simulator's"
    for book in published:
        bids, asks = [p for p, _ in book["bids"]], [p for p, _ in book["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
        assert book["symbol"] == symbol and book["exchange"] == VENUE


async def test_perpetual_book_equals_the_simulators_through_a_lost_event(redis_prefix: str) -> None:
    await _book_through_a_lost_event(redis_prefix, 5.0)


@pytest.mark.slow
async def test_perpetual_book_for_60_s_through_a_lost_event(redis_prefix: str) -> None:
    await _book_through_a_lost_event(redis_prefix, 60.0)


def _liquidations_sent(sim: SimulatedExchange) -> int:
    sent = sim.stats()["futures"]["ws_sent"]
    return sum(v["count"] for k, v in sent.items() if k.endswith("@forceOrder"))


async def _liquidations_and_marks(prefix: str, seconds: float) -> None:
    channels = ["markPrice@1s", "markPrice", "forceOrder", "aggTrade", "bookTicker", "kline_1m"]
    async with SimulatedExchange(symbols=["BTC/USDT"], perpetuals=PERPS, seed=11, ws_rate=10) as sim:
        funding: list[dict[str, Any]] = []
        streamer = OptimizedWebSocketStreamer(
            symbols=PERPS,
            redis_client=REDIS_URL,
            channels=channels,
            config=stream_config(sim, prefix, futures=True, watchdog_s=30.0),
            on_mark_price=funding.append,
        )
        async with streamer:
            assert await streamer.wait_connected()
            await asyncio.sleep(seconds)
            # Liquidations come about one second in four: on a loaded machine a short run may
            # see none, so run on until the simulator has sent two.
            await wait_for(
                lambda: _liquidations_sent(sim) >= 2, timeout_s=120.0, what="two liquidations sent"
            )
            await settle_quietly(streamer, sim)
        sent = sim.stats()["futures"]["ws_sent"]
        metrics = streamer.get_metrics()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        liquidations = 0
        for symbol in PERPS:
            perp = sim.usdm.market(symbol)
            stream = symbol.partition("/")[0].lower() + "usdt"
            for channel in ("markPrice@1s", "markPrice"):
                got = [e for _, e in entries(client, _key(prefix, "stream", channel, symbol))]
                assert len(got) == sent[f"{stream}@{channel}"]["count"] > 0, (symbol, channel)
                times = [e["event_ms"] for e in got]
                assert times == sorted(set(times)), "out of order or repeated"
                for event in got:  # each equals what the simulator sends at that moment
                    raw = mark_price_event(perp, event["event_ms"])
                    assert raw is not None
                    want = orjson.loads(raw)
                    assert [event["mark_price"], event["index_price"], event["settle_price"]] == [
                        float(want["p"]),
                        float(want["i"]),
                        float(want["P"]),
                    ]
                    assert event["funding_rate"] == float(want["r"]) and event["next_funding_ms"] == want["T"]
                    assert event["symbol"] == symbol and event["exchange"] == VENUE
            got = [e for _, e in entries(client, _key(prefix, "stream", "forceOrder", symbol))]
            assert len(got) == sent.get(f"{stream}@forceOrder", {}).get("count", 0)
            if got:
                # Exactly the simulator's liquidations between the first and the last received.
                first_s, last_s = got[0]["trade_ms"] // 1000, got[-1]["trade_ms"] // 1000
                want_liq = [perp.liquidation(s) for s in range(first_s, last_s + 1)]
                expect = [(t, "sell" if sell else "buy") for t, sell, _, _ in filter(None, want_liq)]
                assert [(e["trade_ms"], e["side"]) for e in got] == expect
                pd, qd = perp.price_decimals, perp.qty_decimals
                prices = [(p / 10**pd, q / 10**qd) for _, _, p, q in filter(None, want_liq)]
                assert [(e["price"], e["amount"]) for e in got] == prices
            liquidations += len(got)
    finally:
        client.close()
    assert liquidations > 0, "no liquidation in the run: make it longer"
    assert metrics["deduplicated"] == 0 and metrics["malformed"] == 0 and metrics["dropped"] == 0
    # The funding hook saw every mark price the streams wrote, in order per stream.
    marks = sum(sent[f"{s.partition('/')[0].lower()}usdt@{c}"]["count"] for s in PERPS for c in channels[:2])
    assert len(funding) == marks and all("funding_rate" in e for e in funding)


async def test_liquidations_and_mark_prices_land_in_order_without_duplicates(redis_prefix: str) -> None:
    await _liquidations_and_marks(redis_prefix, 5.0)


@pytest.mark.slow
async def test_liquidations_and_mark_prices_for_60_s(redis_prefix: str) -> None:
    await _liquidations_and_marks(redis_prefix, 60.0)
