"""What the workers did, in two tables beside the engine's (its schema): the producer's report.

``dc_job_reports``: one row per job run (the last run of a job wins): its worker, rows written
and skipped, and the error of a failed one. ``dc_worker_stats``: per (run, worker) the requests,
429s, 418s and weight its clients spent on that run's jobs. The queries are procrastinate's
connector's, with bound parameters.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import procrastinate
import psycopg

from data_collector.backfill.exchange import CallFigures
from data_collector.errors import ServerUnavailableError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dc_job_reports (
    job_id bigint PRIMARY KEY,
    run_id text NOT NULL,
    job_key text NOT NULL,
    worker text NOT NULL,
    rows_written bigint NOT NULL,
    rows_skipped bigint NOT NULL,
    error text,
    finished_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE dc_job_reports
    ADD COLUMN IF NOT EXISTS requests bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS http_429 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS http_418 bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS weight bigint NOT NULL DEFAULT 0;
"""


def libpq_dsn(url: str) -> str:
    """A libpq URL from the config's SQLAlchemy one (``postgresql+asyncpg://`` -> ``postgresql://``)."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


async def check_reachable(dsn: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ServerUnavailableError` (one line) unless the queue's PostgreSQL answers."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=max(1, int(timeout_s)))
    except psycopg.Error as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        reason = lines[0] if lines else type(exc).__name__
        raise ServerUnavailableError("job queue (PostgreSQL)", reason[:200]) from None
    await conn.close()


@asynccontextmanager
async def setup_lock(dsn: str, schema: str) -> AsyncIterator[None]:
    """One process at a time sets up ``schema`` (a session advisory lock): workers starting
    together would otherwise both create the engine's objects and one would fail."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"dc_jobs_setup:{schema}",))
        yield
    finally:
        await conn.close()  # ends the session: the lock is released


async def ensure_tables(app: procrastinate.App) -> None:
    for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
        await app.connector.execute_query_async(statement)


async def record_job(
    app: procrastinate.App,
    job_id: int,
    run_id: str,
    job_key: str,
    worker: str,
    written: int,
    skipped: int,
    error: str | None,
    figures: CallFigures | None = None,
) -> None:
    """Record a job's outcome and what its own calls cost (a job run again keeps its last run's)."""
    cost = figures if figures is not None else CallFigures()
    await app.connector.execute_query_async(
        """INSERT INTO dc_job_reports (job_id, run_id, job_key, worker, rows_written, rows_skipped, error,
             requests, http_429, http_418, weight)
           VALUES (%(job_id)s, %(run_id)s, %(job_key)s, %(worker)s, %(written)s, %(skipped)s, %(error)s,
             %(requests)s, %(http_429)s, %(http_418)s, %(weight)s)
           ON CONFLICT (job_id) DO UPDATE SET worker = EXCLUDED.worker,
             rows_written = EXCLUDED.rows_written, rows_skipped = EXCLUDED.rows_skipped,
             error = EXCLUDED.error, requests = EXCLUDED.requests, http_429 = EXCLUDED.http_429,
             http_418 = EXCLUDED.http_418, weight = EXCLUDED.weight, finished_at = now()""",
        job_id=job_id,
        run_id=run_id,
        job_key=job_key,
        worker=worker,
        written=written,
        skipped=skipped,
        error=error,
        requests=cost.requests,
        http_429=cost.http_429,
        http_418=cost.http_418,
        weight=cost.weight,
    )


async def job_statuses(app: procrastinate.App, ids: list[int]) -> dict[str, int]:
    rows = await app.connector.execute_query_all_async(
        "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs WHERE id = ANY(%(ids)s) "
        "GROUP BY status",
        ids=ids,
    )
    return {str(r["status"]): int(r["n"]) for r in rows}


async def run_figures(app: procrastinate.App, ids: list[int]) -> list[dict[str, Any]]:
    """Per worker, over the jobs ``ids`` (a run's, those another run had queued first included):
    jobs, rows written and skipped, requests, 429s, 418s and weight."""
    rows = await app.connector.execute_query_all_async(
        """SELECT r.worker, count(*) AS jobs, sum(r.rows_written) AS written, sum(r.rows_skipped) AS skipped,
                  sum(r.requests) AS requests, sum(r.http_429) AS http_429, sum(r.http_418) AS http_418,
                  sum(r.weight) AS weight
           FROM dc_job_reports r WHERE r.job_id = ANY(%(ids)s) GROUP BY r.worker ORDER BY r.worker""",
        ids=ids,
    )
    return [dict(r) for r in rows]


async def queued_by_others(app: procrastinate.App, ids: list[int], run_id: str) -> int:
    """How many of ``ids`` another run than ``run_id`` had queued (their arguments name it)."""
    row = await app.connector.execute_query_one_async(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE id = ANY(%(ids)s) AND args->>'run_id' <> %(run_id)s",
        ids=ids,
        run_id=run_id,
    )
    return int(row["n"]) if row is not None else 0


async def failed_jobs(app: procrastinate.App, ids: list[int]) -> list[dict[str, Any]]:
    """The jobs among ``ids`` that failed, with the error their worker recorded."""
    rows = await app.connector.execute_query_all_async(
        """SELECT j.id, j.queueing_lock AS key, r.error FROM procrastinate_jobs j
           LEFT JOIN dc_job_reports r ON r.job_id = j.id
           WHERE j.id = ANY(%(ids)s) AND j.status::text NOT IN ('succeeded') ORDER BY j.id""",
        ids=ids,
    )
    return [dict(r) for r in rows]
