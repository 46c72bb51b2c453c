"""The consumer: ``data-collector worker`` pulls backfill jobs and runs each through ``collect``.

One :class:`~data_collector.optimized_collector.OptimizedDataCollector` per venue of the
worker's config (one without ``venues:``; one per entry with them, as the in-process collector
has), opened once over one store: a job runs on the collector of the venue label it names. Their
clients leave from ``source_address`` (this host's IP, so it paces against its own budget) and,
when several workers share that IP (``--share-budget``), every client whose limit is a weight
budget a minute (Binance spot, Binance USDⓈ-M: each its own) spends one :class:`SharedWeightBudget`
of that label and IP through Redis, and every client paced per endpoint and 2 s window (OKX) takes
each request's slot in one :class:`SharedEndpointWindows` of that label and IP, an endpoint's
window at its own limit. A job is ``collect``
of its one series over its window: the coverage record skips what is stored, the writes are
idempotent, so a job run twice (a dead worker's, retried) is harmless.

A job this worker cannot run fails with one line and stays in the queue as ``failed`` (visible to
the producer's report, re-queued by the next run): a job of another config version (the worker
never takes those, its queue is its own version's) or of a venue its config does not know.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procrastinate

from data_collector.backfill.exchange import CallFigures, ExchangeClient, call_figures
from data_collector.backfill.monitor import default_monitor
from data_collector.backfill.shared_budget import SharedWeightBudget
from data_collector.backfill.shared_windows import SharedEndpointWindows
from data_collector.backfill.venues import Venues
from data_collector.config import Config
from data_collector.distributed import incremental, ledger
from data_collector.distributed.engine import EngineSettings, ensure_schema, make_app, worker_options
from data_collector.distributed.jobs import (
    NO_TIMEFRAME,
    QUEUE_PREFIX,
    TASK,
    WindowJob,
    config_version,
    queue_name,
    venue_labels,
)
from data_collector.errors import PermanentError, UsageError
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.redis.client import RedisSettings
from data_collector.storage import open_store

log = logging.getLogger(__name__)


class JobRefused(PermanentError):
    """This worker cannot run the job (one line; the job stays failed and visible)."""


@dataclass(frozen=True)
class WorkerSettings:
    """One worker: its engine, its source address, and the budget it shares (if any).

    Args:
        engine: where the queue is.
        source_address: local IP the exchange requests leave from; None: the system's choice.
        share_budget: spend each weight budget of ``source_address`` (per venue label) with every
            worker behind it, through the config's Redis.
        name: the worker's name in the report (default ``host:pid[@address]``).
        ready_file: written with the pid once the worker takes jobs (tests wait on it).
        incremental: cron of the periodic incremental run (:mod:`.incremental`); None: none.
        window_days: days of one incremental job's window.
    """

    engine: EngineSettings
    source_address: str | None = None
    share_budget: bool = False
    name: str | None = None
    ready_file: Path | None = None
    incremental: str | None = None
    window_days: float = 30.0

    def worker_name(self) -> str:
        base = self.name or f"{socket.gethostname()}:{os.getpid()}"
        return f"{base}@{self.source_address}" if self.source_address and not self.name else base


class _OneLine(logging.Filter):
    """procrastinate logs a failed job with its traceback; a refused job's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], JobRefused):
            record.exc_info = None
        return True


def register(
    app: procrastinate.App, config: Config, collectors: list[OptimizedDataCollector], worker: str
) -> None:
    """The backfill task on ``app``, run by the collector of the job's venue label (``collectors``
    are the config's venues, in :meth:`~data_collector.config.Config.venue_configs` order)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OneLine())
    version = config_version(config)
    venues = {label: collectors[i] for label, i in venue_labels(config).items()}

    @app.task(name=TASK, pass_context=True)
    async def backfill_window(context: procrastinate.JobContext, /, **args: Any) -> None:
        job = WindowJob.from_args(args)
        job_id = context.job.id if context.job is not None and context.job.id is not None else -1
        error: str | None = None
        written = skipped = 0
        # This job's own requests, 429s, 418s and weight: every client call under it adds here,
        # whatever other jobs this worker runs meanwhile.
        figures = CallFigures()
        token = call_figures.set(figures)
        try:
            if job.config_version != version:
                raise JobRefused(
                    f"job {job.key}: config version {job.config_version}, this worker's is {version}; "
                    "start the worker with the producer's config"
                )
            collector = venues.get(job.venue)
            if collector is None:
                raise JobRefused(
                    f"job {job.key}: unknown venue {job.venue!r}; this worker's config collects "
                    f"{', '.join(sorted(venues))}: fix exchange.name or the producer's config"
                )
            if collector.venues.label(job.symbol) != job.venue:
                raise JobRefused(
                    f"job {job.key}: {job.symbol} is stored under {collector.venues.label(job.symbol)!r} "
                    f"in this worker's config, not {job.venue!r}: start it with the producer's config"
                )
            report = await collector.collect(
                symbols=[job.symbol],
                timeframes=None if job.timeframe == NO_TIMEFRAME else [job.timeframe],
                start=job.start_ms,
                end=job.end_ms,
                data_types=[job.data_type],
            )
            written, skipped = report.rows_written, report.rows_skipped
            if report.failures:
                error = "; ".join(f"{k}: {v}" for k, v in report.failures.items())
        except (UsageError, PermanentError) as exc:
            error = str(exc)
        finally:
            call_figures.reset(token)
        await ledger.record_job(app, job_id, job.run_id, job.key, worker, written, skipped, error, figures)
        if error is not None:
            log.error("%s", error)
            raise JobRefused(error)


async def _other_versions(app: procrastinate.App, mine: str) -> list[str]:
    """Queues of backfill jobs waiting for a worker of another config version."""
    rows = await app.connector.execute_query_all_async(
        "SELECT DISTINCT queue_name FROM procrastinate_jobs WHERE task_name = %(task)s "
        "AND status = 'todo' AND queue_name <> %(mine)s",
        task=TASK,
        mine=mine,
    )
    return [str(r["queue_name"]) for r in rows]


def _budgets(
    config: Config, settings: WorkerSettings, stack: AsyncExitStack
) -> Callable[[str, ExchangeClient], SharedWeightBudget | SharedEndpointWindows | None]:
    """Builds what each client shares with the workers behind this worker's address, named by its
    venue label and that address: a client with a weight budget a minute (Binance) gets a shared
    budget at its limit less its margin, followed when the client reads the exchange's limit, so
    Binance spot and USDⓈ-M (budgets of their own at the exchange) never share a counter; a client
    paced per endpoint and window (OKX) gets shared windows, one per endpoint at its configured
    limit. A client paced otherwise gets none and paces itself."""
    address = settings.source_address or socket.gethostname()

    def budget_for(label: str, client: ExchangeClient) -> SharedWeightBudget | SharedEndpointWindows | None:
        shared: SharedWeightBudget | SharedEndpointWindows
        if client.weight_mode:
            shared = SharedWeightBudget(
                RedisSettings.from_config(config),
                f"{label}:{address}",
                client.limiter.budget,
                key_prefix=f"{config.redis.prefix}:budget",
                # The exchange's minutes, not this host's: the offset the client measures as it opens.
                clock=client.limiter.server_now,
            )
        elif client.window_mode:
            shared = SharedEndpointWindows(
                RedisSettings.from_config(config),
                f"{label}:{address}",
                window_s=client.limiter.window_s,
                key_prefix=f"{config.redis.prefix}:windows",
            )
        else:
            return None
        stack.push_async_callback(shared.close)
        return shared

    return budget_for


async def run_worker(config: Config, settings: WorkerSettings) -> None:
    """Take and run jobs until cancelled.

    Raises:
        ServerUnavailableError: the queue's PostgreSQL cannot be reached.
        UsageError: jobs wait for another config version and none for this one.
    """
    engine = settings.engine
    await ledger.check_reachable(engine.dsn)
    version = config_version(config)
    mine = queue_name(version)
    name = settings.worker_name()
    app = make_app(engine)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.open_async())
        async with ledger.setup_lock(engine.dsn, engine.schema):
            await ensure_schema(app, engine)
            await ledger.ensure_tables(app)
        others = await _other_versions(app, mine)
        if others:
            mine_waiting = await app.connector.execute_query_one_async(
                "SELECT count(*) AS n FROM procrastinate_jobs WHERE queue_name = %(q)s AND status = 'todo'",
                q=mine,
            )
            if not mine_waiting["n"]:
                theirs = ", ".join(q.removeprefix(QUEUE_PREFIX) for q in others)
                raise UsageError(
                    f"worker config version {version} differs from the waiting jobs' ({theirs}): "
                    "start the worker with the producer's config"
                )
        store = open_store(config)
        stack.push_async_callback(store.close)
        monitor = default_monitor()
        collectors: list[OptimizedDataCollector] = []
        venues: list[tuple[Config, OptimizedDataCollector]] = []
        budget_for = _budgets(config, settings, stack) if settings.share_budget else None
        for _, venue in config.venue_configs():
            collector = OptimizedDataCollector(venue, store=store, monitor=monitor)
            collector.venues = Venues(
                venue, monitor, source_address=settings.source_address, budget_for=budget_for
            )
            await stack.enter_async_context(collector)
            collectors.append(collector)
            venues.append((venue, collector))
        register(app, config, collectors, name)
        if settings.incremental is not None:
            incremental.register(app, config, venues, settings.incremental, mine, settings.window_days)
        if settings.ready_file is not None:
            settings.ready_file.write_text(str(os.getpid()), encoding="utf-8")
        log.info("worker %s takes jobs of config version %s", name, version)
        await app.run_worker_async(**worker_options(engine, queues=[mine, "default"]))
