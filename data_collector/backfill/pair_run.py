"""What every (instrument, data type) pair of a run shares: its setup, its outcome, its page loop.

:class:`PairFetch` is the base of the trades and funding pairs
(:mod:`~data_collector.backfill.trades_run`, :mod:`~data_collector.backfill.funding_run`): the
run, the venue's client, the instrument (and its delisting, where the exchange gives it), the
report's pair, the page limit and the first failure, and how the pair ends (``failed``, ``stopped`` or ``done``). :func:`drain_pages` is the
one worker loop over a pair's pages, with the run's page slots; the candle pairs of
:class:`~data_collector.backfill.run.BackfillRun` use it too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from data_collector.backfill.exchange import ExchangeClient, classify
from data_collector.backfill.universe import delisted_at
from data_collector.errors import CollectorError
from data_collector.storage.base import Instrument

if TYPE_CHECKING:
    from data_collector.backfill.run import BackfillRun

P = TypeVar("P")
T = TypeVar("T")


async def drain_pages(
    run: BackfillRun,
    todo: list[P],
    more: Callable[[], bool],
    fetch: Callable[[P], Awaitable[bool]],
    width: int | None = None,
) -> None:
    """Fetch the pages of ``todo`` (taken from its end) while ``more()``, ``width`` at a time.

    ``fetch`` gets a page taken off ``todo``; it may put pages back (the rest of a page cut
    short, or the page itself when the run stops) and returns False when its worker must stop.
    ``width`` defaults to the run's ``pages_in_flight_per_pair``.
    """
    width = width or run.settings.pages_in_flight_per_pair

    async def worker() -> None:
        while more():
            # A slot covers the page from its request until it is on the write queue, so
            # pages waiting for a full queue count too: memory stays bounded.
            async with run.page_slots:
                if not more() or not await fetch(todo.pop()):
                    return

    # A page cut short puts its rest on ``todo``, maybe after the other workers ran dry.
    while more():
        async with asyncio.TaskGroup() as workers:
            for _ in range(min(width, len(todo))):
                workers.create_task(worker())


class PairFetch:
    """One (instrument, ``data_type``) pair of a run: set up, run by :meth:`_run`, then finished.

    Subclasses set :attr:`data_type` and :attr:`page_limit` and implement :meth:`_run`; a page
    that fails appends to :attr:`failure` (the pair then stops), an error raised out of
    :meth:`_run` fails the pair the same way.
    """

    data_type: str
    page_limit: int

    def __init__(self, run: BackfillRun, client: ExchangeClient, instrument: Instrument) -> None:
        self.run = run
        self.client = client
        self.instrument = instrument
        self.pair = run.report.pair(instrument.symbol, self.data_type)
        self.limit = self.page_limit
        self.failure: list[CollectorError] = []
        #: When the exchange says the market stopped trading (a delisted perpetual), else None.
        self.delisting_ms = delisted_at(client.markets.get(instrument.symbol))

    def _stopping(self) -> bool:
        run = self.run
        return bool(self.failure) or run.owner._stop.is_set() or run.write_error is not None

    async def execute(self) -> None:
        run, pair = self.run, self.pair
        pair.status = "running"
        run._progress(pair)
        try:
            await self._run()
        except Exception as exc:
            error = classify(exc)
            if not isinstance(error, CollectorError):  # pragma: no cover - classify always maps
                raise
            self.failure.append(error)
        if self.failure:
            run._fail(pair, self.failure[0])
        elif self._stopping():
            run._finish(pair, "stopped")
        else:
            run._finish(pair, "done")

    async def _run(self) -> None:
        raise NotImplementedError

    async def _drain(
        self, todo: list[P], fetch: Callable[[P], Awaitable[bool]], width: int | None = None
    ) -> None:
        """:func:`drain_pages` until ``todo`` is empty or the pair stops."""
        await drain_pages(self.run, todo, lambda: bool(todo) and not self._stopping(), fetch, width)

    async def _answer(self, request: Awaitable[T], page: P, todo: list[P]) -> T | None:
        """The answer to ``request`` for ``page``; None when the run stops (``page`` goes back on
        ``todo``) or the request fails (the failure is kept: the pair stops)."""
        fetch = await self.run.unless_stopped(request)
        if fetch.cancelled():
            todo.append(page)
            return None
        try:
            return fetch.result()
        except Exception as exc:
            self.failure.append(classify(exc))
            return None
