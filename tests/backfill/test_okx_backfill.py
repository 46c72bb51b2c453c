"""Issue 14, the backfill on OKX: real ccxt okx against the simulator's OKX venue, beside Binance.

Candles paged newest first (100 a page on history-candles) equal the market model exactly, on
PostgreSQL and SQLite; a re-run asks for no candles; Binance spot and perpetuals and OKX spot and
swap collect concurrently in one run (``venues:``); a SIGKILL and a restart converge; pushing the
per-endpoint 2 s limits earns at most one 429 per endpoint; bad venue input gets one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from data_collector.backfill.multi_venue import MultiVenueCollector
from data_collector.backfill.report import PairReport
from data_collector.config import load_config
from data_collector.markets import DAY_MS, HOUR_MS, MINUTE_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support.backfill import (
    RANGE_START_MS,
    count_rows,
    kill_when_stored,
    run_script,
    write_config,
)
from tests.support.okx_truth import model_candles, model_trades
from tests.support.services import PG_ADMIN_DSN
from tests.support.two_venues import (
    OKX_SYMBOLS,
    binance_candle_requests,
    binance_venue,
    candle_requests,
    okx_venue,
    stored_rows,
    truth_rows,
    venues_config,
)

SPOT = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    settings = OkxSettings(swaps=["BTC/USDT"])
    async with SimulatedExchange(symbols=SPOT, perpetuals=["BTC/USDT:USDT"], seed=7, okx=settings) as s:
        yield s


async def okx_rows_equal_truth(
    collector: OptimizedDataCollector, sim: SimulatedExchange, timeframes: list[str], start: int, end: int
) -> None:
    for symbol in OKX_SYMBOLS:
        inst = await collector.instrument(symbol)
        assert inst.exchange == "sim-okx"
        for tf in timeframes:
            want = [tuple(c) for c in model_candles(sim, symbol, tf, start, end)]
            got = await collector.store.load(inst.id, tf, start, end)
            assert want, (symbol, tf)
            assert got == want, (symbol, tf, len(got), len(want))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_okx_candles_exact_and_rerun_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange, backend: str, tmp_path: Path
) -> None:
    """Several timeframes, spot and swap, over history-candles (100 a page, newest first) and
    recent candles: every stored candle equals the model; a second run asks for no candles."""
    config = venues_config(base_config, [okx_venue(sim)], timeframes=["1m", "15m", "1h", "1d"])
    if backend == "sqlite":
        config["database"] = {"url": f"sqlite+aiosqlite:///{tmp_path / 'okx.db'}"}
    start = RANGE_START_MS + 13 * MINUTE_MS  # not on a page or hour boundary
    end = start + 5 * HOUR_MS + 7 * MINUTE_MS
    # One venue through venues: the collector of its derived config is what a run uses.
    [(where, venue)] = load_config(config).venue_configs()
    assert where == "venues[0] (sim-okx)" and venue.exchange.ohlcv_page_limit == 100
    async with OptimizedDataCollector(venue) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        await okx_rows_equal_truth(collector, sim, ["1m", "15m", "1h"], start, end)
        days = await collector.collect(start=start - 20 * DAY_MS, end=end, timeframes=["1h", "1d"])
        assert days.ok, days.summary()
        await okx_rows_equal_truth(collector, sim, ["1h", "1d"], start - 20 * DAY_MS, end)
        assert sim.okx.requests()["endpoints"].get("market/history-candles", 0) > 0
        before = candle_requests(sim)
        again = await collector.collect(start=start - 20 * DAY_MS, end=end, timeframes=["1h", "1d"])
        assert again.ok and again.rows_written == 0, again.summary()
        assert candle_requests(sim) == before
    assert sim.okx.requests()["429"] == 0


async def test_okx_funding_newest_first_pages_exact_and_rerun_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    """60 days of 8 h funding (180 settlements): two newest-first pages of 100; every stored
    rate equals the model's, a second run asks nothing."""
    now = sim.clock.now_ms()
    start, end = now - 60 * DAY_MS + 5 * HOUR_MS, now - DAY_MS
    venue = okx_venue(sim, symbols=["BTC/USDT:USDT"], data_types=["funding_rates"])
    [(_, config)] = load_config(venues_config(base_config, [venue], timeframes=["1h"])).venue_configs()
    perp = sim.okx.venue.perp(sim.okx.venue.instrument("BTC/USDT:USDT"))
    times = perp.funding_times(start, end - 1, now)
    want = [(t, r / 1e8, None) for t, r in zip(times, perp.funding_rates(times), strict=True)]
    assert len(want) > 100
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(start=start, end=end)
        assert report.ok, report.summary()
        inst = await collector.instrument("BTC/USDT:USDT")
        assert await collector.store.load_funding(inst.id, start, end) == want
        asked = sim.okx.requests()["endpoints"]["public/funding-rate-history"]
        assert asked >= 2
        again = await collector.collect(start=start, end=end)
        assert again.ok and again.rows_written == 0, again.summary()
        assert sim.okx.requests()["endpoints"]["public/funding-rate-history"] == asked


def trade_truth(sim: SimulatedExchange, symbol: str, start: int, end: int) -> list[tuple[Any, ...]]:
    return [
        (int(t["id"]), t["ts"], t["price"], t["amount"], int(t["id"]), int(t["id"]), t["side"] == "sell")
        for t in model_trades(sim, symbol, start, end)
    ]


async def test_okx_trades_walked_back_exact_resumed_and_rerun_asks_nothing(
    base_config: dict[str, Any], sim: SimulatedExchange
) -> None:
    """history-trades, 100 a page newest first, spot and swap: a run stopped after a few pages
    resumes exactly (the pages written prove only what they hold), a wider range adds only its
    new ends, and a re-run asks nothing."""
    now = sim.clock.now_ms()
    start, end = now - 3 * HOUR_MS + 12_345, now - 3 * HOUR_MS + 8 * MINUTE_MS
    venue = okx_venue(sim, data_types=["trades"])
    [(_, config)] = load_config(venues_config(base_config, [venue], timeframes=["1h"])).venue_configs()
    stopped: list[bool] = []

    def stop_after_a_few_pages(pair: PairReport) -> None:
        if pair.pages_done >= 2 and not stopped:
            stopped.append(True)
            collector.request_stop()

    async with OptimizedDataCollector(config, progress=stop_after_a_few_pages) as collector:
        first = await collector.collect(start=start, end=end)
        assert first.interrupted and stopped, first.summary()
        done = await collector.collect(start=start, end=end)
        assert done.ok, done.summary()
        for symbol in OKX_SYMBOLS:
            inst = await collector.instrument(symbol)
            assert await collector.store.load_trades(inst.id, start, end) == trade_truth(
                sim, symbol, start, end
            )
        wider = await collector.collect(start=start - MINUTE_MS, end=end + MINUTE_MS)
        assert wider.ok, wider.summary()
        for symbol in OKX_SYMBOLS:
            inst = await collector.instrument(symbol)
            got = await collector.store.load_trades(inst.id, start - MINUTE_MS, end + MINUTE_MS)
            want = trade_truth(sim, symbol, start - MINUTE_MS, end + MINUTE_MS)
            assert len(want) > 4 * 100, symbol  # several pages
            assert got == want, (symbol, len(got), len(want))
        asked = sim.okx.requests()["endpoints"]["market/history-trades"]
        again = await collector.collect(start=start - MINUTE_MS, end=end + MINUTE_MS)
        assert again.ok and again.rows_written == 0, again.summary()
        assert sim.okx.requests()["endpoints"]["market/history-trades"] == asked


async def test_binance_and_okx_spot_and_perpetual_in_one_run(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str
) -> None:
    """One run, four markets on two venues concurrently, one store: every row equals the truth,
    each under its venue's label; a second run asks neither venue for a candle."""
    start, end = RANGE_START_MS + 7 * MINUTE_MS, RANGE_START_MS + 3 * DAY_MS
    timeframes = ["1h", "4h"]
    config = venues_config(base_config, [binance_venue(sim), okx_venue(sim)], timeframes=timeframes)
    config["start"], config["end"] = _iso(start), _iso(end)
    async with MultiVenueCollector(load_config(config)) as collector:
        report = await collector.collect()
        assert report.ok, report.summary()
        assert len(report.pairs) == 4 * len(timeframes)
        assert {k.split()[0] for k in report.pairs} == {"sim-binance", "sim-binanceusdm", "sim-okx"}
    assert await stored_rows(pg_schema) == truth_rows(sim, timeframes, start, end)
    okx_before, binance_before = candle_requests(sim), binance_candle_requests(sim)
    async with MultiVenueCollector(load_config(config)) as collector:
        again = await collector.collect()
    assert again.ok and again.rows_written == 0, again.summary()
    assert (candle_requests(sim), binance_candle_requests(sim)) == (okx_before, binance_before)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


@pytest.mark.parametrize("hours", [40, pytest.param(160, marks=pytest.mark.slow)])
async def test_pushing_okx_limits_earns_at_most_one_429_per_endpoint(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, hours: int
) -> None:
    """1m candles of two markets over 40 hours (160, slow): 48 (192) history-candles requests,
    2.4 (9.6) times the endpoint's 20 per 2 s, all wanted at once. The limiter spreads them over
    the windows: at most one 429 per endpoint, no retry, and every candle stored."""
    start, end = RANGE_START_MS, RANGE_START_MS + hours * HOUR_MS
    # Every page wanted at once, and a call timeout (2.5 s) shorter than the queue's wait.
    performance = {"api_rate_limit": 100_000, "pages_in_flight": 1000, "pages_in_flight_per_pair": 1000}
    config = venues_config(
        base_config, [okx_venue(sim, timeout_s=1.0)], timeframes=["1m"], performance=performance
    )
    config["start"], config["end"] = _iso(start), _iso(end)
    async with MultiVenueCollector(load_config(config)) as collector:
        report = await collector.collect()
        assert report.ok, report.summary()
    # Pages waiting for their endpoint's window neither time out nor retry.
    assert report.retries == report.http_429 <= 1, report.summary()
    counts = sim.okx.requests()
    assert counts["endpoints"]["market/history-candles"] >= 2 * hours * 60 / 100
    assert all(n <= 1 for n in counts["429_by_endpoint"].values()), counts
    want = sorted(
        ("sim-okx", s, "1m", *c) for s in OKX_SYMBOLS for c in model_candles(sim, s, "1m", start, end)
    )
    assert await stored_rows(pg_schema) == want


BAD_VENUE_CASES = {
    "unknown venue id": (
        {"id": "notavenue"},
        "config.yaml: venues.1.id: 'notavenue' is not a ccxt exchange id",
    ),
    "symbol not on the venue": ({"symbols": ["XRP/USDT"]}, "venues[1] (sim-okx): unknown symbol 'XRP/USDT'"),
    "data type the venue lacks": ({"data_types": ["premium_ohlcv"]}, "premium_ohlcv not collected from okx"),
    "--symbols beside venues": ({}, "--symbols: with venues: in the config each venue lists its own"),
}


@pytest.mark.parametrize("case", BAD_VENUE_CASES)
async def test_bad_venue_input_one_line_and_exit_code(
    case: str, base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    """Through the real script: one line on stderr naming the venue entry, exit code 2, no row."""
    change, expected = BAD_VENUE_CASES[case]
    config = venues_config(base_config, [binance_venue(sim), {**okx_venue(sim), **change}], timeframes=["1h"])
    config["start"], config["end"] = "3d", "1d"
    path = write_config(tmp_path / "config.yaml", config)
    args = ["--symbols", "BTC/USDT"] if case == "--symbols beside venues" else []
    code, out, err = await run_script("--config", str(path), *args, cwd=tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert await count_rows(pg_schema) == 0


@pytest.mark.slow
async def test_sigkill_and_restart_converge_on_both_venues(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    """The script on Binance and OKX (spot and perpetual each), SIGKILLed while OKX pages
    newest-first history candles; the restart stores exactly the truth, a third run asks nothing."""
    start, end = RANGE_START_MS, RANGE_START_MS + 2 * DAY_MS
    config = venues_config(base_config, [binance_venue(sim), okx_venue(sim)], timeframes=["1m", "1h"])
    config["start"], config["end"] = _iso(start), _iso(end)
    path = write_config(tmp_path / "config.yaml", config)
    want = truth_rows(sim, ["1m", "1h"], start, end)

    async def stored() -> int:
        return await count_rows(pg_schema)

    await kill_when_stored(path, tmp_path, stored, 0.7 * len(want), "70% of the candles stored")
    assert await stored() < len(want)
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == 0, out + err
    assert await stored_rows(pg_schema) == want
    okx_before, binance_before = candle_requests(sim), binance_candle_requests(sim)
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == 0, out + err
    assert (candle_requests(sim), binance_candle_requests(sim)) == (okx_before, binance_before)


@pytest.mark.slow
async def test_sigkill_and_restart_converge_on_okx_trades(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, tmp_path: Path
) -> None:
    """The script on OKX trades (spot and swap, walked back 100 a page), SIGKILLed mid-way: the
    restart stores exactly the model's trades, and a third run asks nothing."""
    now = sim.clock.now_ms()
    start, end = now - 3 * HOUR_MS + 12_345, now - 3 * HOUR_MS + 15 * MINUTE_MS
    venue = okx_venue(sim, data_types=["trades"])
    config = venues_config(base_config, [venue], timeframes=["1h"])
    config["start"], config["end"] = _iso(start), _iso(end)
    path = write_config(tmp_path / "config.yaml", config)
    want = {s: trade_truth(sim, s, start, end) for s in OKX_SYMBOLS}

    async def stored() -> int:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            if await conn.fetchval("SELECT to_regclass($1)", f"{pg_schema}.trades") is None:
                return 0
            return int(await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".trades'))
        finally:
            await conn.close()

    total = sum(len(v) for v in want.values())
    await kill_when_stored(path, tmp_path, stored, 0.3 * total, "30% of the trades stored")
    assert await stored() < total
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == 0, out + err
    [(_, venue_config)] = load_config(config).venue_configs()
    async with OptimizedDataCollector(venue_config) as collector:
        for symbol in OKX_SYMBOLS:
            inst = await collector.instrument(symbol)
            assert await collector.store.load_trades(inst.id, start, end) == want[symbol], symbol
    asked = sim.okx.requests()["endpoints"]["market/history-trades"]
    code, out, err = await run_script("--config", str(path), cwd=tmp_path)
    assert code == 0, out + err
    assert sim.okx.requests()["endpoints"]["market/history-trades"] == asked
