"""Several venues in one run (``venues:`` in the config): one collector per venue, one store.

Each venue is an :class:`~data_collector.optimized_collector.OptimizedDataCollector` on the
config :meth:`~data_collector.config.Config.venue_configs` derives for it, so it has its own
client(s), rate limiter(s) and label, and writes into the same tables and coverage through one
shared store (rows are keyed by venue label and symbol). Every venue is opened and checked first
(its symbols, timeframes, page size): a venue that is refused stops the run before anything is
written. Then all venues collect concurrently; the report adds them up, each pair keyed
``"<label> SYMBOL TF"``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from data_collector.backfill.monitor import CollectorMonitor, default_monitor
from data_collector.backfill.report import CollectionReport, PairReport
from data_collector.backfill.universe import Universe
from data_collector.config import Config
from data_collector.errors import CollectorError, ServerUnavailableError
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.storage import open_store
from data_collector.storage.store import CandleStore


class VenuesUniverse:
    """The symbols of every venue (what the script prints before it collects)."""

    def __init__(self, universes: list[tuple[str, Universe]]) -> None:
        self.universes = universes

    @property
    def symbols(self) -> None:
        """``None``: each venue collects its own symbols."""
        return None

    def describe(self) -> str:
        return "; ".join(f"{label}: {u.describe()}" for label, u in self.universes)


class MultiVenueCollector:
    """One collector per configured venue over one store; ``collect`` runs them concurrently.

    Args:
        config: a config with ``venues`` (or without: then it is the one venue of ``exchange``).
        progress, monitor: as :class:`OptimizedDataCollector`'s, shared by the venues.
    """

    def __init__(
        self,
        config: Config,
        *,
        progress: Callable[[PairReport], None] | None = None,
        monitor: CollectorMonitor | None = None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.monitor = monitor if monitor is not None else default_monitor()
        self.venues: list[tuple[str, str, OptimizedDataCollector]] = []
        self._store: CandleStore | None = None
        self._initialized = False
        self._closed = False
        self._report: CollectionReport | None = None
        self._client = None

    async def __aenter__(self) -> MultiVenueCollector:
        await self.initialize()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def initialize(self) -> None:
        """Open the store, then each venue in turn (each checks its symbols and timeframes).

        Raises:
            CollectorError: the first venue refused, its message prefixed by ``venues[i] (label)``.
        """
        if self._initialized:
            return
        try:
            await self._open_venues()
        except BaseException:
            await self.close()  # leave nothing open behind a refused venue
            raise
        self._initialized = True

    async def _open_venues(self) -> None:
        if self._store is None:
            self._store = open_store(self.config)
        await self._store.initialize()
        for where, config in self.config.venue_configs():
            collector = OptimizedDataCollector(
                config, store=self._store, progress=self.progress, monitor=self.monitor
            )
            self.venues.append((where, config.exchange.name, collector))
            try:
                await collector.initialize()
            except ServerUnavailableError:
                raise
            except CollectorError as exc:
                raise _named(exc, where) from None

    async def resolve_symbols(self) -> VenuesUniverse:
        await self.initialize()
        return VenuesUniverse([(label, await c.resolve_symbols()) for _, label, c in self.venues])

    async def collect(self, symbols: object = None) -> CollectionReport:
        """Collect every venue's symbols concurrently; the summed report (pairs keyed by label)."""
        await self.initialize()
        started = time.perf_counter()
        self._report = None

        async def one(where: str, collector: OptimizedDataCollector) -> CollectionReport:
            try:
                return await collector.collect()
            except ServerUnavailableError:
                raise
            except CollectorError as exc:
                raise _named(exc, where) from None

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(where, c)) for where, _, c in self.venues]
        report = self._merged([t.result() for t in tasks])
        report.elapsed_s = time.perf_counter() - started
        self._report = report
        return report

    @property
    def current_report(self) -> CollectionReport | None:
        """The venues' reports of the run in progress (or the last run), added up; for monitoring."""
        if self._report is not None:
            return self._report
        reports = [c.current_report for _, _, c in self.venues]
        return self._merged([r for r in reports if r is not None]) if any(reports) else None

    def _merged(self, reports: list[CollectionReport]) -> CollectionReport:
        """``reports`` (one per venue, in order) added up, each pair keyed by its rows' label."""
        out = CollectionReport()
        for (_, _, collector), venue_report in zip(self.venues, reports, strict=False):
            copy = replace(venue_report, pairs={}, rows_by_type=dict(venue_report.rows_by_type))
            out.merge(copy)
            for key, pair in venue_report.pairs.items():
                out.pairs[f"{collector.venues.label(pair.symbol)} {key}"] = pair
        return out

    def request_stop(self) -> None:
        for _, _, collector in self.venues:
            collector.request_stop()

    async def close(self) -> None:
        """Close every venue's clients, then the store; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for _, _, collector in self.venues:
            await collector.close()
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()


def _named(exc: CollectorError, where: str) -> CollectorError:
    """``exc`` with the venue it came from in front of its line, of the same class."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:
        return exc
