"""The job engine of distributed collection: procrastinate on the project's PostgreSQL.

Chosen by measurement (``python -m benchmarks job_engines``, README *Distributed collection*).
This module owns how the engine is set up, so every producer and worker agrees:

* its tables, types and functions live in their own PostgreSQL schema (``dc_jobs`` by default),
  beside the data, reached through ``search_path``;
* workers heartbeat every ``heartbeat_s``; a worker silent for ``stalled_s`` is dead, and a
  periodic task in every worker (once a second, one run per tick whichever worker takes it) puts
  the dead worker's jobs back in the queue. procrastinate has no automatic retry of a killed
  worker's jobs: this is its documented recipe, and it is why a SIGKILLed host's jobs finish
  elsewhere. A job re-run is harmless: writes are idempotent and the coverage record skips what
  is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import procrastinate

from data_collector.errors import UsageError

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class EngineSettings:
    """Where the job queue is, and how soon a dead worker's jobs run elsewhere.

    Args:
        dsn: libpq URL of the PostgreSQL the data lives in (``postgresql://...``).
        schema: the engine's own schema (lower-case letters, digits, ``_``).
        heartbeat_s: seconds between a worker's heartbeats.
        stalled_s: a worker whose last heartbeat is older is dead; its jobs are retried.
        concurrency: jobs one worker runs at once.
    """

    dsn: str
    schema: str = "dc_jobs"
    heartbeat_s: float = 2.0
    stalled_s: float = 10.0
    concurrency: int = 10

    def __post_init__(self) -> None:
        if not _IDENT.fullmatch(self.schema):
            raise UsageError(
                f"job engine schema {self.schema!r}: use lower-case letters, digits and _ (at most 63)"
            )
        if not 0 < self.heartbeat_s < self.stalled_s:
            raise UsageError(
                f"job engine: need 0 < heartbeat_s ({self.heartbeat_s}) < stalled_s ({self.stalled_s})"
            )
        if self.concurrency < 1:
            raise UsageError(f"job engine: concurrency must be >= 1, got {self.concurrency}")


def make_app(settings: EngineSettings) -> procrastinate.App:
    """The procrastinate app on ``settings``, with the stalled-job retry registered.

    Register the job tasks on it, then ``async with app.open_async():`` to defer or run them.
    """
    connector = procrastinate.PsycopgConnector(
        conninfo=settings.dsn,
        kwargs={"options": f"-c search_path={settings.schema}"},
        min_size=1,
        max_size=4,
    )
    app = procrastinate.App(connector=connector)

    @app.periodic(cron="* * * * * *")
    @app.task(name="dc_retry_stalled", queueing_lock="dc_retry_stalled", pass_context=True)
    async def retry_stalled(context: procrastinate.JobContext, timestamp: int) -> None:
        manager = context.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=settings.stalled_s):
            await manager.retry_job(job)

    return app


async def ensure_schema(app: procrastinate.App, settings: EngineSettings) -> bool:
    """Create the engine's schema and objects unless they exist; True when it created them.

    Run it once (the producer does) before workers start: two first runs at once may collide.
    """
    connector = app.connector
    await connector.execute_query_async(
        f'CREATE SCHEMA IF NOT EXISTS "{settings.schema}"'
    )  # a checked identifier
    row = await connector.execute_query_one_async(
        "SELECT to_regclass(%(table)s) IS NOT NULL AS present", table=f"{settings.schema}.procrastinate_jobs"
    )
    if row["present"]:
        return False
    await app.schema_manager.apply_schema_async()
    return True


def worker_options(settings: EngineSettings, queues: list[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``app.run_worker_async``: the heartbeat and stall settings."""
    return {
        "queues": queues,
        "concurrency": settings.concurrency,
        "update_heartbeat_interval": settings.heartbeat_s,
        "stalled_worker_timeout": settings.stalled_s,
        "install_signal_handlers": False,
    }
