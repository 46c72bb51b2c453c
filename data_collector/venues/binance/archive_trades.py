"""Aggregate trades from the archive's daily ``aggTrades`` files, stitched to the id coverage.

:class:`~data_collector.backfill.trades_run.TradePair` hands its missing time spans to
:func:`archive_trade_spans` first. Each published whole day becomes one daily file
(``/data/spot/<period>/aggTrades/<SYM>/...`` or the USDⓈ-M futures tree's), downloaded, verified
against its CHECKSUM (retried once) and checked: ids strictly increasing and contiguous (aggregate
ids have no holes), times inside the day and never decreasing. A good file holds every trade of
its day, so it proves ``TradeCoverage(first_id, last_id + 1, day_start, day_end)``; it is queued in
batches of :data:`BATCH_TRADES`, each with the coverage it proves, exactly like REST pages, so a
kill leaves whole batches behind and the next run plans only what is not covered. The parts of
the spans no file covers (part days, days not yet published, files that failed twice, a 404)
go back to REST as spans whose id bounds are filled in from the files next to them.

Only daily files are used for trades: a monthly file of a busy symbol is millions of rows, and
the collector holds a whole verified file in memory (the checksum covers the whole zip).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from data_collector.backfill.trades_plan import TradeSpan
from data_collector.errors import PermanentError
from data_collector.storage.ranges import subtract_spans
from data_collector.storage.trades import Trade, TradeBatch, TradeCoverage
from data_collector.venues.binance.archive_fetch import ArchiveFailure
from data_collector.venues.binance.archive_plan import ArchiveFile, split_for_archives
from data_collector.venues.binance.archive_run import ArchiveSource, archive_symbol

if TYPE_CHECKING:
    from data_collector.backfill.trades_run import TradePair

#: Trades per queued batch (a REST page holds 1,000): bounds the write queue's memory.
BATCH_TRADES = 10_000
#: Monthly files are never asked for trades (see the module's docstring).
_NO_MONTHS_MS = 1 << 62
_COLUMNS = [f"c{i}" for i in range(8)]
_CONVERT = pa_csv.ConvertOptions(
    include_columns=_COLUMNS[:7],
    column_types={
        "c0": pa.int64(),
        "c1": pa.float64(),
        "c2": pa.float64(),
        "c3": pa.int64(),
        "c4": pa.int64(),
        "c5": pa.int64(),
        "c6": pa.bool_(),
    },
)
#: A time above this is in microseconds (spot files from 2025-01-01).
_MICROS_ABOVE = 10**14


@dataclass(frozen=True, slots=True)
class TradeColumns:
    """The columns of one file's trades (numpy arrays: a tenth of the memory of tuples)."""

    ids: np.ndarray
    ts: np.ndarray
    price: np.ndarray
    qty: np.ndarray
    first: np.ndarray
    last: np.ndarray
    maker: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, lo: int, hi: int) -> list[Trade]:
        """Rows ``lo..hi`` as stored trades."""
        cols = (self.ids, self.ts, self.price, self.qty, self.first, self.last, self.maker)
        return list(zip(*(c[lo:hi].tolist() for c in cols), strict=True))


def parse_agg_trades(csv: bytes) -> TradeColumns:
    """The trades of an aggTrades CSV; a header row (futures), a best-match column (spot) and µs
    times (spot from 2025) are found by the data."""
    if csv[:1].isalpha():
        csv = csv.partition(b"\n")[2]
    columns = csv[: csv.find(b"\n")].count(b",") + 1 if csv.strip() else 7
    if columns not in (7, 8):
        raise ArchiveFailure(f"aggTrades CSV with {columns} columns, expected 7 or 8")
    read = pa_csv.ReadOptions(column_names=_COLUMNS[:columns], use_threads=False)
    try:
        table = pa_csv.read_csv(io.BytesIO(csv), read_options=read, convert_options=_CONVERT)
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ArchiveFailure(f"unreadable CSV ({str(exc).splitlines()[0]})") from None
    if table.num_rows and any(table.column(i).null_count for i in range(7)):
        raise ArchiveFailure("aggTrades CSV with an empty field")
    ids, price, qty, first, last, ts, maker = (table.column(i).to_numpy() for i in range(7))
    ts = np.where(ts > _MICROS_ABOVE, ts // 1000, ts)
    return TradeColumns(ids, ts, price, qty, first, last, maker)


def check_trades(trades: TradeColumns, file: ArchiveFile) -> None:
    """Ids contiguous, times in order and inside the file's day, sane values; else the file is not used."""
    if len(trades) == 0:
        raise ArchiveFailure("no trades in the file")
    ids, ts = trades.ids, trades.ts
    if ids[-1] - ids[0] + 1 != len(ids) or (len(ids) > 1 and bool((np.diff(ids) != 1).any())):
        raise ArchiveFailure("trade ids not contiguous")
    if ts[0] < file.start_ms or ts[-1] >= file.end_ms or (len(ts) > 1 and bool((np.diff(ts) < 0).any())):
        raise ArchiveFailure("trade times out of order or outside the file")
    if not (trades.price > 0).all() or not (trades.qty > 0).all() or (trades.first > trades.last).any():
        raise ArchiveFailure("a trade with a non-positive price or quantity, or first id above last")


def agg_trades_path(exchange_symbol: str, file: ArchiveFile, futures: bool) -> str:
    """``/data/spot/<period>/aggTrades/<SYM>/<SYM>-aggTrades-<date>.zip`` (or ``/data/futures/um``)."""
    root = "/data/futures/um" if futures else "/data/spot"
    return f"{root}/{file.period}/aggTrades/{exchange_symbol}/{exchange_symbol}-aggTrades-{file.date}.zip"


async def archive_trade_spans(
    source: ArchiveSource, trades: TradePair, spans: list[TradeSpan], now_ms: int
) -> list[TradeSpan]:
    """Store the published whole days of ``spans`` from ``source``'s files; the spans left for REST.

    Raises:
        PermanentError: ``source: archive`` and a file could not be used.
    """
    run, pair = trades.run, trades.pair
    files, _ = split_for_archives(
        [(s.start_ms, s.end_ms) for s in spans],
        now_ms,
        daily_lag_ms=source.daily_lag_ms,
        monthly_lag_ms=_NO_MONTHS_MS,
    )
    if not files:
        return spans
    symbol = archive_symbol(trades.instrument.symbol)
    futures = trades.instrument.market_type != "spot"
    #: Id bounds the stored files give: time -> the first id at or after it.
    bounds: dict[int, int] = {}
    notes: list[str] = []
    stored: list[tuple[int, int]] = []

    async def one(file: ArchiveFile) -> None:
        if trades._stopping():
            return
        async with source.client.slots:
            try:
                if source.down is not None:
                    raise ArchiveFailure(source.down, retry=False)
                got = await source.client.fetch(agg_trades_path(symbol, file, futures), parse_agg_trades)
                check_trades(got, file)
            except ArchiveFailure as failure:
                notes.append(source._failed(run, pair, file, failure))
                return
            await _queue(source, trades, file, got)
            bounds[file.start_ms] = int(got.ids[0])
            bounds[file.end_ms] = int(got.ids[-1]) + 1
            stored.append((file.start_ms, file.end_ms))

    async with asyncio.TaskGroup() as group:
        for file in files:
            group.create_task(one(file))
    if notes and source.only and not run.owner._stop.is_set():
        raise PermanentError(f"{len(notes)} archive file(s) unusable and source is 'archive': {notes[0]}")
    left: list[TradeSpan] = []
    for span in spans:
        for a, b in subtract_spans(span.start_ms, span.end_ms, stored):
            first = span.first_id if a == span.start_ms else bounds.get(a)
            end = span.end_id if b == span.end_ms else bounds.get(b)
            left.append(TradeSpan(a, b, first, end))
    return left


def batch_coverage(file: ArchiveFile, got: TradeColumns, lo: int, hi: int) -> TradeCoverage:
    """What rows ``lo..hi`` of a verified file prove: what
    :func:`~data_collector.backfill.trades_plan.trade_page_coverage` gives for
    them as a whole page of the file's day, read off the columns instead of the row tuples (its
    per-trade filter was a measurable share of the archive path's own CPU)."""
    first, end_id = int(got.ids[lo]), int(got.ids[hi - 1]) + 1
    end_ms = file.end_ms if hi == len(got) else int(got.ts[hi - 1])
    start_ms = file.start_ms if lo == 0 else int(got.ts[lo]) + 1
    return TradeCoverage(first, end_id, min(start_ms, end_ms), end_ms)


async def _queue(source: ArchiveSource, trades: TradePair, file: ArchiveFile, got: TradeColumns) -> None:
    """Queue a verified file's trades in batches, each with the coverage it proves."""
    run, pair = trades.run, trades.pair
    for lo in range(0, len(got), BATCH_TRADES):
        hi = min(lo + BATCH_TRADES, len(got))
        batch = TradeBatch(trades.instrument.id, got.rows(lo, hi), [batch_coverage(file, got, lo, hi)])
        await run.queue.put((batch, pair))
    pair.trades_fetched += len(got)
    run.report.archive_files += 1
    run.report.archive_bytes = source.client.bytes
    run._progress(pair)
