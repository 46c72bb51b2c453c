"""The job engine's set-up: a SIGKILLed worker's job runs again in another worker process."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from data_collector.distributed.engine import EngineSettings, ensure_schema, make_app
from data_collector.errors import UsageError
from tests.support.engine_worker import settings, starts
from tests.support.services import PG_ADMIN_DSN
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


def _spawn(procs: list[subprocess.Popen[bytes]], schema: str, marker: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.support.engine_worker", PG_ADMIN_DSN, schema, str(marker)]
    # stderr to a file, not a pipe nobody reads while the worker runs (a full pipe would block it).
    log = marker.with_suffix(f".{len(procs)}.log")
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)
    procs.append(proc)
    return proc


async def test_sigkilled_workers_job_runs_in_another_worker(
    queue_schema: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    schema, workers = queue_schema, procs
    config = settings(PG_ADMIN_DSN, schema)
    app = make_app(config)
    marker = tmp_path / "hold.starts"
    ready = marker.with_suffix(".ready")
    async with app.open_async():
        assert await ensure_schema(app, config) is True
        assert await ensure_schema(app, config) is False  # idempotent
        first = _spawn(workers, schema, marker)
        job_id = await app.configure_task("hold").defer_async()
        await wait_for(lambda: starts(marker) == [first.pid], 60, "the first worker to start the job")
        second = _spawn(workers, schema, marker)
        await wait_for(lambda: ready.read_text() == str(second.pid), 60, "the second worker to connect")
        first.send_signal(signal.SIGKILL)
        first.wait()
        # heartbeat 0.5 s, dead after 2 s, retried within a second: 30 s is the bound.
        await wait_for(lambda: second.pid in starts(marker), 30, "the job to run in the second worker")
        assert starts(marker) == [first.pid, second.pid]
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            status = await conn.fetchval(
                f'SELECT status::text FROM "{schema}".procrastinate_jobs WHERE id = $1', job_id
            )
        finally:
            await conn.close()
    assert status in ("doing", "succeeded")
    assert second.poll() is None, marker.with_suffix(".1.log").read_text()[-2000:]


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(UsageError, match="schema 'Jobs;drop'"):
        EngineSettings(dsn="postgresql://x", schema="Jobs;drop")
    with pytest.raises(UsageError, match="heartbeat_s"):
        EngineSettings(dsn="postgresql://x", heartbeat_s=5, stalled_s=5)
