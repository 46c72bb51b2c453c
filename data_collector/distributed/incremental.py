"""Scheduled incremental collection: a periodic job that brings every configured series up to date.

``data-collector worker --incremental CRON`` registers the periodic task :data:`TASK` on the
worker's app. Every worker started with it defers the tick, and the engine keeps one job per
tick (procrastinate's periodic defers are unique by task and scheduled time), so N workers make
one run per tick; its queueing lock skips a tick while the previous one still waits, and its lock
runs the ticks one at a time.

A tick plans, per (symbol, data type, timeframe) of the config (of each venue, under its label,
with ``venues:``), the range from the end of the
series' coverage record (the config's ``start`` when nothing is stored) to now: candles up to the
candle still forming, other series up to the current minute. Each range is cut by the producer's
planning (:func:`~data_collector.distributed.jobs.cut_jobs`: epoch-aligned windows, the job's key
as queueing lock) and enqueued for the workers. A series with a backfill job still waiting or
running is left to it, so no window is queued twice; a series already up to date queues nothing,
and a tick with nothing new asks the exchange nothing (exact symbols; a ``universe.top`` ranking
asks for its tickers each tick). A job run again fetches only what the coverage record lacks.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial

import procrastinate
from croniter import croniter

from data_collector.config import Config
from data_collector.datatypes import CANDLE_PRICES, FUNDING_RATES, OPEN_INTEREST, PERPETUAL_ONLY, TRADES
from data_collector.distributed.jobs import NO_TIMEFRAME, WindowJob, config_version, cut_jobs
from data_collector.distributed.jobs import TASK as BACKFILL_TASK
from data_collector.distributed.producer import enqueue
from data_collector.errors import UsageError
from data_collector.markets import (
    FUNDING_SERIES,
    MINUTE_MS,
    OPEN_INTEREST_PERIODS,
    candle_open_ms,
    is_perpetual_symbol,
    series_key,
)
from data_collector.optimized_collector import OptimizedDataCollector

log = logging.getLogger(__name__)

#: The procrastinate task name of an incremental tick.
TASK = "dc_incremental"


def check_cron(expression: str) -> str:
    """``expression`` if it is a cron procrastinate runs (5 fields, or 6 with seconds last)."""
    if len(expression.split()) not in (5, 6) or not croniter.is_valid(expression):
        raise UsageError(
            f"--incremental {expression!r} is not a cron expression: use 5 fields (minute hour day "
            "month weekday, e.g. '*/5 * * * *') or 6 with seconds last ('* * * * * */30')"
        )
    return expression


def _series(config: Config, symbol: str) -> list[tuple[str, str]]:
    """(data type, timeframe) of every series ``symbol`` has under the config."""
    out: list[tuple[str, str]] = []
    for data_type in config.data_types:
        if data_type in PERPETUAL_ONLY and not is_perpetual_symbol(symbol):
            continue
        if data_type in CANDLE_PRICES:
            out.extend((data_type, tf) for tf in config.timeframes)
        elif data_type == OPEN_INTEREST:
            out.extend((data_type, tf) for tf in config.timeframes if tf in OPEN_INTEREST_PERIODS)
        else:
            out.append((data_type, NO_TIMEFRAME))
    return out


async def _coverage_end(
    collector: OptimizedDataCollector, symbol: str, data_type: str, tf: str
) -> int | None:
    """Where the series' coverage record ends (None: nothing stored)."""
    instrument = await collector.instrument(symbol)
    store = collector.store
    if data_type == TRADES:
        trades = await collector._store_call(partial(store.trade_coverage, instrument.id))
        return max((c.end_ms for c in trades), default=None)
    if data_type == FUNDING_RATES:
        key = FUNDING_SERIES
    elif data_type == OPEN_INTEREST:
        key = series_key(tf, "oi")
    else:
        key = series_key(tf, CANDLE_PRICES[data_type])
    covered = await collector._store_call(partial(store.coverage, instrument.id, key))
    return max((c.end_ms for c in covered), default=None)


async def plan_tick(
    collector: OptimizedDataCollector,
    config: Config,
    run_id: str,
    window_days: float,
    busy: set[str],
    version: str | None = None,
) -> list[WindowJob]:
    """The jobs that bring every series of ``collector``'s venue (``config``: its one-venue
    config) up to date now, but none of a series in ``busy`` (``venue|symbol|data type|timeframe``
    prefixes of backfill jobs waiting or running); ``version``: the jobs' config version (the
    whole config's, with ``venues``; default ``config``'s)."""
    symbols = (await collector.resolve_symbols()).symbols
    jobs: list[WindowJob] = []
    for symbol in await collector.venues.listed(list(symbols)):
        client = await collector.client_for(symbol)
        now_ms = client.server_now_ms()
        start_ms = config.start_ms(now_ms)
        for data_type, tf in _series(config, symbol):
            end_ms = min(
                config.end_ms(now_ms),
                now_ms - now_ms % MINUTE_MS if tf == NO_TIMEFRAME else candle_open_ms(now_ms, tf),
            )
            since = await _coverage_end(collector, symbol, data_type, tf)
            begin = max(start_ms, since) if since is not None else start_ms
            if begin >= end_ms:
                continue
            cut = cut_jobs(config, run_id, [symbol], [tf], [data_type], begin, end_ms, window_days, version)
            if cut and _series_of(cut[0].key) in busy:
                continue
            jobs.extend(cut)
    return jobs


async def _busy_series(app: procrastinate.App) -> set[str]:
    rows = await app.connector.execute_query_all_async(
        "SELECT queueing_lock FROM procrastinate_jobs WHERE task_name = %(task)s "
        "AND status IN ('todo', 'doing') AND queueing_lock IS NOT NULL",
        task=BACKFILL_TASK,
    )
    return {_series_of(str(r["queueing_lock"])) for r in rows}


def _series_of(key: str) -> str:
    """``venue|symbol|data type|timeframe`` of a job key (:attr:`WindowJob.key`)."""
    return "|".join(key.split("|")[:4])


async def plan_venues(
    venues: list[tuple[Config, OptimizedDataCollector]],
    config: Config,
    run_id: str,
    window_days: float,
    busy: set[str],
) -> list[WindowJob]:
    """One tick's jobs over every venue of ``config`` (``venues``: each venue's one-venue config
    and collector, as :meth:`Config.venue_configs` gives them), under the whole config's version,
    as the producer plans them."""
    version = config_version(config)
    jobs: list[WindowJob] = []
    for venue, collector in venues:
        jobs += await plan_tick(collector, venue, run_id, window_days, busy, version)
    return jobs


def register(
    app: procrastinate.App,
    config: Config,
    venues: list[tuple[Config, OptimizedDataCollector]],
    cron: str,
    queue: str,
    window_days: float,
) -> None:
    """The periodic incremental task on ``app`` (``cron`` checked by :func:`check_cron`) over
    ``venues`` (each venue's one-venue config and collector)."""

    @app.periodic(cron=cron, periodic_id="incremental")
    @app.task(name=TASK, queue=queue, queueing_lock=TASK, lock=TASK, pass_context=True)
    async def incremental(context: procrastinate.JobContext, timestamp: int) -> None:
        run_id = "inc-" + datetime.fromtimestamp(timestamp, UTC).strftime("%Y%m%dT%H%M%S")
        busy = await _busy_series(context.app)
        jobs = await plan_venues(venues, config, run_id, window_days, busy)
        ids = await enqueue(context.app, jobs)
        log.info("incremental %s: %d jobs queued", run_id, len(ids))
