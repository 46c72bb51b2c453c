"""Helpers of the gap-free fault tests (issue 15), shared by the Binance and OKX ones: a fast
simulated clock, the repair check and the accounting of marked holes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis

from data_collector.simulator import SimulatedExchange
from data_collector.storage.trades import Trade, TradeCoverage
from tests.chaos.report import ScenarioReport
from tests.support.services import REDIS_URL
from tests.support.stream_accounting import holes_and_markers
from tests.support.streaming import entries, gap_entries, okx_stream_config, wait_for


@asynccontextmanager
async def fast_clock(sim: SimulatedExchange, speed: int) -> AsyncIterator[None]:
    """Run ``sim``'s clock ``speed`` times faster than wall time while inside (the market's tapes
    are then that much denser) and until it is frozen (``sim.clock.freeze()`` stops the flow);
    stopped, not frozen, on the way out."""
    running = True

    async def run() -> None:
        while running:
            if sim.clock.frozen_ms is None:
                sim.clock.advance(20 * (speed - 1))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        running = False
        await asyncio.gather(task, return_exceptions=True)


async def drop_and_reconnect(
    streamer: Any, drop: Callable[[], object], report: ScenarioReport, n: int
) -> None:
    """Drop every WebSocket (``drop``), count the fault, wait for the streamer's ``n``-th
    reconnect, then let it read for half a second."""
    reconnects = streamer.get_metrics()["reconnects"]
    drop()
    report.fault("ws_drop")
    await wait_for(
        lambda: streamer.get_metrics()["reconnects"] > reconnects and streamer.connected,
        timeout_s=30,
        what=f"reconnect {n}",
    )
    await asyncio.sleep(0.5)


def all_repaired(client: redis.Redis, prefix: str, venue: str, channel: str) -> bool:
    """Whether every exact (``first_seq``) gap marker of ``channel`` has its ``repaired`` marker."""
    markers = [m for m in gap_entries(client, prefix, venue) if m["channel"] == channel]
    opened = sum(1 for m in markers if m.get("first_seq") and m["reason"] != "repaired")
    return opened == sum(1 for m in markers if m["reason"] == "repaired")


def unmarked_holes(
    times_ms: list[int], markers: list[dict[str, str]], hole_ms: int, slack_ms: int = 1000
) -> int:
    """Holes longer than ``hole_ms`` between consecutive event times of one stream that no gap
    marker of that stream covers (a marker covers a hole when it spans it, give or take
    ``slack_ms``)."""
    spans = [(int(m["from_ms"]), int(m["to_ms"])) for m in markers]
    holes = 0
    for a, b in zip(times_ms, times_ms[1:], strict=False):
        if b - a > hole_ms and not any(lo - slack_ms <= a and b <= hi + slack_ms for lo, hi in spans):
            holes += 1
    return holes


def okx_streamer_on(
    sim: SimulatedExchange, prefix: str, symbols: list[str], channels: list[str], **streaming: Any
) -> Any:
    """An ``OptimizedWebSocketStreamer`` of ``channels`` × ``symbols`` from ``sim``'s OKX venue;
    ``streaming``: more ``streaming`` settings."""
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    return OptimizedWebSocketStreamer(
        symbols=symbols,
        redis_client=REDIS_URL,
        channels=channels,
        config=okx_stream_config(sim, prefix, **streaming),
    )


def short_repairs(markers: list[dict[str, str]]) -> list[dict[str, str]]:
    """The ``repaired`` markers of exact gaps that wrote back fewer trades than the gap had
    (every exact gap should be fetched back whole)."""
    return [
        m for m in markers if m["reason"] == "repaired" and m.get("first_seq") and m["repaired"] != m["count"]
    ]


def stored_twice(client: redis.Redis, stream_key: str) -> tuple[int, int]:
    """``(ids stored twice, repaired ids in the live stream)`` of one trade stream, read raw (not
    merged by the reader): an id both in the live stream and in its companion ``@repair`` stream,
    or twice in either, counts; repair mode ``hold`` writes repaired ids into the live stream."""
    head, _, symbol = stream_key.rpartition(":")
    live = [e for _, e in entries(client, stream_key)]
    ids = [e["id"] for e in live] + [e["id"] for _, e in entries(client, f"{head}@repair:{symbol}")]
    return len(ids) - len(set(ids)), sum(1 for e in live if e.get("repaired"))


def open_trade_gaps(client: redis.Redis, prefix: str, venue: str) -> set[tuple[str, str, str]]:
    """``(stream, first_seq, last_seq)`` of every exact gap marker without its ``repaired`` one."""
    markers = gap_entries(client, prefix, venue)
    opened = {(m["stream"], m["first_seq"], m["last_seq"]) for m in markers if m.get("first_seq")}
    return opened - {
        (m["stream"], m["first_seq"], m["last_seq"])
        for m in markers
        if m["reason"] == "repaired" and m.get("first_seq")  # a kline refill's names no ids
    }


def restart_marked(
    client: redis.Redis, prefix: str, venue: str, streams: set[str], kline_streams: int
) -> bool:
    """Whether each of ``streams`` has a ``redis_restart`` marker, every exact gap its
    ``repaired`` one, and ``kline_streams`` kline streams their refill's ``repaired`` marker."""
    state = restart_state(client, prefix, venue, streams)
    return (
        not state["unmarked"] and state["opened"] == state["repaired"] and state["refilled"] == kline_streams
    )


def restart_state(client: redis.Redis, prefix: str, venue: str, streams: set[str]) -> dict[str, Any]:
    """What :func:`restart_marked` checks: ``streams`` without a ``redis_restart`` marker, exact
    gaps opened and repaired, kline streams refilled (shown when the wait times out)."""
    markers = gap_entries(client, prefix, venue)
    marked = {m["stream"] for m in markers if m["reason"] == "redis_restart"}
    refilled = {
        m["stream"] for m in markers if m["channel"].startswith("kline_") and m["reason"] == "repaired"
    }
    return {
        "unmarked": sorted(streams - marked),
        "opened": sum(1 for m in markers if m.get("first_seq") and m["reason"] != "repaired"),
        "repaired": sum(1 for m in markers if m.get("first_seq") and m["reason"] == "repaired"),
        "refilled": len(refilled),
    }


def restart_unmarked(client: redis.Redis, markers: list[dict[str, str]], key: str) -> bool:
    """Whether stream ``key`` lacks a ``redis_restart`` marker over all it lost: everything before
    its oldest entry left (give or take a minute, a candle's)."""
    oldest = client.xrange(key, count=1)
    first_ms = int(oldest[0][0].decode().partition("-")[0]) if oldest else 0
    mine = [m for m in markers if m["stream"] == key and m["reason"] == "redis_restart"]
    return not any(int(m["from_ms"]) == 0 and int(m["to_ms"]) >= first_ms - 60_000 for m in mine)


def okx_depth_seams(client: redis.Redis, key: str, markers: list[dict[str, str]]) -> tuple[int, int, int]:
    """``(holes, unmarked holes, stray markers)`` of the OKX ``books`` stream ``key`` (see
    :func:`~tests.support.stream_accounting.holes_and_markers`; ``markers`` may be every
    venue's). Events were lost before a message whose ``prevSeqId`` is not the ``seqId`` of the
    message stored before it; a snapshot that restates the state stored just before it (the same
    ``seqId``) lost nothing."""
    book = [e for _, e in entries(client, key)]
    breaks = [
        i > 0
        and book[i]["prev_update_id"] != book[i - 1]["update_id"]
        and not (book[i]["snapshot"] and book[i]["update_id"] == book[i - 1]["update_id"])
        for i in range(len(book))
    ]
    windows = [(int(m["from_ms"]), int(m["to_ms"])) for m in markers if m["stream"] == key]
    return holes_and_markers([e["event_ms"] for e in book], breaks, windows)


#: REST's trades of a symbol with ``start_ms <= time < end_ms``: ``(id, time, price, amount)``.
Truth = Callable[[str, int, int], list[tuple[int, int, float, float]]]


async def stored_trades(
    database: dict[str, Any], symbol: str, venue: str
) -> tuple[list[Trade], list[TradeCoverage]]:
    """Every stored trade of ``symbol`` (labelled ``venue``) and its coverage rows, merged (read
    with the default command timeout: the streamer's may be short on purpose, and this read can
    wait on its DDL)."""
    from data_collector.config import load_config
    from data_collector.storage import open_store

    reading = {key: value for key, value in database.items() if key != "command_timeout_s"}
    store = open_store(load_config({"database": reading, "logging": {"file": None}}))
    await store.initialize()
    try:
        base, quote = symbol.split(":")[0].split("/")
        inst = await store.ensure_instrument(
            venue, symbol, base=base, quote=quote, market_type="swap" if ":" in symbol else "spot"
        )
        return await store.load_trades(inst.id, 0, 2**62), await store.trade_coverage(inst.id)
    finally:
        await store.close()


@dataclass
class TradesTable:
    """The trades table a fault scenario streams into (``streaming.store_trades``) after a trade
    backfill of the window before it, and the REST truth it must equal from ``start_ms`` on."""

    database: dict[str, Any]
    venue: str
    symbols: list[str]
    truth: Truth
    start_ms: int = 0

    @classmethod
    def binance(cls, database: dict[str, Any], sim: SimulatedExchange, symbols: list[str]) -> TradesTable:
        def truth(symbol: str, start_ms: int, end_ms: int) -> list[tuple[int, int, float, float]]:
            rows = sim.agg_trades(symbol, start_ms, end_ms)
            return [(t["a"], t["T"], float(t["p"]), float(t["q"])) for t in rows]

        return cls(database, "sim-binance", symbols, truth)

    @classmethod
    def okx(cls, database: dict[str, Any], sim: SimulatedExchange, symbols: list[str]) -> TradesTable:
        def truth(symbol: str, start_ms: int, end_ms: int) -> list[tuple[int, int, float, float]]:
            rows = sim.okx.venue.trades(symbol, start_ms, end_ms)
            return [(int(t["tradeId"]), int(t["ts"]), float(t["px"]), float(t["sz"])) for t in rows]

        return cls(database, "sim-okx", symbols, truth)

    async def backfill(
        self, base_config: dict[str, Any], sim: SimulatedExchange, start_ms: int, freeze: bool = False
    ) -> None:
        """The trade backfill (through the collector) of ``start_ms`` to now: the table's first
        part. ``freeze`` (a scenario on a fast clock) stops the market for it and leaves it
        stopped until the scenario's streamer is up (see :func:`thaw_when_connected`): a fast
        clock would widen the seam between the backfill and the stream, which the streamer's own
        trade backfill job has to close. A scenario on real time keeps its clock untouched (the
        streamer's clock is real time too)."""
        from data_collector.optimized_collector import OptimizedDataCollector
        from tests.support.backfill import config_for

        extra: dict[str, Any] = {"symbols": self.symbols, "data_types": ["trades"], "timeframes": ["1m"]}
        if self.venue == "sim-okx":
            extra["exchange"] = {**okx_stream_config(sim, "")["exchange"], "timeout_s": 2.0}
        if freeze:
            sim.clock.freeze()
        async with OptimizedDataCollector(config_for(base_config, sim, **extra)) as collector:
            done = await collector.collect(symbols=self.symbols, start=start_ms, end=sim.clock.now_ms())
        assert done.rows_by_type.get("trades", 0) > 0, done
        self.start_ms = start_ms

    async def whole(self, end_ms: int) -> bool:
        """Whether every symbol's table runs under one coverage row to REST's last trade before ``end_ms``."""
        for symbol in self.symbols:
            trades, cover = await stored_trades(self.database, symbol, self.venue)
            want = self.truth(symbol, end_ms - 60_000, end_ms)
            if len(cover) != 1 or not trades or (want and cover[0].end_id <= want[-1][0]):
                return False
        return True

    async def account(self, end_ms: int) -> dict[str, int]:
        """The ``table_*`` figures over ``[start_ms, end_ms)``: REST's trades expected, found, lost,
        duplicated, stored ones that differ from REST's (or that REST lacks), and seams (coverage
        rows past one, or one that does not span the window)."""
        out = dict.fromkeys(("expected", "found", "lost", "duplicated", "wrong", "seams"), 0)
        for symbol in self.symbols:
            trades, cover = await stored_trades(self.database, symbol, self.venue)
            got = [(t[0], t[1], t[2], t[3]) for t in trades if self.start_ms <= t[1] < end_ms]
            want = self.truth(symbol, self.start_ms, end_ms)
            ids, truth = [g[0] for g in got], {w[0]: w for w in want}
            out["expected"] += len(truth)
            out["found"] += len(set(ids) & set(truth))
            out["lost"] += len(set(truth) - set(ids))
            out["duplicated"] += len(ids) - len(set(ids))
            out["wrong"] += sum(1 for g in got if truth.get(g[0]) != g)
            spans = (
                bool(want) and bool(cover) and cover[0].first_id <= want[0][0] < want[-1][0] < cover[0].end_id
            )
            out["seams"] += max(len(cover) - 1, 0) + (not spans)
            if set(truth) - set(ids):
                missing = sorted(set(truth) - set(ids))
                print(
                    f"TABLE LOST {symbol}: {len(missing)} ids, {missing[0]}..{missing[-1]}; coverage {cover}"
                )
        return {f"table_{k}": v for k, v in out.items()}


def assert_table_equals_rest(figures: dict[str, int]) -> None:
    """The :meth:`TradesTable.account` figures of a table that equals REST's truth: something
    expected, every trade found once, none differing, no seam."""
    lost, dup, wrong, seams = (figures[f"table_{k}"] for k in ("lost", "duplicated", "wrong", "seams"))
    assert figures["table_expected"] > 0 and figures["table_found"] == figures["table_expected"], figures
    assert lost == 0 and dup == 0 and wrong == 0 and seams == 0, figures


def thaw_when_connected(sim: SimulatedExchange, connections: Callable[[], int]) -> Callable[[int], Any]:
    """A :class:`~tests.chaos.helpers.KillPlan` ``started`` hook: the first run's WebSockets are
    open (``connections`` counts them), so the market frozen by :meth:`TradesTable.backfill`
    runs again; the seam between the backfill and the stream stays a few simulated seconds."""

    async def started(run: int) -> None:
        if run == 0:
            await wait_for(lambda: connections() > 0, timeout_s=30, what="the first run connected")
            sim.clock.unfreeze()

    return started
