"""Settled funding rates from the stream into the ``funding`` table the backfill writes.

A ``markPrice`` event carries ``r``, the *estimated* rate of the coming settlement, and ``T``, the
next funding time. The estimate is not the settled rate: Binance settles on premium samples up to
the funding time itself (the simulator likewise: its last estimate before a settlement lacks the
last minute's premium), and the mark price stored beside the rate is the one at the funding time.
So no estimate is ever stored. Instead, when a symbol's ``T`` advances from ``t0`` to ``t1``, the
settlements in ``[t0, t1)`` are read from ``/fapi/v1/fundingRate`` (weight 1, one request per
symbol and settlement), the very answer the REST backfill reads through ccxt, parsed by the same
:func:`~data_collector.backfill.validate.validate_funding`, and written with the coverage they
prove, ``[t0, last settlement + 1)``. The row is then the backfill's row, and both writing it
leaves one row (the key is (instrument, funding time), inserts do nothing on conflict).

The last ``T`` of each symbol lives here, not in a connection, so a reconnect across a settlement
still sees ``T`` advance; a restarted streamer takes it from the newest mark price Redis holds
(:meth:`FundingWatcher.seed`), so a settlement passed while it was down is fetched once it is back.
An answer without the settlement (not published yet) is asked again with backoff for up to
``RETRY_FOR_S``. What this cannot see (a first start with nothing in Redis, a settlement still
unpublished after that) is left to the backfill's ``funding_rates``, which fetches exactly the
ranges without coverage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from data_collector.backoff import backoff_delay
from data_collector.errors import CollectorError
from data_collector.streaming.candles import CandleSink, PendingFunding
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import Event
from data_collector.venues.binance.rest import BinanceRest

log = logging.getLogger(__name__)

#: How long a settlement missing from ``fundingRate`` is asked for again (Binance publishes it
#: within seconds; the backfill waits a minute, ``SETTLE_MS``).
RETRY_FOR_S = 600.0
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
#: ``fundingRate`` requests in flight at once (every symbol settles at the same moment).
CONCURRENCY = 4


def ccxt_funding_rows(items: list[Any]) -> list[Any]:
    """``fundingRate`` items in the shape ccxt's ``parse_funding_rate_history`` gives them
    (``timestamp`` the integer ``fundingTime``, ``fundingRate`` its number, the item as ``info``),
    for :func:`~data_collector.backfill.validate.validate_funding`; what cannot be read becomes
    ``None`` and is refused there. ccxt itself is not imported (about 100 MB of RSS, more than
    the whole streamer)."""
    rows: list[Any] = []
    for item in items:
        if not isinstance(item, dict):
            rows.append(item)
            continue
        ts, rate = item.get("fundingTime"), item.get("fundingRate")
        if isinstance(ts, str) and ts.isdigit():
            ts = int(ts)
        try:
            number = (
                float(rate) if isinstance(rate, str | int | float) and not isinstance(rate, bool) else None
            )
        except ValueError:
            number = None
        rows.append({"timestamp": ts if type(ts) is int else None, "fundingRate": number, "info": item})
    return rows


class FundingWatcher:
    """Watches the ``markPrice`` events for settlements and stores each settled rate once.

    Args:
        rest: the streamer's REST client (``/fapi/v1``).
        sink: the store sink the rows go through (with the closed klines).
        metrics: ``funding_stored`` is counted by the sink, failed requests in ``rest_errors``.
        retry_for_s: how long a settlement not yet published is asked for again.
    """

    def __init__(
        self, rest: BinanceRest, sink: CandleSink, metrics: StreamMetrics, *, retry_for_s: float = RETRY_FOR_S
    ) -> None:
        self._rest = rest
        self._sink = sink
        self._metrics = metrics
        self._retry_for_s = retry_for_s
        #: symbol -> the newest next funding time seen.
        self._next: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._semaphore = asyncio.Semaphore(CONCURRENCY)
        self._closed = False

    def seed(self, symbol: str, event: dict[str, Any] | None) -> None:
        """The next funding time of the newest mark price a previous run left in Redis."""
        t = event.get("next_funding_ms") if event else None
        if isinstance(t, int) and t > 0 and symbol not in self._next:
            self._next[symbol] = t

    def on_mark_price(self, event: Event) -> None:
        """Every ``markPrice`` event: a ``T`` past the one seen before means settlements to fetch."""
        symbol, t = event["symbol"], event["next_funding_ms"]
        if not isinstance(t, int) or t <= 0:
            return
        before = self._next.get(symbol)
        if before is not None and t <= before:
            return
        self._next[symbol] = t
        if before is None or self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self._settle(symbol, before, t), name=f"funding:{symbol}:{before}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, symbol: str, start_ms: int, end_ms: int) -> None:
        """Fetch the settlements of ``symbol`` in ``[start_ms, end_ms)`` until one is published."""
        from data_collector.backfill.validate import validate_funding

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for_s
        attempt = 0
        while True:
            try:
                async with self._semaphore:
                    items = await self._rest.funding_rates(symbol, start_ms, end_ms - 1)
                rates = validate_funding(ccxt_funding_rows(items), start_ms, end_ms)
                why = "not published yet"
            except CollectorError as exc:  # MalformedPageError is a TransientError
                self._metrics.rest_errors += 1
                rates, why = [], str(exc)
            if rates:
                self._sink.submit_funding(PendingFunding(symbol, rates, (start_ms, rates[-1][0] + 1)))
                return
            attempt += 1
            if loop.time() >= deadline:
                log.warning(
                    "the %s funding settlement at %d is not in fundingRate (%s); left to the backfill",
                    symbol,
                    start_ms,
                    why,
                )
                return
            await asyncio.sleep(backoff_delay(attempt, RETRY_MIN_S, RETRY_MAX_S))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let the fetches in flight finish (bounded by ``timeout_s``), then cancel; idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
