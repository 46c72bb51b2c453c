"""Issue 15, live into the store: streamed trades extend the backfilled trades table with no seam.

Acceptance 4: a trade backfill of the past, then the streamer (a subprocess) with
``streaming.store_trades``, SIGKILLed while trades flow and the market trades on, restarted,
and streaming again: the trades table then equals the simulator's REST truth for the whole
window, backfilled part included, as one coverage row (no seam at the backfill's end, none at
the kill). Acceptance 5: a gap wider than ``streaming.repair_max_ids`` is handed to the trade
backfill, which closes it (its hole is reported closed and the coverage runs through it).
Real PostgreSQL, Redis and the simulator, on both venues: Binance's aggTrades (spot and USDⓈ-M
perpetuals, by aggregate-trade id, REST ``aggTrades``) and OKX's trades (spot and swaps, by
``tradeId``, REST ``history-trades``, the simulator's tape at ``ws_rate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from data_collector.errors import UsageError
from data_collector.markets import MINUTE_MS
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import OkxSettings, SimulatedExchange
from data_collector.storage.trades import Trade, TradeCoverage
from data_collector.venues.okx.protocol import inst_id
from tests.support.backfill import config_for
from tests.support.gapfree import stored_trades as _stored
from tests.support.services import PG_ADMIN_DSN
from tests.support.streaming import okx_stream_config, stream_config, wait_for, wait_for_async

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "stream_market_data.py"
SPOT, PERP = "SOL/USDT", "SOL/USDT:USDT"
#: Trades a second per symbol (OKX's tape; Binance's aggTrades run at the market's own pace).
WS_RATE = 20


@dataclass(frozen=True)
class Venue:
    """One venue the trades go into the store from: its simulator, configs, truth and faults."""

    kind: str  # binance or okx
    symbol: str
    label: str
    channel: str

    @property
    def okx(self) -> bool:
        return self.kind == "okx"

    def simulator(self, seed: int) -> SimulatedExchange:
        if self.okx:
            swaps = [SPOT] if self.symbol == PERP else []
            return SimulatedExchange(symbols=[SPOT], seed=seed, okx=OkxSettings(swaps=swaps))
        perps = [PERP] if self.symbol == PERP else []
        return SimulatedExchange(symbols=[SPOT], perpetuals=perps, seed=seed, ws_rate=WS_RATE)

    def start_tape(self, sim: SimulatedExchange) -> None:
        """OKX's ``trades`` (WebSocket and REST alike) follow the ``ws_rate`` tape from now on."""
        if self.okx:
            sim.okx.hub.ws_rate = WS_RATE

    def history(self, sim: SimulatedExchange) -> int:
        """The start of a past to backfill: Binance's market has one; OKX's tape is begun and
        run on for three minutes (3,600 trades, 36 ``history-trades`` pages)."""
        if not self.okx:
            return sim.clock.now_ms() - 15 * MINUTE_MS
        start_ms = sim.clock.now_ms()
        self.start_tape(sim)
        sim.clock.advance(3 * MINUTE_MS)
        return start_ms

    def exchange(self, sim: SimulatedExchange, prefix: str = "") -> dict[str, Any]:
        if self.okx:
            return okx_stream_config(sim, prefix)["exchange"]
        return sim.futures_exchange_config() if self.symbol == PERP else sim.exchange_config()

    def backfill_config(self, base_config: dict[str, Any], sim: SimulatedExchange) -> dict[str, Any]:
        extra: dict[str, Any] = {"symbols": [self.symbol], "data_types": ["trades"], "timeframes": ["1m"]}
        if self.okx:
            extra["exchange"] = {**self.exchange(sim), "timeout_s": 2.0}
        elif self.symbol == PERP:
            extra["futures_exchange"] = {**sim.futures_exchange_config(), "timeout_s": 2.0}
        return config_for(base_config, sim, **extra)

    def stream_config(
        self, sim: SimulatedExchange, prefix: str, database: dict[str, Any], **st: Any
    ) -> dict[str, Any]:
        st = {"channels": [self.channel], "store_trades": True, **st}
        if self.okx:
            config = okx_stream_config(sim, prefix, **st)
        else:
            config = stream_config(sim, prefix, futures=self.symbol == PERP, **st)
        return {**config, "database": database, "symbols": [self.symbol]}

    def truth(
        self, sim: SimulatedExchange, start_ms: int, end_ms: int
    ) -> list[tuple[int, int, float, float]]:
        """REST's trades with ``start_ms <= time < end_ms``: ``(id, time, price, amount)``."""
        if self.okx:
            return [
                (int(t["tradeId"]), int(t["ts"]), float(t["px"]), float(t["sz"]))
                for t in sim.okx.venue.trades(self.symbol, start_ms, end_ms)
            ]
        rows = sim.agg_trades(self.symbol, start_ms, end_ms)
        return [(t["a"], t["T"], float(t["p"]), float(t["q"])) for t in rows]

    def skip_trades(self, sim: SimulatedExchange, count: int) -> None:
        """Lose the next ``count`` trade frames in flight (they stay on REST)."""
        if self.okx:
            sim.okx.hub.skip_trade_id(inst_id(self.symbol), count)
        else:
            sim.ws_faults.skip_trade_id(self.symbol, count)


BINANCE_SPOT = Venue("binance", SPOT, "sim-binance", "aggTrade")
BINANCE_USDM = Venue("binance", PERP, "sim-binanceusdm", "aggTrade")
OKX_SPOT = Venue("okx", SPOT, "sim-okx", "trade")
OKX_SWAP = Venue("okx", PERP, "sim-okx", "trade")


def venues(slow: Venue) -> pytest.MarkDecorator:
    """Binance spot, USDⓈ-M and OKX spot; ``slow`` runs with ``-m slow`` only (CI proves its
    path in another test: each test here still runs on both venues in CI)."""
    return pytest.mark.parametrize(
        "venue",
        [
            pytest.param(v, marks=pytest.mark.slow) if v is slow else v
            for v in (BINANCE_SPOT, BINANCE_USDM, OKX_SPOT)
        ],
        ids=["spot", "usdm", "okx"],
    )


def _assert_no_seam(
    sim: SimulatedExchange, venue: Venue, trades: list[Trade], cover: list[TradeCoverage], start_ms: int
) -> int:
    """The stored trades are REST's from ``start_ms`` to the newest stored, under one coverage row."""
    assert len(cover) == 1, f"the coverage has a seam: {cover}"
    end_ms = trades[-1][1]
    got = [(t[0], t[1], t[2], t[3]) for t in trades if start_ms <= t[1] < end_ms]
    want = venue.truth(sim, start_ms, end_ms)
    missing = sorted({w[0] for w in want} - {g[0] for g in got})
    assert not missing, f"{len(missing)} trades missing from the store, first {missing[:5]}"
    assert got == want
    assert cover[0].first_id <= want[0][0] and cover[0].end_id > want[-1][0]
    return len(got)


async def _backfill(base_config: dict[str, Any], sim: SimulatedExchange, venue: Venue, start_ms: int) -> None:
    config = venue.backfill_config(base_config, sim)
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(symbols=[venue.symbol], start=start_ms, end=sim.clock.now_ms())
    assert report.rows_by_type.get("trades", 0) > 0, report


async def _whole(sim: SimulatedExchange, database: dict[str, Any], symbol: str, venue: str) -> None:
    """Until the stored trades are under one coverage row (the market trading on meanwhile:
    holes close once older than the backfill's settle time)."""

    async def one_row() -> bool:
        sim.clock.advance(1_000)
        trades, cover = await _stored(database, symbol, venue)
        return len(cover) == 1 and cover[0].end_id > trades[-1][0]

    await wait_for_async(one_row, timeout_s=90, what="the trades table without a seam")


async def _closed_past(
    sim: SimulatedExchange,
    streamer: OptimizedWebSocketStreamer,
    database: dict[str, Any],
    symbol: str,
    venue: str,
) -> tuple[list[Trade], list[TradeCoverage]]:
    """The stored trades and coverage once the sink has found a hole, the backfill has closed
    every hole it was given (the job that stored one says so once it has seen its ids covered),
    and the table runs past the newest closed hole under one coverage row; the market trades on
    meanwhile (each poll a second on, so holes settle for the backfill whatever the machine's
    speed). One coverage row alone proves nothing here: the table has one before the sink is
    back and has seen its hole."""
    closer = streamer._service.trades.closer  # type: ignore[union-attr]
    assert closer is not None
    seen: list[tuple[list[Trade], list[TradeCoverage]]] = []

    async def closed_past() -> bool:
        sim.clock.advance(1_000)
        if not closer.closed or closer.pending:
            return False
        trades, cover = await _stored(database, symbol, venue)
        seen[:] = [(trades, cover)]
        return len(cover) == 1 and trades[-1][0] >= closer.closed[-1].end_id

    await wait_for_async(closed_past, timeout_s=90, what="the sink's hole closed and the table whole past it")
    return seen[0]


@contextlib.asynccontextmanager
async def _small_queue(
    base_config: dict[str, Any], redis_prefix: str, seed: int
) -> AsyncIterator[tuple[SimulatedExchange, dict[str, Any], OptimizedWebSocketStreamer, Trade]]:
    """A Binance spot streamer storing trades through a sink whose queue holds 10 and whose
    database answers within 1 s (a lock stalls it quickly), once it has stored a live trade."""
    database = {**base_config["database"], "command_timeout_s": 1.0}
    async with BINANCE_SPOT.simulator(seed=seed) as sim:
        config = BINANCE_SPOT.stream_config(sim, redis_prefix, database, store_trades_queue=10)
        async with _storing(sim, config, database, BINANCE_SPOT.symbol, BINANCE_SPOT.label) as (
            streamer,
            first,
        ):
            yield sim, database, streamer, first


@contextlib.asynccontextmanager
async def _stalled(
    sim: SimulatedExchange, streamer: OptimizedWebSocketStreamer, pg_schema: str
) -> AsyncIterator[None]:
    """The trades table locked (the database stalled for the sink) until a write has timed out
    on it (its retry is what must lose nothing), the sink's queue has overflowed and Redis has
    gone on; unlocked when the block ends."""
    lock = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        async with lock.transaction():
            await lock.execute(f'LOCK TABLE "{pg_schema}".trades IN ACCESS EXCLUSIVE MODE')
            before = streamer.get_metrics()

            async def dropping() -> bool:
                sim.clock.advance(1_000)
                m = streamer.get_metrics()
                return bool(
                    m["store_errors"] > before["store_errors"]
                    and m["trades_store_dropped"] > before["trades_store_dropped"]
                    and m["written"] > before["written"] + 20
                )

            await wait_for_async(dropping, timeout_s=60, what="a write timed out and trades dropped")
            yield
    finally:
        await lock.close()


@contextlib.asynccontextmanager
async def _storing(
    sim: SimulatedExchange, config: dict[str, Any], database: dict[str, Any], symbol: str, venue: str
) -> AsyncIterator[tuple[OptimizedWebSocketStreamer, Trade]]:
    """An in-process streamer of ``config``, once it has stored a live trade (given too)."""
    streamer = OptimizedWebSocketStreamer(symbols=[symbol], config=config)
    streamer.start()
    try:

        async def up() -> bool:  # the market moving, so the 1 s watchdog never finds it silent
            sim.clock.advance(1_000)
            return streamer.connected

        await wait_for_async(up, timeout_s=30, what="the streamer connected")

        async def stored_some() -> bool:
            sim.clock.advance(1_000)
            return bool((await _stored(database, symbol, venue))[0])

        await wait_for_async(stored_some, timeout_s=30, what="live trades stored")
        yield streamer, (await _stored(database, symbol, venue))[0][0]
    finally:
        await streamer.astop()


@pytest.mark.parametrize(
    "venue",
    [
        BINANCE_SPOT,
        # CI runs one market type of each venue here (Binance spot, OKX swap); the other two are
        # slow: their live trades into the store are proven in CI by the gap tests below (usdm
        # and okx), and their SIGKILL and restart are these same paths.
        pytest.param(BINANCE_USDM, marks=pytest.mark.slow),
        pytest.param(OKX_SPOT, marks=pytest.mark.slow),
        OKX_SWAP,
    ],
    ids=["spot", "usdm", "okx", "okx-swap"],
)
async def test_backfill_stream_sigkill_restart_stream_leaves_no_seam(
    base_config: dict[str, Any], redis_prefix: str, tmp_path: Path, venue: Venue
) -> None:
    symbol, label = venue.symbol, venue.label
    database = base_config["database"]
    async with venue.simulator(seed=15) as sim:
        start_ms = venue.history(sim)
        await _backfill(base_config, sim, venue, start_ms)
        backfilled, _ = await _stored(database, symbol, label)
        sim.clock.advance(30_000)  # the backfill's newest 10 s and more: the streamer's seam to close
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(venue.stream_config(sim, redis_prefix, database)))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        top = backfilled[-1][0]
        for run in range(2):
            out = open(tmp_path / f"stream{run}.out", "wb")  # noqa: ASYNC230 - a log sink
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(SCRIPT), "--config", str(path), "--status-interval", "0", "--log-level", "INFO",
                stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=str(tmp_path), env=env,
            )  # fmt: skip
            try:

                async def stored_live(top: int = top) -> bool:
                    sim.clock.advance(1_000)
                    trades, _ = await _stored(database, symbol, label)
                    return bool(trades) and trades[-1][0] > top + 20

                await wait_for_async(stored_live, timeout_s=60, what=f"run {run} storing live trades")
                if run == 0:
                    # Killed with trades in Redis and maybe in its queue; the market trades on.
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                    sim.clock.advance(20_000)
                    top = (await _stored(database, symbol, label))[0][-1][0]
                    continue

                await _whole(sim, database, symbol, label)
                proc.send_signal(signal.SIGINT)
                assert await asyncio.wait_for(proc.wait(), 30) in (0, 130)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                out.close()
        trades, cover = await _stored(database, symbol, label)
        count = _assert_no_seam(sim, venue, trades, cover, start_ms)
        if venue.okx:
            assert sim.okx.requests()["429"] == 0, "history-trades' 2 s windows were kept"
    print(f"\n{label}: {count} trades equal REST's over the backfill, two streamer runs and a SIGKILL")


# Binance spot's hole closed by the trade backfill: test_a_locked_trades_table_drops_no_trade_for_good.
@venues(slow=BINANCE_SPOT)
async def test_a_gap_wider_than_repair_max_ids_is_closed_by_the_trade_backfill(
    base_config: dict[str, Any], redis_prefix: str, venue: Venue
) -> None:
    symbol, label = venue.symbol, venue.label
    database = base_config["database"]
    async with venue.simulator(seed=16) as sim:
        venue.start_tape(sim)
        config = venue.stream_config(sim, redis_prefix, database, repair_max_ids=5)
        async with _storing(sim, config, database, symbol, label) as (streamer, first):
            venue.skip_trades(sim, 40)  # 40 ids lost in flight: wider than 5

            closer = streamer._service.trades.closer  # type: ignore[union-attr]
            assert closer is not None

            async def closed() -> bool:
                sim.clock.advance(1_000)
                return bool(closer.closed)

            await wait_for_async(closed, timeout_s=90, what="the wide gap closed by the backfill")
            hole = closer.closed[0]
            assert hole.end_id - hole.first_id >= 40, hole
            metrics = streamer.get_metrics()
            assert metrics["trade_holes_closed"] >= 1 and metrics["trades_store_dropped"] == 0
        trades, cover = await _stored(database, symbol, label)
        assert any(t[0] == hole.first_id for t in trades) and any(t[0] == hole.end_id - 1 for t in trades)
        _assert_no_seam(sim, venue, trades, cover, first[1] + 1)


# USDⓈ-M's REST repair: tests/streaming/test_stream_repair.py (futures); the store's read of the
# companion stream is the same for every venue.
@venues(slow=BINANCE_USDM)
async def test_a_gap_the_rest_repair_fetches_reaches_the_store_without_a_backfill(
    base_config: dict[str, Any], redis_prefix: str, venue: Venue
) -> None:
    """Ids lost in flight, fewer than ``repair_max_ids``: the REST repair's trades (written to the
    companion stream) go to the trades table too, and no backfill job is started for them."""
    symbol, label = venue.symbol, venue.label
    database = base_config["database"]
    async with venue.simulator(seed=18) as sim:
        venue.start_tape(sim)
        config = venue.stream_config(sim, redis_prefix, database)
        async with _storing(sim, config, database, symbol, label) as (streamer, first):
            venue.skip_trades(sim, 3)
            await wait_for(lambda: streamer.get_metrics()["repaired_trades"] >= 3, 60, "the REST repair")
            await _whole(sim, database, symbol, label)
            closer = streamer._service.trades.closer  # type: ignore[union-attr]
            assert closer is not None and not closer.closed and not closer.pending
        trades, cover = await _stored(database, symbol, label)
        _assert_no_seam(sim, venue, trades, cover, first[1] + 1)


async def test_a_locked_trades_table_drops_no_trade_for_good(
    base_config: dict[str, Any], redis_prefix: str, pg_schema: str
) -> None:
    """The database stalls (the trades table locked) while trades flow: the write in hand times
    out and is retried, Redis goes on, the sink's queue (10 here) overflows, and once the lock is
    gone the dropped ids are a hole the trade backfill closes: the table again equals REST's,
    under one coverage row."""
    symbol, label = BINANCE_SPOT.symbol, BINANCE_SPOT.label
    async with _small_queue(base_config, redis_prefix, seed=17) as (sim, database, streamer, first):
        async with _stalled(sim, streamer, pg_schema):
            pass
        trades, cover = await _closed_past(sim, streamer, database, symbol, label)
        metrics = streamer.get_metrics()
        assert metrics["dropped"] == 0 and metrics["trades_store_dropped"] > 0
        _assert_no_seam(sim, BINANCE_SPOT, trades, cover, first[1] + 1)


async def test_repaired_trades_a_full_sink_drops_are_closed_by_the_trade_backfill(
    base_config: dict[str, Any], redis_prefix: str, pg_schema: str
) -> None:
    """A gap the REST repair fetches while the sink's queue is full: the live trades past the gap
    are stored first (the sink leaves the gap's ids to the repair), then the table stalls, and
    the repaired trades come while the queue overflows. They are dropped like live ones and must
    be a hole the backfill closes too, or their ids are a seam for good."""
    symbol, label = BINANCE_SPOT.symbol, BINANCE_SPOT.label
    async with _small_queue(base_config, redis_prefix, seed=17) as (sim, database, streamer, first):
        repaired = streamer.get_metrics()["repaired_trades"]
        sim.hold_rest(after=sim.stats()["requests"])  # the repair's page waits
        try:
            BINANCE_SPOT.skip_trades(sim, 3)

            async def past_the_gap() -> bool:
                sim.clock.advance(1_000)
                _, cover = await _stored(database, symbol, label)
                return len(cover) > 1 and sim.rest_held > 0

            await wait_for_async(
                past_the_gap, timeout_s=30, what="trades past the gap stored, its repair held"
            )
            async with _stalled(sim, streamer, pg_schema):
                sim.release_rest()
                # Repaired while the queue is full (nothing drains it while the lock holds).
                await wait_for(
                    lambda: streamer.get_metrics()["repaired_trades"] >= repaired + 3, 60, "the repair"
                )
        finally:
            sim.release_rest()
        trades, cover = await _closed_past(sim, streamer, database, symbol, label)
        _assert_no_seam(sim, BINANCE_SPOT, trades, cover, first[1] + 1)


@pytest.mark.parametrize(
    ("exchange", "channels", "database", "says"),
    [
        ("binance", ["trade"], True, "add aggTrade to streaming.channels"),
        ("binance", ["aggTrade"], False, "needs a database"),
        ("okx", ["aggTrade"], True, "add trade to streaming.channels"),
        ("kraken", ["trade"], True, "needs trades with contiguous ids"),
    ],
)
def test_store_trades_it_cannot_honour_is_refused_in_one_line(
    base_config: dict[str, Any], exchange: str, channels: list[str], database: bool, says: str
) -> None:
    config: dict[str, Any] = {
        "exchange": {"id": exchange, "name": f"sim-{exchange}"},
        "redis": base_config["redis"],
        "logging": {"file": None},
        "streaming": {"store_trades": True},
    }
    if database:
        config["database"] = base_config["database"]
    with pytest.raises(UsageError, match=says) as refused:
        OptimizedWebSocketStreamer(symbols=[SPOT], channels=channels, config=config)
    assert "\n" not in str(refused.value)
