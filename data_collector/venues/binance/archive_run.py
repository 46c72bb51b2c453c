"""The archive part of a backfill run: which pairs use archives, the files' ingest, the fallbacks.

:class:`~data_collector.backfill.run.BackfillRun` asks :meth:`ArchiveSource.split` which of a
pair's missing ranges come from files (the REST pages keep the rest), then
:meth:`ArchiveSource.ingest` downloads and verifies them and queues their candles with their
coverage, exactly as REST pages are queued: a SIGKILL leaves only whole files covered, and a
restart plans only the ranges without coverage. A file that fails twice (or a 404) is handed back
to REST (``source: auto``) or fails the pair (``source: archive``); each fallback is reported.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from data_collector.backfill.plan import BackfillPlan, Range, page_coverage, pages
from data_collector.backfill.report import PairReport
from data_collector.config import Config
from data_collector.errors import PermanentError
from data_collector.markets import DAY_MS, HOUR_MS, TIMEFRAME_MS
from data_collector.storage.base import CandleBatch, Instrument
from data_collector.storage.candle_columns import CandleColumns
from data_collector.venues.binance.archive_cross_check import CrossCheck
from data_collector.venues.binance.archive_fetch import ArchiveClient, ArchiveFailure, ArchiveSettings
from data_collector.venues.binance.archive_plan import ArchiveFile, archive_timeframe, split_for_archives

if TYPE_CHECKING:
    from data_collector.backfill.run import BackfillRun
    from data_collector.backfill.trades_plan import TradeSpan
    from data_collector.backfill.trades_run import TradePair

log = logging.getLogger(__name__)

#: The directory of each price's klines in the USDⓈ-M futures tree (spot's tree has ``last`` only).
UM_KLINE_KINDS = {
    "last": "klines",
    "mark": "markPriceKlines",
    "index": "indexPriceKlines",
    "premium": "premiumIndexKlines",
}
#: Binance's archive tree.
BINANCE_ARCHIVE_URL = "https://data.binance.vision"
#: Candles per queued batch: the write queue and the writers hold batches of this size (a month
#: of 1m candles is 5 of them), so it bounds their memory as a REST page's 1,000 do.
BATCH_CANDLES = 10_000


class ArchiveSource:
    """Archive downloads of one run; built by :meth:`from_config` (``None`` when archives are off)."""

    def __init__(
        self, settings: ArchiveSettings, *, only: bool, daily_lag_ms: int, monthly_lag_ms: int
    ) -> None:
        self.client = ArchiveClient(settings)
        self.only = only
        self.daily_lag_ms = daily_lag_ms
        self.monthly_lag_ms = monthly_lag_ms
        self.files: dict[str, list[ArchiveFile]] = {}
        #: Why the archive is not used any more in this run (it was unreachable), once known.
        self.down: str | None = None
        self.cross_check = CrossCheck(0)

    @classmethod
    def from_config(cls, config: Config) -> ArchiveSource | None:
        ex = config.exchange
        url = ex.archive.url or (None if ex.simulated else BINANCE_ARCHIVE_URL)
        if ex.source == "rest" or ex.id != "binance" or url is None:
            return None
        a = ex.archive
        settings = ArchiveSettings(url, a.verify, a.downloads_in_flight, a.timeout_s)
        source = cls(
            settings,
            only=ex.source == "archive",
            daily_lag_ms=int(a.daily_lag_h * HOUR_MS),
            monthly_lag_ms=int(a.monthly_lag_days * DAY_MS),
        )
        source.cross_check = CrossCheck(a.cross_check)
        return source

    async def close(self) -> None:
        await self.client.close()

    def split(self, instrument: Instrument, plan: BackfillPlan, now_ms: int, limit: int) -> None:
        """Take the published whole days and months of ``plan`` for files; its pages keep the rest."""
        spot = instrument.market_type == "spot"
        if (spot and plan.price != "last") or plan.price not in UM_KLINE_KINDS:
            return
        if not archive_timeframe(plan.timeframe):
            return
        files, rest = split_for_archives(
            plan.missing, now_ms, daily_lag_ms=self.daily_lag_ms, monthly_lag_ms=self.monthly_lag_ms
        )
        self.files[f"{plan.symbol} {plan.key}"] = files
        plan.pages = [p for r in rest for p in pages(r, plan.timeframe, limit)]

    async def ingest(
        self, run: BackfillRun, instrument: Instrument, plan: BackfillPlan, pair: PairReport
    ) -> list[Range]:
        """Store the pair's files; the ranges REST must fetch instead (``source: auto``).

        Raises:
            PermanentError: ``source: archive`` and a file could not be used.
        """
        files = self.files.pop(pair.key, [])
        exchange_symbol = archive_symbol(instrument.symbol)
        kind = "" if instrument.market_type == "spot" else UM_KLINE_KINDS[plan.price]
        fallback: list[Range] = []
        notes: list[str] = []

        async def one(file: ArchiveFile) -> None:
            if run.owner._stop.is_set() or run.write_error is not None:
                fallback.append((file.start_ms, file.end_ms))  # left uncovered: fetched next run
                return
            # A slot from the download until the rows are on the write queue: memory stays bounded.
            async with self.client.slots:
                try:
                    if self.down is not None:
                        raise ArchiveFailure(self.down, retry=False)
                    sizes: list[int] = []
                    candles = await self.client.klines(
                        exchange_symbol, plan.timeframe, file, kind, sizes=sizes
                    )
                    _check(candles, file, plan.timeframe)
                    if self.cross_check.wanted(pair.key, file):
                        await self.cross_check.compare(await run.owner.client_for(plan.symbol), plan, candles)
                except ArchiveFailure as failure:
                    notes.append(self._failed(run, pair, file, failure))
                    fallback.append((file.start_ms, file.end_ms))
                    return
                pair.archive_bytes += sum(sizes)
                run.owner.monitor.record_archive_file(sum(sizes), len(candles))
                await self._queue(run, instrument, plan, pair, file, candles)

        # Files of one pair in flight together; the client's slots bound them over all pairs.
        async with asyncio.TaskGroup() as group:
            for file in files:
                group.create_task(one(file))
        run.report.archive_cross_checked = self.cross_check.compared
        if fallback and self.only and not run.owner._stop.is_set():
            raise PermanentError(
                f"{len(fallback)} archive file(s) unusable and source is 'archive': {notes[0]}"
            )
        return sorted(fallback)

    async def trade_spans(self, trades: TradePair, spans: list[TradeSpan], now_ms: int) -> list[TradeSpan]:
        """:func:`.archive_trades.archive_trade_spans`: the published whole days of ``spans``
        stored from files; the spans left for REST."""
        from data_collector.venues.binance.archive_trades import archive_trade_spans  # it imports this module

        return await archive_trade_spans(self, trades, spans, now_ms)

    def _failed(self, run: BackfillRun, pair: PairReport, file: ArchiveFile, failure: ArchiveFailure) -> str:
        if failure.unreachable and self.down is None:
            self.down = "archive unreachable"
            then = "the pairs fail" if self.only else "falling back to REST"
            log.error("archive %s unreachable: %s; %s", self.client.settings.base_url, failure.reason, then)
        note = f"{pair.key} {file.date}: {failure.reason}"
        run.report.archive_fallbacks.append(note)
        if not failure.unreachable and failure.reason != "archive unreachable":
            log.warning("archive file %s -> %s", note, "fails the pair" if self.only else "REST")
        return note

    async def _queue(
        self,
        run: BackfillRun,
        instrument: Instrument,
        plan: BackfillPlan,
        pair: PairReport,
        file: ArchiveFile,
        candles: CandleColumns,
    ) -> None:
        bounds = [
            file.start_ms,
            *(int(candles.ts[i]) for i in range(BATCH_CANDLES, len(candles), BATCH_CANDLES)),
            file.end_ms,
        ]
        for n, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
            chunk = candles[n * BATCH_CANDLES : (n + 1) * BATCH_CANDLES]
            # A file proves its whole range: no cap, so a short tail is recorded as empty.
            coverage = page_coverage((start, end), chunk, plan.timeframe, cap=len(chunk) + 1)
            await run.queue.put((CandleBatch(instrument.id, plan.key, chunk, coverage), pair))
        pair.candles_fetched += len(candles)
        pair.archive_rows += len(candles)
        run.report.archive_files += 1
        run.report.archive_bytes = self.client.bytes
        run._progress(pair)


def archive_symbol(symbol: str) -> str:
    """The archive's name of a unified symbol: ``BTC/USDT`` and ``BTC/USDT:USDT`` are ``BTCUSDT``."""
    return symbol.partition(":")[0].replace("/", "")


def _check(candles: CandleColumns, file: ArchiveFile, timeframe: str) -> None:
    """Rows sorted, on the timeframe's grid and inside the file's range, or the file is not used."""
    ts = candles.ts
    if not len(ts):
        return
    step = TIMEFRAME_MS[timeframe]
    bad = np.flatnonzero(ts % step)
    if not len(bad):
        bad = np.flatnonzero(np.diff(ts) <= 0) + 1
    if len(bad) or ts[0] < file.start_ms or ts[-1] >= file.end_ms:
        at = int(ts[bad[0]]) if len(bad) else int(ts[0] if ts[0] < file.start_ms else ts[-1])
        raise ArchiveFailure(f"row at {at} out of order or outside the file")
