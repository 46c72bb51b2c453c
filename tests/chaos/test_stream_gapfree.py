"""Issue 15's fault test, Binance spot, one figure line per scenario. Each runs in a short CI
form; its full form (5 symbols at 2,000 trade msg/s) is ``-m slow`` (or ``--long``).

* WS drops ×5, a stall past the watchdog (20 s full), and skipped ids, while the market trades
  on (the simulator's clock runs 10× fast, so aggregate trades are dense): the aggTrade streams
  (live + repaired, read with ``MarketDataReader.range``) hold every trade REST serves for the
  window exactly once, in id order; the trade streams' gaps are marked exactly by id; closed
  klines are all there once. Run in both repair modes (``streaming.repair_mode``): ``companion``
  and ``hold``, whose repaired trades land in the live streams themselves (checked: holds made,
  repaired trades in the live streams, no id stored both there and in a companion stream).
* The streamer (a subprocess) SIGKILLed ×3 (×10 full) and restarted: ``trade`` and ``aggTrade``
  hold every trade sent, once, in id order; closed klines every candle once; ``bookTicker`` and
  ``depth`` holes each under a marker at their exact seam.
* A private Redis SIGSTOPped (3 s; 10 s full), then restarted once without persistence: the stop
  loses nothing, the restart's loss is refilled for the retention (``stream_maxlen``) on the
  trade channels and marked ``redis_restart`` on the others.

The SIGKILL and Redis-restart scenarios store aggTrades into PostgreSQL too
(``streaming.store_trades``) after a trade backfill of the two minutes before the stream: the
trades table equals REST's for the whole window, backfilled part included, under one coverage row
(the ``table_*`` figures). OKX has its own file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
import yaml

from data_collector.simulator import SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.chaos.helpers import KillPlan, run_with_kills, sigstop_redis
from tests.chaos.report import ScenarioReport
from tests.chaos.servers import RestartableRedis
from tests.support.gapfree import (
    TradesTable,
    assert_table_equals_rest,
    drop_and_reconnect,
    fast_clock,
    open_trade_gaps,
    restart_marked,
    restart_unmarked,
    short_repairs,
    stored_twice,
    thaw_when_connected,
)
from tests.support.services import REDIS_URL
from tests.support.stream_accounting import account_by_id, holes_and_markers
from tests.support.streaming import (
    entries,
    gap_entries,
    sent_by_stream,
    settle_quietly,
    stream_config,
    streamer_on,
    wait_for,
    wait_for_async,
)

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/USDT", "XRP/USDT"]
CHANNELS = ["trade", "aggTrade", "kline_1m"]
#: Simulated ms per wall ms: the trade tape then runs at 10 × ws_rate a wall second.
SPEED = 10


@pytest.mark.parametrize("repair_mode", ["companion", "hold"])
async def test_aggregate_trades_gap_free_through_drops_stalls_and_skips(
    redis_prefix: str, scenario_report: ScenarioReport, full: bool, repair_mode: str
) -> None:
    report = scenario_report
    client = redis.Redis.from_url(REDIS_URL)
    stall_s = 20.0 if full else 3.0
    async with SimulatedExchange(symbols=SYMBOLS, seed=15, ws_rate=40) as sim:  # 2,000 trade msg/s
        async with fast_clock(sim, SPEED):
            async with streamer_on(sim, redis_prefix, SYMBOLS, CHANNELS, repair_mode=repair_mode) as streamer:
                assert await streamer.wait_connected()
                start_ms = sim.clock.now_ms()

                def key(channel: str, symbol: str) -> str:
                    return f"{redis_prefix}:stream:sim-binance:{channel}:{symbol}"

                await wait_for(
                    lambda: all(client.xlen(key(c, s)) for c in ("trade", "aggTrade") for s in SYMBOLS),
                    timeout_s=60,
                    what="every trade stream written",
                )
                for i in range(5):
                    if i in (1, 3):
                        sim.ws_faults.skip_trade_id(SYMBOLS[i], 2)
                        report.fault("skip_id")
                    await drop_and_reconnect(streamer, sim.ws_drop_all, report, i + 1)
                sim.ws_faults.stall(stall_s * SPEED)  # in the simulator's (fast) time: stall_s of wall time
                report.fault("ws_stall")
                stall_end = sim.hub.stalled_until_ms
                await wait_for(lambda: sim.clock.now_ms() >= stall_end, timeout_s=60, what="the stall's end")
                # The streamer is back (its reconnect backoff grew during the stall) and reading.
                counts = {s: client.xlen(key("aggTrade", s)) for s in SYMBOLS}
                await wait_for(
                    lambda: all(client.xlen(key("aggTrade", s)) > counts[s] for s in SYMBOLS),
                    timeout_s=90,
                    what="aggregate trades flowing again after the stall",
                )
                sim.clock.freeze()  # the flow stops

                # Each trade gap by its ids, not by counting ``repaired`` markers: a kline
                # refill's (a candle closed between a reconnect's kline repair and the first live
                # one) names no ids, and counted with the trade gaps' it could end this wait, and
                # the streamer, with a trade gap still open.
                await wait_for(
                    lambda: not open_trade_gaps(client, redis_prefix, "sim-binance"),
                    timeout_s=240 if full else 120,
                    what="every trade gap repaired",
                )
                await settle_quietly(streamer, sim)
                metrics = streamer.get_metrics()
            end_ms = sim.clock.now_ms()
        sent = sent_by_stream(sim, SYMBOLS)

        markers = gap_entries(client, redis_prefix)
        agg_expected = agg_found = agg_dup = agg_lost = trade_unmarked = trade_wrong = kline_dup = 0
        kline_missing = repaired_live = doubled = 0
        short = short_repairs(markers)
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange="sim-binance") as reader:
            # Raw trades too: live and repaired, every id once from the first stored to the last sent.
            trade_counts = await _account_trades(reader, SYMBOLS, ["trade"], sent)
            for symbol in SYMBOLS:
                got = await reader.range(symbol, "aggTrade", 0, end_ms)
                ids = [e["id"] for e in got]
                first_t = got[0]["trade_ms"]
                truth = [t["a"] for t in sim.agg_trades(symbol, first_t, end_ms + 1)]
                agg_expected += len(truth)
                agg_found += len(set(ids) & set(truth))
                agg_dup += len(ids) - len(set(ids))
                agg_lost += len(set(truth) - set(ids))
                assert ids == sorted(ids), f"{symbol}: aggTrades out of id order"
                # The ids received live (repair mode ``hold`` writes repaired ones among them):
                # the markers must name exactly the others.
                live = [e for _, e in entries(client, key("trade", symbol))]
                trade_ids = [e["id"] for e in live if not e.get("repaired")]
                mine = [m for m in markers if m["stream"] == key("trade", symbol)]
                _, dup, unmarked, wrong = account_by_id(trade_ids, mine)
                trade_unmarked += unmarked
                trade_wrong += wrong + dup
                # Stored, not merged: no id both live and repaired, nor twice in either stream.
                for channel in ("trade", "aggTrade"):
                    twice, in_live = stored_twice(client, key(channel, symbol))
                    doubled += twice
                    repaired_live += in_live
                # Through the reader: candles a live close overtook during a reconnect's REST
                # repair are in the kline's companion stream, which the reader merges.
                klines = await reader.range(symbol, "kline_1m", 0, 2**62)
                closed = [e["open_ms"] for e in klines if e["closed"]]
                kline_dup += len(closed) - len(set(closed))
                rows = sim.klines(symbol, "1m", start_ms + 60_000, closed[-1] + 1) if closed else []
                kline_missing += len({int(r[0]) for r in rows} - set(closed))

    report.tally(
        agg_expected,
        agg_found,
        agg_lost,
        agg_dup,
        agg_repaired=metrics["repaired_trades"],
        reconnects=metrics["reconnects"],
        trade_ids_unmarked=trade_unmarked,
        trade_ids_wrongly_marked=trade_wrong,
        trades_expected=trade_counts[0],
        trades_lost=trade_counts[2],
        trades_duplicated=trade_counts[3],
        klines_missing=kline_missing,
        klines_duplicated=kline_dup,
        stall_s=stall_s,
        repair_mode=repair_mode,
        repair_holds=metrics["repair_holds"],
        repair_hold_fallbacks=metrics["repair_hold_fallbacks"],
        trades_repaired_live=repaired_live,
        stored_twice=doubled,
        # Should a trade go missing: entries Redis refused as older than their stream's top, and
        # repairs that wrote fewer trades than their gap had.
        entries_deduplicated=metrics["deduplicated"],
        repairs_short=len(short),
        kline_refills=sum(1 for m in markers if m["reason"] == "repaired" and not m.get("first_seq")),
    )
    assert agg_lost == 0 and agg_dup == 0, (agg_lost, agg_dup)
    assert trade_counts[2] == 0 and trade_counts[3] == 0, trade_counts
    assert trade_unmarked == 0 and trade_wrong == 0
    assert doubled == 0 and short == [], (doubled, short)
    if repair_mode == "hold":  # gaps were held and repaired into the live streams themselves
        assert metrics["repair_holds"] > 0 and repaired_live > 0, metrics
    else:
        assert metrics["repair_holds"] == 0 and repaired_live == 0, metrics
    assert kline_missing == 0 and kline_dup == 0
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()


async def test_trades_gap_free_through_redis_sigstop_and_restart_without_persistence(
    scenario_report: ScenarioReport,
    full: bool,
    restartable_redis: RestartableRedis,
    base_config: dict[str, Any],
) -> None:
    """The private Redis SIGSTOPped (10 s in the full form, 3 s in CI), then restarted once with no
    persistence: nothing the simulator sent on ``trade``/``aggTrade`` is lost or doubled (the
    stop is buffered, the restart's loss refilled over REST for the last ``stream_maxlen`` ids),
    and every other stream carries a ``redis_restart`` marker over what the restart lost."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    report = scenario_report
    server = restartable_redis
    client = redis.Redis.from_url(server.url)
    # The full form: 5 symbols at 2,000 trade msg/s, Redis stopped 10 s.
    symbols, channels, prefix = (
        SYMBOLS if full else SYMBOLS[:2],
        ["trade", "aggTrade", "bookTicker", "kline_1m"],
        "gf",
    )
    stop_s = 10.0 if full else 3.0
    retention = 3000

    def key(channel: str, symbol: str) -> str:
        return f"{prefix}:stream:sim-binance:{channel}:{symbol}"

    def stored(channel: str) -> list[int]:
        return [int(client.xlen(key(channel, s))) for s in symbols]

    async with SimulatedExchange(symbols=symbols, seed=16, ws_rate=400 if full else 40) as sim:
        # The trades table: the two minutes before backfilled, then the stream's aggTrades.
        table = TradesTable.binance(base_config["database"], sim, symbols)
        await table.backfill(base_config, sim, sim.clock.now_ms() - 120_000)
        config = stream_config(sim, prefix, redis_url=server.url, stream_maxlen=retention, store_trades=True)
        config["database"] = base_config["database"]
        async with OptimizedWebSocketStreamer(
            symbols=symbols, redis_client=server.url, channels=channels, config=config
        ) as streamer:
            assert await streamer.wait_connected()
            await wait_for(
                lambda: all(stored("trade")) and all(stored("aggTrade")), timeout_s=60, what="trades written"
            )
            await sigstop_redis(server.proc.pid, streamer, stop_s, report)
            before = stored("trade")
            await wait_for(
                lambda: all(a > b for a, b in zip(stored("trade"), before, strict=True)),
                timeout_s=30,
                what="writes resumed after SIGCONT",
            )
            # The stop lost nothing: the writer held its entries and resent them.
            for channel in ("trade", "aggTrade"):
                for symbol in symbols:
                    ids = [e["id"] for _, e in entries(client, key(channel, symbol))]
                    stop_lost = ids[-1] - ids[0] + 1 - len(set(ids))
                    stop_dup = len(ids) - len(set(ids))
                    report.extra["stop_lost"] = int(report.extra.get("stop_lost", 0)) + stop_lost
                    report.extra["stop_dup"] = int(report.extra.get("stop_dup", 0)) + stop_dup
            server.restart()  # killed: it comes back empty
            report.fault("redis_restart")
            streams = {key(c, s) for c in channels for s in symbols}
            await wait_for(
                lambda: restart_marked(client, prefix, "sim-binance", streams, len(symbols)),
                timeout_s=120,
                what="every stream marked and every trade gap refilled",
            )
            await settle_quietly(streamer, sim)
            end_ms = sim.clock.now_ms()
            await wait_for_async(
                lambda: table.whole(end_ms), timeout_s=300 if full else 60, what="the trades table whole"
            )
            metrics = streamer.get_metrics()
        sent = sent_by_stream(sim, symbols)
        stored = await table.account(end_ms)

    unmarked = 0
    klines = {"closed": 0, "missing": 0, "duplicated": 0}
    markers = gap_entries(client, prefix)
    async with MarketDataReader(server.url, prefix=prefix, exchange="sim-binance") as reader:
        expected, found, lost, dup = await _account_trades(reader, symbols, ["trade", "aggTrade"], sent)
        for symbol in symbols:
            unmarked += sum(
                restart_unmarked(client, markers, key(c, symbol)) for c in ("bookTicker", "kline_1m")
            )
            # Closed candles: the live ones and those refilled after the restart, merged.
            candles = await reader.range(symbol, "kline_1m", 0, 2**62)
            closed = [e["open_ms"] for e in candles if e["closed"]]
            truth = (
                {int(r[0]) for r in sim.klines(symbol, "1m", closed[0], closed[-1] + 1)} if closed else set()
            )
            klines["closed"] += len(set(closed))
            klines["missing"] += len(truth - set(closed))
            klines["duplicated"] += len(closed) - len(set(closed))
    report.tally(
        expected,
        found,
        lost,
        dup,
        trades_repaired=metrics["repaired_trades"],
        streams_unmarked=unmarked,
        stop_s=stop_s,
        retention=retention,
        **{f"klines_{k}": v for k, v in klines.items()},
        **stored,
    )
    assert lost == 0 and dup == 0, (lost, dup)
    assert_table_equals_rest(stored)
    assert report.extra["stop_lost"] == 0 and report.extra["stop_dup"] == 0
    assert unmarked == 0
    assert klines["closed"] >= retention and klines["missing"] == 0 and klines["duplicated"] == 0, klines
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()


async def test_trades_gap_free_through_streamer_sigkills(
    redis_prefix: str,
    scenario_report: ScenarioReport,
    full: bool,
    tmp_path: Path,
    base_config: dict[str, Any],
) -> None:
    """The streamer (scripts/stream_market_data.py, a subprocess) SIGKILLed three times (ten in
    the full form) and restarted while the market runs 10× fast: each restart reads the newest stored id
    from Redis, marks exactly the ids it missed and fetches them back, so ``trade`` and
    ``aggTrade`` hold every trade sent once; closed klines are all there once (REST repair at
    each start); ``bookTicker`` and ``depth`` have a ``restart`` marker at each seam and no hole
    without one."""
    report = scenario_report
    # The full form: 10 kills, 5 symbols at 2,100 trade msg/s (14 a simulated second × 30 × 5).
    kills = 10 if full else 3
    symbols = SYMBOLS if full else SYMBOLS[:2]
    channels = ["trade", "aggTrade", "bookTicker", "depth", "kline_1m"]
    client = redis.Redis.from_url(REDIS_URL)

    def key(channel: str, symbol: str) -> str:
        return f"{redis_prefix}:stream:sim-binance:{channel}:{symbol}"

    def stored() -> int:
        return sum(int(client.xlen(key(c, s))) for c in ("trade", "aggTrade") for s in symbols)

    def caught_up(sim: SimulatedExchange) -> bool:
        sent = sent_by_stream(sim, symbols)
        for channel in ("trade", "aggTrade"):
            for symbol in symbols:
                newest = client.xrevrange(key(channel, symbol), count=1)
                if (
                    not newest
                    or msgpack.unpackb(newest[0][1][b"d"])["id"] < sent[(channel, symbol)]["last_id"]
                ):
                    return False
        return True

    def closed_candles() -> int:
        return sum(1 for s in symbols for _, e in entries(client, key("kline_1m", s)) if e["closed"])

    # 30× fast: about a minute of market per kill, so candles close in the downtime too.
    async with (
        SimulatedExchange(symbols=symbols, seed=17, ws_rate=14 if full else 8) as sim,
        fast_clock(sim, 30),
    ):
        # The trades table: the two minutes before backfilled, then the streamer runs' aggTrades.
        table = TradesTable.binance(base_config["database"], sim, symbols)
        await table.backfill(base_config, sim, sim.clock.now_ms() - 120_000, freeze=True)
        config = stream_config(sim, redis_prefix, watchdog_s=30.0, store_trades=True)
        config.update(symbols=symbols, streaming={**config["streaming"], "channels": channels})
        config["database"] = base_config["database"]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        # Repairs spend at most streaming.repair_weight_per_min (1,200): ten kills of five symbols
        # need about two minutes of it.
        plan = KillPlan(
            stored=stored,
            open_gaps=lambda: open_trade_gaps(client, redis_prefix, "sim-binance"),
            caught_up=lambda: caught_up(sim),
            closed_candles=closed_candles,
            connections=sim.ws_connections,
            freeze=sim.clock.freeze,
            repair_timeout_s=300 if full else 120,
            settled=lambda: table.whole(sim.clock.now_ms()),
            started=thaw_when_connected(sim, sim.ws_connections),
        )
        codes = await run_with_kills(path, tmp_path, kills, report, plan)
        sent = sent_by_stream(sim, symbols)
        stored = await table.account(sim.clock.now_ms())
        async with MarketDataReader(REDIS_URL, prefix=redis_prefix, exchange="sim-binance") as reader:
            expected, found, lost, dup = await _account_trades(reader, symbols, ["trade", "aggTrade"], sent)
            # Through the reader: a candle a live close overtook during a restart's REST repair is
            # in the kline's companion stream, which the reader merges.
            klines = {s: await reader.range(s, "kline_1m", 0, 2**62) for s in symbols}
        markers = gap_entries(client, redis_prefix)
        seams = {"holes": 0, "unmarked": 0, "stray_markers": 0, "klines_missing": 0, "klines_duplicated": 0}
        for symbol in symbols:
            windows = {
                c: [(int(m["from_ms"]), int(m["to_ms"])) for m in markers if m["stream"] == key(c, symbol)]
                for c in ("bookTicker", "depth")
            }
            ticks = [e for _, e in entries(client, key("bookTicker", symbol))]
            times = [e["event_ms"] for e in ticks]
            # bookTicker never pauses (ws_rate × SPEED a second): a silence of 2 s lost events.
            breaks = [i > 0 and times[i] - times[i - 1] > 2000 for i in range(len(times))]
            for name, value in zip(
                ("holes", "unmarked", "stray_markers"),
                holes_and_markers(times, breaks, windows["bookTicker"]),
                strict=True,
            ):
                seams[name] += value
            diffs = [e for _, e in entries(client, key("depth", symbol))]
            breaks = [
                i > 0 and diffs[i]["first_update_id"] != diffs[i - 1]["update_id"] + 1
                for i in range(len(diffs))
            ]
            times = [e["event_ms"] for e in diffs]
            for name, value in zip(
                ("holes", "unmarked", "stray_markers"),
                holes_and_markers(times, breaks, windows["depth"]),
                strict=True,
            ):
                seams[name] += value
            closed = [e["open_ms"] for e in klines[symbol] if e["closed"]]
            seams["klines_closed"] = seams.get("klines_closed", 0) + len(set(closed))
            seams["klines_duplicated"] += len(closed) - len(set(closed))
            truth = (
                {int(r[0]) for r in sim.klines(symbol, "1m", closed[0], closed[-1] + 1)} if closed else set()
            )
            seams["klines_missing"] += len(truth - set(closed))
    report.tally(expected, found, lost, dup, exit_codes=",".join(map(str, codes)), **seams, **stored)
    assert codes[-1] in (0, 130), (tmp_path / f"stream{kills}.out").read_text()[-1500:]
    assert lost == 0 and dup == 0, (lost, dup)
    assert_table_equals_rest(stored)
    assert seams["klines_closed"] >= 2 * kills, seams  # candles closed, some of them while down
    assert seams["klines_missing"] == 0 and seams["klines_duplicated"] == 0, seams
    assert seams["holes"] >= 2 * kills and seams["unmarked"] == 0 and seams["stray_markers"] == 0, seams
    report.faults_survived = report.faults_injected
    report.outcome = "ok"
    client.close()


async def _account_trades(
    reader: MarketDataReader,
    symbols: list[str],
    channels: list[str],
    sent: dict[tuple[str, str], dict[str, int]],
) -> tuple[int, int, int, int]:
    """``(expected, found, lost, duplicated)`` over ``channels`` × ``symbols``, read merged with
    their repairs: every id from the oldest kept to the last one the simulator sent is expected."""
    expected = found = lost = dup = 0
    for symbol in symbols:
        for channel in channels:
            ids = [e["id"] for e in await reader.range(symbol, channel, 0, 2**62)]
            assert ids == sorted(ids), f"{channel} {symbol}: out of id order"
            truth = set(range(ids[0], sent[(channel, symbol)]["last_id"] + 1))
            expected += len(truth)
            found += len(truth & set(ids))
            lost += len(truth - set(ids))
            dup += len(ids) - len(set(ids))
            if truth - set(ids):  # name them: where they lie tells which path lost them
                missing = sorted(truth - set(ids))
                print(
                    f"LOST {channel} {symbol}: {len(missing)} ids, {missing[0]}..{missing[-1]} of {ids[0]}..{ids[-1]}"
                )
    return expected, found, lost, dup


async def test_a_redis_restart_that_kept_its_data_is_not_marked(restartable_redis: RestartableRedis) -> None:
    """``SHUTDOWN SAVE`` and a restart: the new run id is noticed and checked, but every stream
    still holds its newest entry from before, so there is no ``redis_restart`` marker nor refill."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    server, prefix, symbols = restartable_redis, "kept", SYMBOLS[:1]
    client = redis.Redis.from_url(server.url)
    async with SimulatedExchange(symbols=symbols, seed=18, ws_rate=40) as sim:
        config = stream_config(sim, prefix, redis_url=server.url)
        async with OptimizedWebSocketStreamer(
            symbols=symbols, redis_client=server.url, channels=["trade", "kline_1m"], config=config
        ) as streamer:
            assert await streamer.wait_connected()
            key = f"{prefix}:stream:sim-binance:trade:{symbols[0]}"
            await wait_for(lambda: client.xlen(key) > 0, what="trades written")
            service = streamer._service
            await asyncio.to_thread(server.restart, 0.2, keep_data=True)
            await wait_for(lambda: service._refill is not None and service._refill.done(), what="the check")
            before = client.xlen(key)
            await wait_for(lambda: client.xlen(key) > before, what="writes after the restart")
    assert [m for m in gap_entries(client, prefix) if m["reason"] == "redis_restart"] == []
    assert not client.exists(f"{prefix}:stream:sim-binance:trade@repair:{symbols[0]}")
    client.close()
