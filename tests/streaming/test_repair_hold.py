"""Issue 15, repair mode ``hold`` (``streaming.repair_mode: hold``, option (a)): a trade stream's
live tail waits while a gap is fetched back, so the repaired trades land in the live stream itself,
with the entry ids they would have had, and the companion ``@repair`` stream stays empty; past the
hold's bound the gap falls back to the companion stream and nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
import redis

from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.support.gapfree import fast_clock
from tests.support.services import REDIS_URL
from tests.support.streaming import (
    entries,
    gap_entries,
    sent_by_stream,
    settle_quietly,
    stream_config,
    wait_for,
)

SYMBOLS = ["BTC/USDT", "SOL/USDT"]
VENUE = "sim-binance"


def _open_and_repaired(client: redis.Redis, prefix: str) -> tuple[int, int]:
    markers = gap_entries(client, prefix, VENUE)
    opened = sum(1 for m in markers if m.get("first_seq") is not None and m["reason"] != "repaired")
    return opened, sum(1 for m in markers if m["reason"] == "repaired")


def _streamer(sim: SimulatedExchange, prefix: str, symbols: list[str], **streaming: Any) -> Any:
    return OptimizedWebSocketStreamer(
        symbols=symbols,
        redis_client=REDIS_URL,
        channels=["trade"],
        config=stream_config(sim, prefix, repair_mode="hold", **streaming),
    )


async def _one_gap_repaired(
    client: redis.Redis, prefix: str, streamer: Any, sim: SimulatedExchange
) -> dict[str, Any]:
    """Wait for the one gap opened to be repaired and everything written; the metrics then."""
    await wait_for(
        lambda: _open_and_repaired(client, prefix) == (1, 1), timeout_s=30, what="the gap repaired"
    )
    await settle_quietly(streamer, sim)
    metrics: dict[str, Any] = streamer.get_metrics()
    return metrics


def _contiguous(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids)))


async def test_hold_mode_repairs_skipped_ids_and_a_drop_into_the_live_stream(redis_prefix: str) -> None:
    """Skipped ids and a drop: every gap is repaired into the live stream itself (no companion
    entry), which then holds every trade once, in id order, as the tape has it; a tail running
    through the faults yields them all without waiting out its repair timeout."""
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{redis_prefix}:stream:{VENUE}:trade:{{}}"
    async with SimulatedExchange(symbols=SYMBOLS, seed=36, ws_rate=20) as sim:
        # A generous timeout: on a loaded machine the hold must end by its repair, not by time.
        async with (
            _streamer(sim, redis_prefix, SYMBOLS, repair_hold_max_s=60.0) as streamer,
            MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader,
        ):
            assert await streamer.wait_connected()

            def stored(symbol: str) -> int:
                return int(client.xlen(key.format(symbol)))

            await wait_for(lambda: all(stored(s) for s in SYMBOLS), what="every stream written")
            tailed: list[dict[str, Any]] = []

            async def tail() -> None:
                # A repair wait far past the test's: the tail must see the repair, not time out.
                async for event in reader.tail(
                    SYMBOLS[1], "trade", last_id="0", block_ms=100, repair_wait_ms=600_000
                ):
                    tailed.append(event)

            tail_task = asyncio.create_task(tail())
            for symbol in SYMBOLS:
                sim.ws_faults.skip_trade_id(symbol, 3)
            await wait_for(lambda: _open_and_repaired(client, redis_prefix)[0] >= 2, what="sequence gaps")
            reconnects, counts = streamer.get_metrics()["reconnects"], {s: stored(s) for s in SYMBOLS}
            sim.ws_drop_all()

            def reconnected_and_repaired() -> bool:
                opened, repaired = _open_and_repaired(client, redis_prefix)
                flowing = all(stored(s) > counts[s] + 20 for s in SYMBOLS)
                return (
                    streamer.get_metrics()["reconnects"] > reconnects
                    and flowing
                    and opened >= 4
                    and repaired == opened
                )

            await wait_for(reconnected_and_repaired, timeout_s=60, what="a reconnect, and every gap repaired")
            await settle_quietly(streamer, sim)
            live = {s: [e for _, e in entries(client, key.format(s))] for s in SYMBOLS}
            await wait_for(
                lambda: len(tailed) >= len(live[SYMBOLS[1]]), timeout_s=30, what="the tail caught up"
            )
            tail_task.cancel()
            await asyncio.gather(tail_task, return_exceptions=True)
            metrics = streamer.get_metrics()
            merged = {s: await reader.range(s, "trade", 0, 2**62) for s in SYMBOLS}

    assert metrics["repair_holds"] >= 4 and metrics["repair_hold_fallbacks"] == 0, metrics
    markers = gap_entries(client, redis_prefix, VENUE)
    repaired = [m for m in markers if m["reason"] == "repaired"]
    assert all(int(m["repaired"]) == int(m["count"]) for m in repaired), repaired
    for symbol, got in live.items():
        assert client.xlen(f"{redis_prefix}:stream:{VENUE}:trade@repair:{symbol}") == 0, "a companion entry"
        ids = [e["id"] for e in got]
        assert _contiguous(ids), f"{symbol}: the live stream misses, repeats or reorders a trade"
        assert all(e["trade_ms"] == sim.hub.tape.time_of(e["id"]) for e in got), symbol
        assert sum(1 for e in got if e.get("repaired")) >= 3 + 1
        assert [e["id"] for e in merged[symbol]] == ids, "the reader's range differs from the live stream"
    assert [e["id"] for e in tailed] == [e["id"] for e in live[SYMBOLS[1]]], "the tail missed or reordered"
    client.close()


async def test_a_hold_past_its_bound_falls_back_to_the_companion_stream(redis_prefix: str) -> None:
    """REST refuses the repair while the live stream is held: past ``repair_hold_max`` held
    entries the hold lets them go (counted, no trade held back for good), and once REST answers
    the gap is repaired into the companion stream; the reader returns every trade once, in order."""
    client = redis.Redis.from_url(REDIS_URL)
    symbol = "SOL/USDT"
    live_key = f"{redis_prefix}:stream:{VENUE}:trade:{symbol}"
    async with SimulatedExchange(symbols=SYMBOLS, seed=37, ws_rate=20) as sim:
        async with _streamer(
            sim, redis_prefix, [symbol], repair_hold_max=5, repair_hold_max_s=600.0
        ) as streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: client.xlen(live_key) > 0, what="trades")
            sim.set_faults(error_rate=1.0, endpoint="historicalTrades")  # the repair cannot finish
            sim.ws_faults.skip_trade_id(symbol, 3)
            await wait_for(lambda: streamer.get_metrics()["repair_holds"] >= 1, what="a hold")
            await wait_for(
                lambda: streamer.get_metrics()["repair_hold_fallbacks"] >= 1,
                timeout_s=30,
                what="the fallback",
            )
            before = client.xlen(live_key)
            await wait_for(lambda: client.xlen(live_key) > before + 5, what="live entries written again")
            sim.set_faults(error_rate=0.0, endpoint="historicalTrades")
            metrics = await _one_gap_repaired(client, redis_prefix, streamer, sim)
    live = [e for _, e in entries(client, live_key)]
    companion = [e for _, e in entries(client, f"{redis_prefix}:stream:{VENUE}:trade@repair:{symbol}")]
    assert metrics["repair_holds"] == 1 and metrics["repair_hold_fallbacks"] == 1, metrics
    assert not any(e.get("repaired") for e in live) and len(companion) == 3, (live, companion)
    async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader:
        ids = [e["id"] for e in await reader.range(symbol, "trade", 0, 2**62)]
    assert _contiguous(ids), "a trade is missing or twice"
    client.close()


async def _rest_truth(sim: SimulatedExchange, symbol: str, first: int, last: int) -> list[dict[str, Any]]:
    """The ``trade`` tape's ids ``first..last`` as the simulator's REST serves them
    (``historicalTrades?fromId=``, 1,000 a page)."""
    url = f"{sim.rest_url}/api/v3/historicalTrades"
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        while not rows or rows[-1]["id"] < last:
            cursor = rows[-1]["id"] + 1 if rows else first
            query = {"symbol": symbol.replace("/", ""), "fromId": cursor, "limit": 1000}
            async with session.get(url, params=query) as resp:
                page = await resp.json()
            assert page, f"REST has no trade {cursor}"
            rows += page
    return [r for r in rows if r["id"] <= last]


@pytest.mark.parametrize("second_page_fails", [False, True], ids=["answered", "fails-once"])
async def test_a_hold_past_its_time_falls_back_to_the_companion_stream(
    redis_prefix: str, caplog: Any, second_page_fails: bool
) -> None:
    """A 1,100-id gap takes two REST pages; REST answers the first (repaired into the live stream)
    and holds the second: past ``repair_hold_max_s`` the hold gives up (counted, warned), the live
    entries it held are written after the first page, and once REST answers the second page goes
    to the companion stream. The reader returns every trade REST serves once, in id order.

    ``fails-once``: the held request then fails (as a slow REST request does, by the client's
    timeout, after the hold gave up on it): the retry goes on from the second page, so the first,
    already in the live stream, is not written to the companion stream too."""
    max_s, gap = 3.0, 1100
    client = redis.Redis.from_url(REDIS_URL)
    symbol = "SOL/USDT"
    live_key = f"{redis_prefix}:stream:{VENUE}:trade:{symbol}"
    companion_key = f"{redis_prefix}:stream:{VENUE}:trade@repair:{symbol}"
    caplog.set_level(logging.WARNING, logger="data_collector.streaming.repair_hold")
    # 800 trades a second a symbol (40 × a 20× fast clock): the gap opens in under 1.5 s.
    async with SimulatedExchange(symbols=SYMBOLS, seed=38, ws_rate=40) as sim, fast_clock(sim, 20):
        # The entry bound out of reach (3 s hold 2,400 entries): only the time bound can end it.
        async with _streamer(
            sim, redis_prefix, SYMBOLS, repair_hold_max=100_000, repair_hold_max_s=max_s
        ) as streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: client.xlen(live_key) > 0, what="trades")
            # The next REST request (the repair's first page) is answered, every later one held.
            sim.hold_rest(after=sim.stats()["requests"] + 1)
            sim.ws_faults.skip_trade_id(symbol, gap)
            await wait_for(lambda: streamer.get_metrics()["repair_holds"] >= 1, what="a hold")
            await wait_for(
                lambda: streamer.get_metrics()["repair_hold_fallbacks"] >= 1,
                timeout_s=max_s + 20,
                what="the hold's time running out",
            )
            # The hold ended by time alone: the second page is held unanswered (sent, or about to
            # be on a slow machine) until release_rest.
            await wait_for(lambda: sim.rest_held == 1, what="the second page held")
            before = client.xlen(live_key)
            await wait_for(lambda: client.xlen(live_key) > before + 20, what="live entries written again")
            if second_page_fails:
                errors = sim.stats()["faults"]["error"]
                sim.set_faults(error_rate=1.0, endpoint="historicalTrades")
                sim.release_rest()
                await wait_for(lambda: sim.stats()["faults"]["error"] > errors, what="the page refused")
                sim.set_faults(error_rate=0.0, endpoint="historicalTrades")
            else:
                sim.release_rest()
            metrics = await _one_gap_repaired(client, redis_prefix, streamer, sim)
        last_sent = sent_by_stream(sim, SYMBOLS)[("trade", symbol)]["last_id"]
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader:
            merged = await reader.range(symbol, "trade", 0, 2**62)
        truth = await _rest_truth(sim, symbol, merged[0]["id"], last_sent)

    assert metrics["repair_holds"] == 1 and metrics["repair_hold_fallbacks"] == 1, metrics
    warned = [r.getMessage() for r in caplog.records if "repair not done in 3 s" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    (opened,) = [m for m in gap_entries(client, redis_prefix, VENUE) if m["reason"] == "sequence"]
    first_seq, last_seq = int(opened["first_seq"]), int(opened["last_seq"])
    assert last_seq - first_seq + 1 == gap
    (repaired,) = [m for m in gap_entries(client, redis_prefix, VENUE) if m["reason"] == "repaired"]
    assert int(repaired["repaired"]) == gap, repaired
    live = [e for _, e in entries(client, live_key)]
    companion = [e["id"] for _, e in entries(client, companion_key)]
    # The first page went into the live stream while it was held, the rest of the gap to the
    # companion stream after the fallback.
    assert [e["id"] for e in live if e.get("repaired")] == list(range(first_seq, first_seq + 1000))
    assert companion == list(range(first_seq + 1000, last_seq + 1))
    # The held entries were written, from the one that revealed the gap on, none lost.
    after = [e["id"] for e in live if e["id"] > last_seq]
    assert after and after[0] == last_seq + 1 and _contiguous(after), "a held entry is missing"
    assert not any(e.get("repaired") for e in live if e["id"] > last_seq)
    # Every trade REST serves, once, in id order (0 lost, 0 duplicated).
    assert [e["id"] for e in merged] == [r["id"] for r in truth]
    assert [e["trade_ms"] for e in merged] == [r["time"] for r in truth]
    client.close()
