"""The producer: ``data-collector collect --distributed`` plans a run, enqueues it, waits, reports.

It resolves the symbols and the range as ``collect`` does, per venue with ``venues:`` (each
venue opened and checked first, as :class:`~data_collector.backfill.multi_venue.MultiVenueCollector`
does, so a refused venue stops the run before a job is queued; and the data schema created, so the
workers never race on DDL), cuts the run into jobs (:func:`~data_collector.distributed.jobs.cut_jobs`),
defers each under its key as queueing lock (a job of the same key still waiting is taken as this
run's own), waits until none is waiting or running, and prints what every worker did.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import IO

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued

from data_collector.backfill.multi_venue import MultiVenueCollector
from data_collector.config import Config
from data_collector.distributed import ledger
from data_collector.distributed.engine import EngineSettings, ensure_schema, make_app
from data_collector.distributed.jobs import TASK, WindowJob, config_version, cut_jobs, queue_name
from data_collector.optimized_collector import OptimizedDataCollector

#: Seconds between looks at the jobs' statuses while waiting.
POLL_S = 0.5


@dataclass
class DistributedReport:
    """What the jobs a run waited for did, per worker (each job's own requests, whichever run had
    queued it first), and the jobs that did not succeed."""

    run_id: str
    jobs: int
    workers: list[dict[str, object]]
    failed: list[dict[str, object]]
    #: Of ``jobs``, those another run had queued first (this run waited for them too).
    shared: int = 0

    @property
    def requests(self) -> int:
        return self.total("requests")

    def total(self, column: str, rows: list[dict[str, object]] | None = None) -> int:
        return sum(int(str(r[column] or 0)) for r in (rows if rows is not None else self.workers))

    def summary(self) -> str:
        head = f"distributed run {self.run_id}: {self.jobs} jobs, {len(self.failed)} not done"
        if self.shared:
            head += f" ({self.shared} queued first by another run, counted here too)"
        lines = [head]
        for w in self.workers:
            lines.append(
                f"  {w['worker']}: {w['jobs']} jobs, {w['written']} rows written, {w['skipped']} skipped, "
                f"{w['requests']} requests, {w['http_429']} x 429, {w['http_418']} x 418"
            )
        lines.append(
            f"  total: {self.total('written')} rows written, {self.requests} requests, "
            f"{self.total('http_429')} x 429, {self.total('http_418')} x 418"
        )
        for f in self.failed:
            lines.append(f"  not done: {f['key']}: {f['error'] or 'failed'}")
        return "\n".join(lines)


async def enqueue(app: procrastinate.App, jobs: list[WindowJob]) -> list[int]:
    """Defer ``jobs``; a key already waiting counts as this run's job (its id is returned)."""
    ids: list[int] = []
    for job in jobs:
        task = app.configure_task(TASK, queue=queue_name(job.config_version), queueing_lock=job.key)
        try:
            ids.append(await task.defer_async(**job.args()))
        except AlreadyEnqueued:
            row = await app.connector.execute_query_one_async(
                "SELECT id FROM procrastinate_jobs WHERE queueing_lock = %(key)s AND status = 'todo'",
                key=job.key,
            )
            if row is not None:
                ids.append(int(row["id"]))
    return ids


async def wait_done(app: procrastinate.App, ids: list[int], out: IO[str] | None = None) -> dict[str, int]:
    """Poll until none of ``ids`` is waiting or running; the final count per status."""
    last = ""
    while True:
        statuses = await ledger.job_statuses(app, ids)
        pending = statuses.get("todo", 0) + statuses.get("doing", 0)
        line = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
        if out is not None and line != last:
            print(f"jobs: {line}", file=out, flush=True)
            last = line
        if not pending:
            return statuses
        await asyncio.sleep(POLL_S)


async def plan_jobs(config: Config, run_id: str, window_days: float) -> list[WindowJob]:
    """Every venue's jobs of one run: its symbols, data types and timeframes over the range.

    A config without ``venues`` is its one venue (``exchange``); with them, each venue's symbols
    are resolved by its own collector, and all jobs carry the whole config's version.
    """
    version = config_version(config)
    if not config.venues:
        async with OptimizedDataCollector(config) as collector:
            symbols = (await collector.resolve_symbols()).symbols
            plans = [(config, symbols, collector._resolve_range(None, None))]
    else:
        async with MultiVenueCollector(config) as multi:
            plans = [
                (c.config, (await c.resolve_symbols()).symbols, c._resolve_range(None, None))
                for _, _, c in multi.venues
            ]
    jobs: list[WindowJob] = []
    for venue, symbols, (start_ms, end_ms) in plans:
        jobs += cut_jobs(
            venue, run_id, list(symbols), list(venue.timeframes), list(venue.data_types),
            start_ms, end_ms, window_days, version,
        )  # fmt: skip
    return jobs


async def run_distributed(
    config: Config, engine: EngineSettings, *, window_days: float, out: IO[str] | None = None
) -> DistributedReport:
    """Plan, enqueue, wait and aggregate one distributed run of the config's collection.

    Raises:
        ServerUnavailableError: the queue's or the data's server cannot be reached.
        CollectorError: a venue refused (its symbols, timeframes), as ``collect`` says it.
    """
    await ledger.check_reachable(engine.dsn)
    run_id = uuid.uuid4().hex[:12]
    jobs = await plan_jobs(config, run_id, window_days)
    app = make_app(engine)
    async with app.open_async():
        async with ledger.setup_lock(engine.dsn, engine.schema):
            await ensure_schema(app, engine)
            await ledger.ensure_tables(app)
        ids = await enqueue(app, jobs)
        await wait_done(app, ids, out)
        workers = await ledger.run_figures(app, ids)
        failed = await ledger.failed_jobs(app, ids)
        shared = await ledger.queued_by_others(app, ids, run_id)
    return DistributedReport(run_id, len(ids), workers, failed, shared)
