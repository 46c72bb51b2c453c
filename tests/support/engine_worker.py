"""A job-engine worker process for tests: ``python -m tests.support.engine_worker DSN SCHEMA MARKER``.

It runs one task, ``hold``: each start appends the worker's pid to MARKER; the first worker to
start it holds it (until killed), any other finishes it at once. MARKER.ready gets the pid once
the worker is connected.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from data_collector.distributed.engine import EngineSettings, make_app, worker_options

#: Fast enough for a test: a worker silent for 2 s is dead.
HEARTBEAT_S, STALLED_S = 0.5, 2.0


def starts(marker: Path) -> list[int]:
    """The pids that started the held job, in order."""
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


def settings(dsn: str, schema: str) -> EngineSettings:
    return EngineSettings(dsn=dsn, schema=schema, heartbeat_s=HEARTBEAT_S, stalled_s=STALLED_S)


async def main(dsn: str, schema: str, marker: Path) -> None:
    config = settings(dsn, schema)
    app = make_app(config)

    @app.task(name="hold")
    async def hold() -> None:
        with marker.open("a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        if starts(marker)[0] == os.getpid():
            await asyncio.Event().wait()  # held until this process is killed

    async with app.open_async():
        marker.with_suffix(".ready").write_text(str(os.getpid()))
        await app.run_worker_async(**worker_options(config))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
