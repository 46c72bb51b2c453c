"""One-time repair: remove simulated candles that older versions stored under a real venue's label.

Before the venue label (``exchange.name``) existed, ``--demo`` wrote the simulator's candles into
the configured database as exchange ``binance``, with coverage, and the listing time of the
simulator's market. A later real backfill trusted that coverage and fetched nothing.

The simulator is deterministic: every candle is a pure function of ``(seed, symbol, minute)``,
and the demo always used seed 42 and the default market (listings and maintenance gaps from the
seed). So a stored candle whose open time, open, high, low, close and volume all equal the
simulator's is provably a demo row; real prices never agree on all five to the last bit. Only
those rows are removed:

* each matching candle is deleted (nothing is lost: the simulator regenerates it exactly);
* the coverage of the span those candles occupy (first to last, both kinds) is cut, so the next
  real run fetches that span from the exchange; real rows inside it are kept and simply skipped;
* an ``instruments.listing_ms`` equal to the simulator's listing is cleared, with the ``empty``
  coverage recorded before it, so the next run asks the exchange for the real listing.

Nothing else is touched. A dry run (the default) reports what would change; ``apply=True``
changes it, one (instrument, timeframe) per transaction, so an interrupted run leaves whole
steps behind and a second run finishes the rest. Running it again is a no-op. Run it while no
collector writes to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from data_collector.errors import UsageError
from data_collector.markets import DAY_MS, TIMEFRAME_MS, TIMEFRAMES, candle_open_ms, next_open_ms
from data_collector.storage.base import Candle, CoverageRange, Instrument
from data_collector.storage.store import CandleStore

log = logging.getLogger(__name__)

#: The simulator seed of every ``--demo``: its candles are a pure function of (seed, symbol, minute).
DEMO_SEED = 42
#: Candles compared per query.
CHUNK_CANDLES = 20_000
#: Before any timestamp a store holds.
_BEGINNING_MS = -(2**62)


@dataclass
class PairFinding:
    """What the migration found (or did) for one (symbol, timeframe)."""

    symbol: str
    timeframe: str
    #: Rows equal to the simulator's candles: removed.
    simulated: int = 0
    #: Other rows: kept.
    kept: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    #: Coverage taken out (fetched again by the next run).
    uncover: list[CoverageRange] = field(default_factory=list)
    simulated_ts: list[int] = field(default_factory=list, repr=False)


@dataclass
class DemoMigrationReport:
    """The outcome of :func:`migrate_demo_rows`; ``summary()`` is what the CLI prints."""

    exchange: str
    seed: int
    applied: bool
    pairs: list[PairFinding] = field(default_factory=list)
    #: Symbols whose stored listing time was the simulator's (cleared).
    listings_reset: list[str] = field(default_factory=list)
    #: Symbols the simulator cannot model (left alone), with why.
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def simulated_rows(self) -> int:
        return sum(p.simulated for p in self.pairs)

    @property
    def kept_rows(self) -> int:
        return sum(p.kept for p in self.pairs)

    @property
    def changes(self) -> bool:
        """Whether anything was (or, in a dry run, would be) changed."""
        return bool(self.listings_reset or any(p.simulated or p.uncover for p in self.pairs))

    def summary(self) -> str:
        verb = "removed" if self.applied else "to remove"
        lines = [
            f"demo rows under exchange {self.exchange!r} (simulator seed {self.seed}): "
            f"{self.simulated_rows:,} simulated rows {verb}, {self.kept_rows:,} other rows kept"
        ]
        for p in self.pairs:
            if p.simulated:
                lines.append(
                    f"  {p.symbol} {p.timeframe}: {p.simulated:,} simulated "
                    f"({_iso(p.first_ms)} .. {_iso(p.last_ms)} UTC), {p.kept:,} kept"
                )
        cleared = "cleared" if self.applied else "would be cleared"
        for symbol in self.listings_reset:
            lines.append(f"  {symbol}: the stored listing time is the simulator's; {cleared}")
        for symbol, why in self.skipped.items():
            lines.append(f"  {symbol}: not checked ({why})")
        if not self.changes:
            lines.append("nothing to do")
        elif not self.applied:
            lines.append("dry run: nothing was changed; run again with --apply to do it")
        return "\n".join(lines)


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _floats(kline: list[Any]) -> Candle:
    return (
        int(kline[0]),
        float(kline[1]),
        float(kline[2]),
        float(kline[3]),
        float(kline[4]),
        float(kline[5]),
    )


async def migrate_demo_rows(
    store: CandleStore,
    *,
    exchange: str = "binance",
    seed: int = DEMO_SEED,
    apply: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> DemoMigrationReport:
    """Find (and with ``apply``, remove) simulator candles stored under the label ``exchange``.

    Args:
        store: an initialised store; the caller owns it.
        exchange: the venue label the demo wrote under (``binance`` in versions before
            ``exchange.name``).
        seed: the simulator seed the demo used (always 42).
        apply: change the database; the default is a dry run that only reports.
        on_progress: called with a short line per instrument checked.

    Returns:
        What was found, and removed when ``apply`` is set.
    """
    from data_collector.simulator import SimulatedExchange

    report = DemoMigrationReport(exchange=exchange, seed=seed, applied=apply)
    for instrument in await store.instruments(exchange):
        try:
            sim = SimulatedExchange(symbols=[instrument.symbol], seed=seed)
        except UsageError as exc:
            report.skipped[instrument.symbol] = str(exc)
            continue
        if on_progress is not None:
            on_progress(f"checking {exchange} {instrument.symbol}")
        await _migrate_instrument(store, instrument, sim, report)
    return report


async def _migrate_instrument(
    store: CandleStore, instrument: Instrument, sim: Any, report: DemoMigrationReport
) -> None:
    symbol = instrument.symbol
    listing_ms = int(sim.market(symbol).listing_ms)
    listing_is_sim = instrument.listing_ms is not None and instrument.listing_ms == _sim_first_candle(
        sim, symbol, listing_ms
    )
    if listing_is_sim:
        report.listings_reset.append(symbol)
    for timeframe in TIMEFRAMES:
        pair = await _find_pair(store, instrument, timeframe, sim, listing_ms)
        if pair is None:
            continue
        if pair.simulated:
            end = next_open_ms(pair.last_ms or 0, timeframe)
            pair.uncover += [CoverageRange(pair.first_ms or 0, end, k) for k in ("data", "empty")]
        if listing_is_sim:
            pair.uncover.append(CoverageRange(_BEGINNING_MS, candle_open_ms(listing_ms, timeframe), "empty"))
        if not pair.simulated and not pair.kept and not pair.uncover:
            continue
        report.pairs.append(pair)
        if report.applied and (pair.simulated_ts or pair.uncover):
            removed = await store.remove_candles(instrument.id, timeframe, pair.simulated_ts, pair.uncover)
            log.info(
                "removed %d simulated %s %s candles under %r", removed, symbol, timeframe, report.exchange
            )
    if listing_is_sim and report.applied:
        # Last: a run cut short before here finds the listing again and clears it then.
        await store.set_listing(instrument.id, None)


def _sim_first_candle(sim: Any, symbol: str, listing_ms: int) -> int | None:
    """The simulator's first 1m candle (what the collector stores as the listing)."""
    first = sim.klines(symbol, "1m", listing_ms, listing_ms + DAY_MS)
    return int(first[0][0]) if first else None


async def _find_pair(
    store: CandleStore, instrument: Instrument, timeframe: str, sim: Any, listing_ms: int
) -> PairFinding | None:
    latest = await store.latest_ts(instrument.id, timeframe)
    if latest is None and not await store.coverage(instrument.id, timeframe):
        return None
    pair = PairFinding(instrument.symbol, timeframe)
    if latest is None:
        return pair
    # The simulator has nothing before its listing, so nothing earlier can be a demo row.
    start = candle_open_ms(listing_ms, timeframe)
    step = TIMEFRAME_MS.get(timeframe, 31 * DAY_MS) * CHUNK_CANDLES
    end = latest + 1
    while start < end:
        stop = min(start + step, end)
        stored = await store.load(instrument.id, timeframe, start, stop)
        if stored:
            truth = {
                c[0]: c
                for c in (_floats(k) for k in sim.klines(instrument.symbol, timeframe, stored[0][0], stop))
            }
            for row in stored:
                if truth.get(int(row[0])) == tuple(row):
                    pair.simulated_ts.append(int(row[0]))
                else:
                    pair.kept += 1
        start = stop
    # Rows before the simulator's listing were not scanned: they are kept as they are.
    pair.simulated = len(pair.simulated_ts)
    if pair.simulated_ts:
        pair.first_ms, pair.last_ms = pair.simulated_ts[0], pair.simulated_ts[-1]
    return pair
