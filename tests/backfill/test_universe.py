"""Choosing the universe (issue 12, acceptance 4): real ccxt against the simulator, real PostgreSQL.

* ``*/USDT`` with ``top: 3`` resolves to the three USDT symbols with the highest 24 h quote
  volume, computed here from the simulator's 1m candles (not from its ticker), and skips a
  delisted one, saying so.
* A delisted symbol is collected up to its end with ``include_delisted: true``: stored candles
  equal the simulator's, after the delisting the coverage is ``'empty'``, a second run asks
  nothing. Without it, the script refuses it with one line and exit code 2.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from data_collector.backfill.plan import align_up
from data_collector.cli.exits import EXIT_OK, EXIT_USAGE
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS, candle_open_ms, next_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.backfill.test_trades_e2e import truth
from tests.support.backfill import (
    RANGE_START_MS,
    config_for,
    floats,
    klines_requests,
    run_script,
    write_config,
)

USDT = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "DOGE/USDT", "XRP/USDT", "ADA/USDT"]
#: Delisted two days and 13:37 into the fixed range, inside every candle above 1m.
DELISTED_MS = RANGE_START_MS + 2 * DAY_MS + 13 * HOUR_MS + 37 * MINUTE_MS
RANGE = (RANGE_START_MS, RANGE_START_MS + 5 * DAY_MS)
TIMEFRAMES = ["1m", "1h", "1d"]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    """Six USDT symbols, one BTC-quoted, LUNA/USDT delisted; the clock frozen so volumes hold still."""
    async with SimulatedExchange(
        symbols=[*USDT, "ETH/BTC", "LUNA/USDT"], seed=7, gaps={}, delistings={"LUNA/USDT": DELISTED_MS}
    ) as sim:
        sim.clock.freeze(candle_open_ms(sim.clock.now_ms(), "1m"))
        yield sim


def quote_volume_24h(sim: SimulatedExchange, symbol: str) -> float:
    """The simulator's truth: the quote volume of the 1,440 closed 1m candles before now."""
    now = sim.clock.now_ms()
    return sum(float(k[7]) for k in sim.klines(symbol, "1m", now - DAY_MS, now))


async def test_a_pattern_with_top_3_resolves_to_the_three_busiest_and_skips_the_delisted(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    volumes = {s: quote_volume_24h(sim, s) for s in USDT}
    ranked = sorted(USDT, key=lambda s: -volumes[s])
    # Far enough apart that the window's edge (the forming minute) cannot reorder them.
    assert volumes[ranked[2]] > 1.05 * volumes[ranked[3]], volumes
    config = config_for(base_config, sim, symbols=["*/USDT"], timeframes=["1d"], universe={"top": 3})
    async with OptimizedDataCollector(config) as collector:
        assert collector.client.markets["LUNA/USDT"]["active"] is False
        # All tickers (the request ranking over 100+ matches makes) list the delisted one, idle.
        tickers = await collector.client.exchange.fetch_tickers()
        assert tickers["LUNA/USDT"]["quoteVolume"] == 0 and tickers["LUNA/USDT"]["info"]["count"] == 0
        assert set(tickers) == {*USDT, "ETH/BTC", "LUNA/USDT"}
        universe = await collector.resolve_symbols()
        assert universe.symbols == ranked[:3]
        assert universe.skipped_delisted == ["LUNA/USDT"]
        assert universe.describe() == (
            f"symbols from */USDT (top 3 by 24h quote volume): {', '.join(ranked[:3])}; "
            "skipped 1 delisted: LUNA/USDT (universe.include_delisted: true collects them)"
        )
        report = await collector.collect(start=RANGE[0], end=RANGE[1])
        assert report.ok, report.summary()
        assert sorted({p.symbol for p in report.pairs.values()}) == sorted(ranked[:3])


async def test_a_delisted_symbol_is_collected_up_to_its_end_with_include_delisted(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    start, end = RANGE
    config = config_for(
        base_config,
        sim,
        symbols=["LUNA/USDT"],
        timeframes=TIMEFRAMES,
        universe={"include_delisted": True},
    )
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        inst = await collector.instrument("LUNA/USDT")
        for tf in TIMEFRAMES:
            want = [floats(k) for k in sim.klines("LUNA/USDT", tf, start, end)]
            last_open = candle_open_ms(DELISTED_MS - 1, tf)
            assert want and want[-1][0] == last_open, tf  # the truth ends with the delisting
            assert await collector.store.load(inst.id, tf, start, end) == want, tf
            gaps = await collector.find_gaps("LUNA/USDT", tf, start, end)
            # Everything after the candle holding the last trade: 'empty', the exchange's own gap.
            assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [
                (next_open_ms(last_open, tf), align_up(end, tf), "exchange")
            ], tf
        before = klines_requests(sim)
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.requests == 0 and klines_requests(sim) == before


async def test_the_script_refuses_a_delisted_symbol_without_include_delisted(
    base_config: dict[str, Any], sim: SimulatedExchange, tmp_path: Path
) -> None:
    start, end = (datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat() for ms in RANGE)
    config = config_for(base_config, sim, symbols=["LUNA/USDT"], timeframes=["1d"], start=start, end=end)
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == EXIT_USAGE, (out, err)
    lines = err.strip().splitlines()
    assert lines == [
        "error: symbols: LUNA/USDT is not trading on binance (status BREAK: delisted or halted); "
        "set universe.include_delisted: true to collect it up to its end"
    ], err
    assert "LUNA" not in out
    # A pattern skips it and says so on the one line that lists the run's symbols.
    config = config_for(base_config, sim, symbols=["[LS]*/USDT"], timeframes=["1d"], start=start, end=end)
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == EXIT_OK, (out, err)
    assert out.splitlines()[0] == (
        "symbols from [LS]*/USDT: SOL/USDT; skipped 1 delisted: LUNA/USDT "
        "(universe.include_delisted: true collects them)"
    )


PERPS = [f"{s}:USDT" for s in USDT]


@pytest.fixture
async def perp_sim() -> AsyncIterator[SimulatedExchange]:
    """The six USDT symbols on spot and as perpetuals; the clock frozen so volumes hold still."""
    async with SimulatedExchange(symbols=[*USDT, "ETH/BTC"], perpetuals=PERPS, seed=7, gaps={}) as sim:
        sim.clock.freeze(candle_open_ms(sim.clock.now_ms(), "1m"))
        yield sim


def ranked_by_volume(sim: SimulatedExchange, symbols: list[str], top: int) -> list[str]:
    """The ``top`` busiest of ``symbols`` by the simulator's 1m candles (spot or futures) of the last 24 h."""
    now = sim.clock.now_ms()

    def volume(symbol: str) -> float:
        klines = (
            sim.usdm.klines(symbol, "1m", now - DAY_MS, now)
            if ":" in symbol
            else sim.klines(symbol, "1m", now - DAY_MS, now)
        )
        return sum(float(k[7]) for k in klines)

    volumes = {s: volume(s) for s in symbols}
    ranked = sorted(symbols, key=lambda s: -volumes[s])
    # Far enough apart that the window's edge (the forming minute) cannot reorder them.
    assert volumes[ranked[top - 1]] > 1.05 * volumes[ranked[top]], volumes
    return ranked[:top]


def perp_universe_config(base_config: dict[str, Any], sim: SimulatedExchange, **extra: Any) -> dict[str, Any]:
    futures = {**sim.futures_exchange_config(), "timeout_s": 2.0}
    return config_for(base_config, sim, **{"timeframes": ["1d"], "futures_exchange": futures, **extra})


async def test_a_perpetual_pattern_with_top_3_resolves_against_the_futures_markets(
    base_config: dict[str, Any], perp_sim: SimulatedExchange
) -> None:
    want = ranked_by_volume(perp_sim, PERPS, 3)
    config = perp_universe_config(base_config, perp_sim, symbols=["*/USDT:USDT"], universe={"top": 3})
    async with OptimizedDataCollector(config) as collector:
        universe = await collector.resolve_symbols()
        assert universe.symbols == want
        assert (
            universe.describe() == f"symbols from */USDT:USDT (top 3 by 24h quote volume): {', '.join(want)}"
        )
        # Ranked by the futures venue's own tickers: one /fapi/v1/ticker/24hr for all (weight 40).
        assert perp_sim.stats()["endpoints"].get("fapi/v1/ticker/24hr") == 1
        assert "ticker/24hr" not in perp_sim.stats()["endpoints"]


async def test_spot_and_perpetual_patterns_together_each_keep_their_own_top(
    base_config: dict[str, Any], perp_sim: SimulatedExchange
) -> None:
    spot, perps = ranked_by_volume(perp_sim, USDT, 2), ranked_by_volume(perp_sim, PERPS, 2)
    config = perp_universe_config(
        base_config, perp_sim, symbols=["ETH/BTC", "*/USDT", "*/USDT:USDT"], universe={"top": 2}
    )
    async with OptimizedDataCollector(config) as collector:
        universe = await collector.resolve_symbols()
        assert universe.symbols == ["ETH/BTC", *spot, *perps]
        now = perp_sim.clock.now_ms()
        report = await collector.collect(start=now - 3 * DAY_MS, end=now - DAY_MS)
        assert report.ok, report.summary()
        assert sorted({p.symbol for p in report.pairs.values()}) == sorted(universe.symbols)


async def test_a_perpetual_pattern_matching_nothing_gets_one_line_and_exit_2(
    base_config: dict[str, Any], perp_sim: SimulatedExchange, tmp_path: Path
) -> None:
    config = perp_universe_config(base_config, perp_sim, symbols=["*/USDT:USDT", "*/BUSD:BUSD"])
    code, out, err = await run_script(
        "--config", str(write_config(tmp_path / "config.yaml", config)), cwd=tmp_path
    )
    assert code == EXIT_USAGE, (out, err)
    assert err.strip().splitlines() == ["error: symbols: '*/BUSD:BUSD' matches no market of binanceusdm"], err


@pytest.fixture
async def delisted_perp_sim() -> AsyncIterator[SimulatedExchange]:
    """LUNA/USDT:USDT delisted at DELISTED_MS: SETTLING, its deliveryDate moved there."""
    async with SimulatedExchange(
        symbols=["BTC/USDT"],
        perpetuals=["BTC/USDT:USDT", "LUNA/USDT:USDT"],
        seed=7,
        gaps={},
        delistings={"LUNA/USDT:USDT": DELISTED_MS},
        futures_weight_limit=1_000_000,
    ) as sim:
        yield sim


async def test_a_delisted_perpetual_is_bounded_at_its_delivery_date_with_no_request_past_it(
    base_config: dict[str, Any], delisted_perp_sim: SimulatedExchange
) -> None:
    sim, luna = delisted_perp_sim, "LUNA/USDT:USDT"
    start, end = DELISTED_MS - 2 * HOUR_MS, DELISTED_MS + 2 * DAY_MS
    config = perp_universe_config(
        base_config,
        sim,
        symbols=[luna],
        timeframes=["1m", "1h"],
        data_types=["ohlcv", "mark_ohlcv", "trades", "funding_rates"],
        universe={"include_delisted": True},
    )
    sim.request_log = deque(maxlen=10_000)
    async with OptimizedDataCollector(config) as collector:
        market = (await collector.client_for(luna)).markets[luna]
        assert market["active"] is False and int(market["info"]["deliveryDate"]) == DELISTED_MS
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        # Not one request reaches past the delisting: no page, no hour window of trades.
        late = [(k, q) for k, q in sim.request_log if int(q.get("startTime", 0)) >= DELISTED_MS]
        assert late == [], late[:3]
        inst = await collector.instrument(luna)
        for tf in ("1m", "1h"):
            last_open = candle_open_ms(DELISTED_MS - 1, tf)
            for price, key in (("last", tf), ("mark", f"mark:{tf}")):
                want = [floats(k) for k in sim.usdm.klines(luna, tf, start, end, price=price)]
                assert want and want[-1][0] == last_open, key  # the truth ends with the delisting
                assert await collector.store.load(inst.id, key, start, end) == want, key
            gaps = await collector.find_gaps(luna, tf, start, end)
            # After the candle holding the delisting: 'empty', the exchange's own gap.
            assert [(g.start_ms, g.end_ms, g.kind) for g in gaps] == [
                (next_open_ms(last_open, tf), align_up(end, tf), "exchange")
            ], tf
        trades = truth(sim, luna, start, end)
        assert trades and trades[-1][1] < DELISTED_MS
        assert await collector.store.load_trades(inst.id, start, end) == trades
        funding = sim.usdm.funding_history(luna, start, end - 1)
        assert [r[0] for r in await collector.store.load_funding(inst.id, start, end)] == [
            r["fundingTime"] for r in funding
        ]
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.requests == 0, again.summary()
