"""Issue 15's fault test, OKX part: WS drops ×5, a stall past the watchdog (20 s with --long) and
skipped trade ids, while the market trades on (the simulator's clock runs 10× fast; its OKX
``trades`` come from the tape REST serves too, produced whether or not anyone listens).

After the flow stops: the trade streams (live + repaired over ``history-trades``, read with
``MarketDataReader.range``) hold every trade of the tape from the first one stored, exactly once,
in id order, with REST's content; closed 1-minute candles are all there once (lost ones repaired
over ``history-candles``); ``bbo-tbt`` and ``tickers`` carry a gap marker over every hole.
Repair mode ``hold`` too, with -m slow (the Binance scenario runs it in CI).

The streamer (a subprocess) SIGKILLed ×3 (×10 full) and restarted: ``trade`` holds every trade
of the tape once, in id order (each restart reads the newest stored id from Redis and fetches
the missed ones back); closed candles every one once; ``bookTicker`` and ``ticker`` holes each
under a marker at their exact seam.

A private Redis SIGSTOPped (3 s; 10 s full), then restarted once without persistence: the stop
loses nothing; the restart's loss is refilled for the retention (``stream_maxlen``) on ``trade``
(``history-trades``) and closed candles (``history-candles``) and marked ``redis_restart`` on
every stream.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import yaml

from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.chaos.helpers import KillPlan, run_with_kills, sigstop_redis
from tests.chaos.report import ScenarioReport
from tests.chaos.servers import RestartableRedis
from tests.support.gapfree import (
    TradesTable,
    all_repaired,
    assert_table_equals_rest,
    drop_and_reconnect,
    fast_clock,
    okx_depth_seams,
    okx_streamer_on,
    open_trade_gaps,
    restart_marked,
    restart_state,
    restart_unmarked,
    short_repairs,
    stored_twice,
    thaw_when_connected,
    unmarked_holes,
)
from tests.support.services import REDIS_URL
from tests.support.stream_accounting import holes_and_markers
from tests.support.streaming import (
    entries,
    gap_entries,
    okx_stream_config,
    settle_quietly,
    wait_for,
    wait_for_async,
)

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"]
CHANNELS = ["trade", "kline_1m", "bookTicker", "ticker", "depth"]
VENUE = "sim-okx"
#: Simulated ms per wall ms.
SPEED = 10
#: A hole in a pushed-every-tick channel: five ticks of the simulator (100 ms wall each).
HOLE_MS = 5 * 100 * SPEED


# Repair mode ``hold`` here only with -m slow: the Binance scenario runs it in CI.
@pytest.mark.parametrize("repair_mode", ["companion", pytest.param("hold", marks=pytest.mark.slow)])
async def test_okx_trades_gap_free_through_drops_stalls_and_skips(
    redis_prefix: str, scenario_report: ScenarioReport, long_run: bool, repair_mode: str
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
        async with okx_streamer_on(sim, redis_prefix, SYMBOLS, CHANNELS, repair_mode=repair_mode) as streamer:
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
                        # A lost book update and a wrong checksum: each a resync from a new snapshot.
                        hub.skip_seq(venue.instrument(SYMBOLS[i - 1]).inst_id)
                        report.fault("skip_seq")
                        hub.corrupt_checksum(venue.instrument(SYMBOLS[i + 1]).inst_id)
                        report.fault("bad_checksum")
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
        kline_missing = kline_dup = holes = 0
        depth = {"depth_holes": 0, "depth_unmarked": 0, "depth_stray_markers": 0}
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader:
            expected, found, lost, dup, wrong = await account_okx_trades(reader, venue, SYMBOLS, end_ms)
            for symbol in SYMBOLS:
                # Through the reader: candles a live close overtook during a reconnect's REST
                # repair are in the kline's companion stream, which the reader merges.
                klines = await reader.range(symbol, "kline_1m", 0, 2**62)
                closed = [e["open_ms"] for e in klines if e["closed"]]
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
                # Depth: a broken seqId chain is a hole, and it must lie under a marker at its seam.
                for name, n in zip(
                    depth, okx_depth_seams(client, key("depth", symbol), markers), strict=True
                ):
                    depth[name] += n
        book_markers = sum(1 for m in markers if m["channel"] == "depth" and m["reason"] == "book")
        # Stored, not merged: no trade both live and repaired, nor twice in either stream.
        doubled = repaired_live = 0
        for symbol in SYMBOLS:
            twice, in_live = stored_twice(client, key("trade", symbol))
            doubled, repaired_live = doubled + twice, repaired_live + in_live
        short = short_repairs(markers)

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
        book_markers=book_markers,
        **depth,
        stall_s=stall_s,
        msg_per_s=rate * SPEED * len(SYMBOLS),
        repair_mode=repair_mode,
        repair_holds=metrics["repair_holds"],
        repair_hold_fallbacks=metrics["repair_hold_fallbacks"],
        trades_repaired_live=repaired_live,
        stored_twice=doubled,
    )
    assert lost == 0 and dup == 0 and wrong == 0, (lost, dup, wrong)
    assert doubled == 0 and short == [], (doubled, short)
    if repair_mode == "hold":  # gaps were held and repaired into the live streams themselves
        assert metrics["repair_holds"] > 0 and repaired_live > 0, metrics
    else:
        assert metrics["repair_holds"] == 0 and repaired_live == 0, metrics
    assert kline_missing == 0 and kline_dup == 0, (kline_missing, kline_dup)
    assert holes == 0
    # Each drop and the stall broke the chains, and so did the two lost updates.
    assert depth["depth_holes"] >= 2 + len(SYMBOLS), depth
    assert depth["depth_unmarked"] == 0 and depth["depth_stray_markers"] == 0, depth
    assert book_markers >= 4, book_markers  # two sequence breaks, two checksum mismatches
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()


async def account_okx_trades(
    reader: MarketDataReader, venue: Any, symbols: list[str], end_ms: int
) -> tuple[int, int, int, int, int]:
    """``(expected, found, lost, duplicated, wrong)`` over the ``trade`` streams of ``symbols``,
    read merged with their repairs: every trade REST serves (the simulator's tape) from the oldest
    kept to ``end_ms`` is expected once, in id order, with REST's time, price, size and side."""
    expected = found = lost = dup = wrong = 0
    for symbol in symbols:
        got = await reader.range(symbol, "trade", 0, end_ms)
        ids = [e["id"] for e in got]
        assert ids == sorted(ids), f"{symbol}: trades out of id order"
        truth = {int(t["tradeId"]): t for t in venue.trades(symbol, got[0]["trade_ms"], end_ms + 1)}
        truth = {k: t for k, t in truth.items() if ids[0] <= k}
        expected += len(truth)
        found += len(set(ids) & set(truth))
        dup += len(ids) - len(set(ids))
        lost += len(set(truth) - set(ids))
        if set(truth) - set(ids):  # name them: where they lie tells which path lost them
            missing = sorted(set(truth) - set(ids))
            print(
                f"LOST trade {symbol}: {len(missing)} ids, {missing[0]}..{missing[-1]} of {ids[0]}..{ids[-1]}"
            )
        for e in got:
            t = truth.get(e["id"])
            if t is None or (e["trade_ms"], e["price"], e["amount"], e["side"]) != (
                int(t["ts"]),
                float(t["px"]),
                float(t["sz"]),
                t["side"],
            ):
                wrong += 1
    return expected, found, lost, dup, wrong


async def test_okx_trades_gap_free_through_redis_sigstop_and_restart_without_persistence(
    scenario_report: ScenarioReport,
    full: bool,
    restartable_redis: RestartableRedis,
    base_config: dict[str, Any],
) -> None:
    """The private Redis SIGSTOPped (10 s in the full form, 3 s in CI), then restarted once with no
    persistence: nothing the simulator sent on OKX ``trade`` is lost or doubled (the stop is
    buffered, the restart's loss refilled over ``history-trades`` for the last ``stream_maxlen``
    ids), closed candles are refilled over ``history-candles`` for the same retention, and every
    stream carries a ``redis_restart`` marker over what the restart lost."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    report = scenario_report
    server = restartable_redis
    client = redis.Redis.from_url(server.url)
    symbols, prefix = (SYMBOLS if full else SYMBOLS[:2]), "gfokx"
    channels = ["trade", "bookTicker", "ticker", "kline_1m", "depth"]
    stop_s = 10.0 if full else 3.0
    retention = 3000

    def key(channel: str, symbol: str) -> str:
        return f"{prefix}:stream:{VENUE}:{channel}:{symbol}"

    def stored(channel: str) -> list[int]:
        return [int(client.xlen(key(channel, s))) for s in symbols]

    # Real time: 400 trades a second per instrument, 2,000 msg/s on 5 (CI: 40 on 2).
    async with SimulatedExchange(symbols=symbols, seed=16, okx=OkxSettings()) as sim:
        # The tape began 10 s ago (the clock stays the streamer's real time): the trades table is
        # those 10 s backfilled (4 history-trades pages a symbol in CI, paced by its 2 s
        # windows), then the stream's.
        sim.okx.venue.tape.set_rate(400 if full else 40, sim.clock.now_ms() - 10_000)
        table = TradesTable.okx(base_config["database"], sim, symbols)
        await table.backfill(base_config, sim, sim.clock.now_ms() - 10_000)
        config = okx_stream_config(
            sim, prefix, redis_url=server.url, stream_maxlen=retention, store_trades=True
        )
        config["database"] = base_config["database"]
        async with OptimizedWebSocketStreamer(
            symbols=symbols, redis_client=server.url, channels=channels, config=config
        ) as streamer:
            assert await streamer.wait_connected()
            await wait_for(lambda: all(stored("trade")), timeout_s=60, what="trades written")
            await sigstop_redis(server.proc.pid, streamer, stop_s, report)
            before = stored("trade")
            await wait_for(
                lambda: all(a > b for a, b in zip(stored("trade"), before, strict=True)),
                timeout_s=30,
                what="writes resumed after SIGCONT",
            )
            # The stop lost nothing: the writer held its entries and resent them.
            stop_lost = stop_dup = 0
            first_before, last_before = {}, {}
            for symbol in symbols:
                ids = [e["id"] for _, e in entries(client, key("trade", symbol))]
                first_before[symbol], last_before[symbol] = ids[0], ids[-1]
                stop_lost += ids[-1] - ids[0] + 1 - len(set(ids))
                stop_dup += len(ids) - len(set(ids))
            server.restart()  # killed: it comes back empty
            report.fault("redis_restart")
            streams = {key(c, s) for c in channels for s in symbols}
            try:
                await wait_for(
                    lambda: restart_marked(client, prefix, VENUE, streams, len(symbols)),
                    timeout_s=120,
                    what="every stream marked, every trade gap and kline refilled",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {restart_state(client, prefix, VENUE, streams)}") from None
            await settle_quietly(streamer, sim)
            end_ms = sim.clock.now_ms()
            await wait_for_async(
                lambda: table.whole(end_ms), timeout_s=300 if full else 60, what="the trades table whole"
            )
            metrics = streamer.get_metrics()
        stored = await table.account(end_ms)

        unmarked = 0
        klines = {"closed": 0, "missing": 0, "duplicated": 0}
        depth = {"depth_holes": 0, "depth_unmarked": 0, "depth_stray_markers": 0}
        markers = gap_entries(client, prefix, VENUE)
        async with MarketDataReader(server.url, prefix=prefix, exchange=VENUE) as reader:
            expected, found, lost, dup, wrong = await account_okx_trades(
                reader, sim.okx.venue, symbols, end_ms
            )
            refill_short = 0
            for symbol in symbols:
                # The restart's marker covers what was stored before it, and the refill holds
                # every id of the retention up to the marker's end (or from the first one stored).
                gap = [
                    m
                    for m in markers
                    if m["stream"] == key("trade", symbol)
                    and m["reason"] == "redis_restart"
                    and m.get("last_seq")
                ]
                top = int(gap[0]["last_seq"]) if gap else -1
                want = set(range(max(first_before[symbol], top + 1 - retention), top + 1)) if gap else {-1}
                refilled = {e["id"] for _, e in entries(client, key("trade@repair", symbol))}
                refill_short += len(want - refilled) + (top < last_before[symbol])
                channels_kept = ("bookTicker", "ticker", "kline_1m", "depth")
                unmarked += sum(restart_unmarked(client, markers, key(c, symbol)) for c in channels_kept)
                # What the depth stream holds since the restart breaks its seqId chain only under a
                # marker at the seam (the restart's own, from 0, is checked above).
                seam_markers = [m for m in markers if m["reason"] != "redis_restart"]
                depth_seams = okx_depth_seams(client, key("depth", symbol), seam_markers)
                for name, n in zip(depth, depth_seams, strict=True):
                    depth[name] += n
                # Closed candles: the live ones and those refilled after the restart, merged.
                candles = await reader.range(symbol, "kline_1m", 0, 2**62)
                closed = [e["open_ms"] for e in candles if e["closed"]]
                rows = sim.okx.venue.ohlcv(symbol, "1m", closed[0], closed[-1] + 1) if closed else []
                truth = {int(r[0]) for r in rows if r[8] == "1"}
                klines["closed"] += len(set(closed))
                klines["missing"] += len(truth - set(closed))
                klines["duplicated"] += len(closed) - len(set(closed))
    report.tally(
        expected,
        found,
        lost,
        dup,
        trades_wrong=wrong,
        trades_repaired=metrics["repaired_trades"],
        stop_lost=stop_lost,
        stop_dup=stop_dup,
        streams_unmarked=unmarked,
        refill_short=refill_short,
        candle_requests=sim.okx.requests()["endpoints"].get("market/history-candles", 0),
        rest_429=sim.okx.requests()["429"],
        stop_s=stop_s,
        retention=retention,
        msg_per_s=sim.okx.hub.ws_rate * len(symbols),
        **{f"klines_{k}": v for k, v in klines.items()},
        **depth,
        **stored,
    )
    assert lost == 0 and dup == 0 and wrong == 0, (lost, dup, wrong)
    assert stop_lost == 0 and stop_dup == 0, (stop_lost, stop_dup)
    assert refill_short == 0, refill_short
    assert unmarked == 0
    assert_table_equals_rest(stored)
    assert depth["depth_unmarked"] == 0 and depth["depth_stray_markers"] == 0, depth
    assert klines["closed"] >= retention and klines["missing"] == 0 and klines["duplicated"] == 0, klines
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()


async def test_okx_trades_gap_free_through_streamer_sigkills(
    redis_prefix: str,
    scenario_report: ScenarioReport,
    full: bool,
    tmp_path: Path,
    base_config: dict[str, Any],
) -> None:
    """The streamer (scripts/stream_market_data.py, a subprocess) on OKX SIGKILLed three times
    (ten in the full form) and restarted while the market runs 30× fast: each restart reads the
    newest stored trade id from Redis, marks exactly the ids it missed and fetches them back over
    ``history-trades``, so ``trade`` holds every trade of the tape once; closed candles are all
    there once (``history-candles`` at each start); ``bookTicker`` and ``ticker`` have a
    ``restart`` marker at each seam and no hole without one."""
    report = scenario_report
    # The full form: 10 kills, 5 instruments at 2,100 trade msg/s (14 a simulated second × 30 × 5).
    kills = 10 if full else 3
    symbols = SYMBOLS if full else SYMBOLS[:2]
    speed = 30
    channels = ["trade", "bookTicker", "ticker", "kline_1m", "depth"]
    client = redis.Redis.from_url(REDIS_URL)

    def key(channel: str, symbol: str) -> str:
        return f"{redis_prefix}:stream:{VENUE}:{channel}:{symbol}"

    def stored() -> int:
        return sum(int(client.xlen(key("trade", s))) for s in symbols)

    def caught_up(sim: SimulatedExchange) -> bool:
        now = sim.clock.now_ms()
        for symbol in symbols:
            tape = sim.okx.venue.trades(symbol, now - 60_000, now + 1)
            newest = client.xrevrange(key("trade", symbol), count=1)
            if tape and (not newest or msgpack.unpackb(newest[0][1][b"d"])["id"] < int(tape[-1]["tradeId"])):
                return False
        return True

    def closed_candles() -> int:
        return sum(1 for s in symbols for _, e in entries(client, key("kline_1m", s)) if e["closed"])

    # 30× fast: about a minute of market per kill, so candles close in the downtime too.
    async with SimulatedExchange(symbols=symbols, seed=17, okx=OkxSettings()) as sim, fast_clock(sim, speed):
        hub = sim.okx.hub
        hub.ws_rate = 14 if full else 8
        # The trades table: the tape's first half minute backfilled, then the streamer runs'.
        table = TradesTable.okx(base_config["database"], sim, symbols)
        table_start = sim.clock.now_ms()
        sim.clock.advance(30_000)
        await table.backfill(base_config, sim, table_start, freeze=True)
        config = okx_stream_config(sim, redis_prefix, watchdog_s=30.0, store_trades=True)
        config.update(symbols=symbols, streaming={**config["streaming"], "channels": channels})
        config["database"] = base_config["database"]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))

        async def downtime(run: int) -> None:
            # A candle closes while the streamer is down, the next start fetches it; after the
            # first kill two do (the simulator's WS pushes the newest closed one on its own).
            minute = sim.clock.now_ms() // 60_000 + (1 if run else 2)
            await wait_for(lambda: sim.clock.now_ms() // 60_000 >= minute, what="a minute's end")

        plan = KillPlan(
            stored=stored,
            open_gaps=lambda: open_trade_gaps(client, redis_prefix, VENUE),
            caught_up=lambda: caught_up(sim),
            closed_candles=closed_candles,
            connections=lambda: len(hub.connections),
            freeze=sim.clock.freeze,
            repair_timeout_s=300 if full else 120,
            downtime=downtime,
            settled=lambda: table.whole(sim.clock.now_ms()),
            started=thaw_when_connected(sim, lambda: len(hub.connections)),
        )
        codes = await run_with_kills(path, tmp_path, kills, report, plan)
        end_ms = sim.clock.now_ms()
        stored = await table.account(end_ms)
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange=VENUE) as reader:
            expected, found, lost, dup, wrong = await account_okx_trades(
                reader, sim.okx.venue, symbols, end_ms
            )
            # Through the reader: a candle a live close overtook during a restart's REST repair is
            # in the kline's companion stream, which the reader merges.
            klines = {s: await reader.range(s, "kline_1m", 0, 2**62) for s in symbols}
        markers = gap_entries(client, redis_prefix, VENUE)
        seams = {"holes": 0, "unmarked": 0, "stray_markers": 0, "klines_closed": 0}
        seams.update(klines_missing=0, klines_duplicated=0, klines_repaired=0)
        seams.update(depth_holes=0, depth_unmarked=0, depth_stray_markers=0)
        for symbol in symbols:
            for channel in ("bookTicker", "ticker"):
                windows = [
                    (int(m["from_ms"]), int(m["to_ms"]))
                    for m in markers
                    if m["stream"] == key(channel, symbol)
                ]
                times = [e["event_ms"] for _, e in entries(client, key(channel, symbol))]
                # Both push at least every simulated second: a silence of five wall ticks lost events.
                breaks = [i > 0 and times[i] - times[i - 1] > 5 * 100 * speed for i in range(len(times))]
                for name, value in zip(
                    ("holes", "unmarked", "stray_markers"),
                    holes_and_markers(times, breaks, windows),
                    strict=True,
                ):
                    seams[name] += value
            depth = okx_depth_seams(client, key("depth", symbol), markers)
            for name, value in zip(
                ("depth_holes", "depth_unmarked", "depth_stray_markers"), depth, strict=True
            ):
                seams[name] += value
            closed = [e["open_ms"] for e in klines[symbol] if e["closed"]]
            seams["klines_closed"] += len(set(closed))
            seams["klines_repaired"] += sum(1 for e in klines[symbol] if e["closed"] and e.get("repaired"))
            seams["klines_duplicated"] += len(closed) - len(set(closed))
            rows = sim.okx.venue.ohlcv(symbol, "1m", closed[0], closed[-1] + 1) if closed else []
            seams["klines_missing"] += len({int(r[0]) for r in rows if r[8] == "1"} - set(closed))
    report.tally(
        expected,
        found,
        lost,
        dup,
        trades_wrong=wrong,
        exit_codes=",".join(map(str, codes)),
        msg_per_s=hub.ws_rate * speed * len(symbols),
        **seams,
        **stored,
    )
    assert codes[-1] in (0, 130), (tmp_path / f"stream{kills}.out").read_text()[-1500:]
    assert lost == 0 and dup == 0 and wrong == 0, (lost, dup, wrong)
    assert seams["klines_closed"] >= 2 * kills, seams
    assert seams["klines_missing"] == 0 and seams["klines_duplicated"] == 0, seams
    assert seams["klines_repaired"] >= kills * len(symbols), seams  # one closed while down, each kill
    assert seams["holes"] >= 2 * kills and seams["unmarked"] == 0 and seams["stray_markers"] == 0, seams
    assert seams["depth_holes"] >= kills, seams
    assert seams["depth_unmarked"] == 0 and seams["depth_stray_markers"] == 0, seams
    assert_table_equals_rest(stored)
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()
