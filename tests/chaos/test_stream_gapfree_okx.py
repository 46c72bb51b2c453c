"""Issue 15's fault test, OKX part: WS drops ×5, a stall past the watchdog (20 s with --long) and
skipped trade ids, while the market trades on (the simulator's clock runs 10× fast; its OKX
``trades`` come from the tape REST serves too, produced whether or not anyone listens).

After the flow stops: the trade streams (live + repaired over ``history-trades``, read with
``MarketDataReader.range``) hold every trade of the tape from the first one stored, exactly once,
in id order, with REST's content; closed 1-minute candles are all there once (lost ones repaired
over ``history-candles``); ``bbo-tbt`` and ``tickers`` carry a gap marker over every hole.
Not covered here: SIGKILL of the streamer, the private Redis stopped or restarted.
"""

from __future__ import annotations

import asyncio

import redis

from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.chaos.report import ScenarioReport
from tests.support.gapfree import (
    all_repaired,
    drop_and_reconnect,
    fast_clock,
    okx_streamer_on,
    unmarked_holes,
)
from tests.support.services import REDIS_URL
from tests.support.streaming import entries, gap_entries, settle_quietly, wait_for

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"]
CHANNELS = ["trade", "kline_1m", "bookTicker", "ticker"]
VENUE = "sim-okx"
#: Simulated ms per wall ms.
SPEED = 10
#: A hole in a pushed-every-tick channel: five ticks of the simulator (100 ms wall each).
HOLE_MS = 5 * 100 * SPEED


async def test_okx_trades_gap_free_through_drops_stalls_and_skips(
    redis_prefix: str, scenario_report: ScenarioReport, long_run: bool
) -> None:
    report = scenario_report
    client = redis.Redis.from_url(REDIS_URL)
    stall_s = 20.0 if long_run else 3.0
    # Trades a simulated second per instrument: ×10 fast, 5 instruments -> 2,000 msg/s (CI: 500).
    rate = 40 if long_run else 10
    async with SimulatedExchange(symbols=SYMBOLS, seed=15, okx=OkxSettings()) as sim:
        hub = sim.okx.hub
        venue = sim.okx.venue
        hub.ws_rate = rate
        async with okx_streamer_on(sim, redis_prefix, SYMBOLS, CHANNELS) as streamer:
            assert await streamer.wait_connected()
            start_ms = sim.clock.now_ms()

            def key(channel: str, symbol: str) -> str:
                return f"{redis_prefix}:stream:{VENUE}:{channel}:{symbol}"

            async with fast_clock(sim, SPEED):
                await wait_for(
                    lambda: all(client.xlen(key(c, s)) for c in ("trade", "bookTicker") for s in SYMBOLS),
                    timeout_s=60,
                    what="every trade and bbo stream written",
                )
                for i in range(5):
                    if i in (1, 3):
                        hub.skip_trade_id(venue.instrument(SYMBOLS[i]).inst_id, 2)
                        report.fault("skip_id")
                        await asyncio.sleep(0.5)
                    if i == 2:  # drop just before a minute closes: its candle is missed, then repaired
                        await wait_for(lambda: sim.clock.now_ms() % 60_000 > 58_500, 10, "a minute's end")
                    await drop_and_reconnect(streamer, hub.drop_all, report, i + 1)
                hub.stall(stall_s)  # wall seconds: frames are held; the watchdog reconnects meanwhile
                report.fault("ws_stall")
                loop = asyncio.get_running_loop()
                stall_end = loop.time() + stall_s
                await wait_for(
                    lambda: loop.time() >= stall_end, timeout_s=stall_s + 5, what="the stall's end"
                )
                counts = {s: client.xlen(key("trade", s)) for s in SYMBOLS}
                await wait_for(
                    lambda: all(client.xlen(key("trade", s)) > counts[s] for s in SYMBOLS),
                    timeout_s=90,
                    what="trades flowing again after the stall",
                )
                # At least one whole minute streamed (its candle closed) before the flow stops.
                full_minute_end = start_ms - start_ms % 60_000 + 120_000
                await wait_for(lambda: sim.clock.now_ms() > full_minute_end + 2000, 60, "a whole minute")
            sim.clock.freeze()  # the flow stops
            await wait_for(
                lambda: all_repaired(client, redis_prefix, VENUE, "trade"),
                timeout_s=180,
                what="every trade gap repaired",
            )
            await settle_quietly(streamer, sim)
            metrics = streamer.get_metrics()
        end_ms = sim.clock.now_ms()

        markers = gap_entries(client, redis_prefix, VENUE)
        expected = found = lost = dup = wrong = kline_missing = kline_dup = holes = 0
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader:
            for symbol in SYMBOLS:
                got = await reader.range(symbol, "trade", 0, end_ms)
                ids = [e["id"] for e in got]
                assert ids == sorted(ids), f"{symbol}: trades out of id order"
                truth = {int(t["tradeId"]): t for t in venue.trades(symbol, got[0]["trade_ms"], end_ms + 1)}
                truth = {k: t for k, t in truth.items() if ids[0] <= k <= max(truth)}
                expected += len(truth)
                found += len(set(ids) & set(truth))
                dup += len(ids) - len(set(ids))
                lost += len(set(truth) - set(ids))
                for e in got:
                    t = truth.get(e["id"])
                    if t is None or (e["trade_ms"], e["price"], e["amount"], e["side"]) != (
                        int(t["ts"]),
                        float(t["px"]),
                        float(t["sz"]),
                        t["side"],
                    ):
                        wrong += 1
                closed = [e["open_ms"] for _, e in entries(client, key("kline_1m", symbol)) if e["closed"]]
                kline_dup += len(closed) - len(set(closed))
                # Every candle that closed while streaming (the one forming at the start included).
                rows = venue.ohlcv(symbol, "1m", start_ms - start_ms % 60_000, end_ms)
                want = {int(r[0]) for r in rows if r[8] == "1"}
                assert want, "the run closed no candle: nothing checked"
                kline_missing += len(want - set(closed))
                for channel in ("bookTicker", "ticker"):
                    times = [e["event_ms"] for _, e in entries(client, key(channel, symbol))]
                    mine = [m for m in markers if m["stream"] == key(channel, symbol)]
                    holes += unmarked_holes(times, mine, HOLE_MS)

    report.tally(
        expected,
        found,
        lost,
        dup,
        trades_wrong=wrong,
        repaired=metrics["repaired_trades"],
        rest_requests=sim.okx.requests()["endpoints"].get("market/history-trades", 0),
        rest_429=sim.okx.requests()["429"],
        dropped_for_backlog=hub.dropped_for_backlog,
        klines_missing=kline_missing,
        klines_duplicated=kline_dup,
        book_holes_unmarked=holes,
        stall_s=stall_s,
        msg_per_s=rate * SPEED * len(SYMBOLS),
    )
    assert lost == 0 and dup == 0 and wrong == 0, (lost, dup, wrong)
    assert kline_missing == 0 and kline_dup == 0, (kline_missing, kline_dup)
    assert holes == 0
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()
