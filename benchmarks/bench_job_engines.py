"""Job engines for distributed collection (issue 17), on the servers the project already runs.

procrastinate (PostgreSQL) and saq (Redis), each: no-op jobs enqueued and run by one worker
(jobs/s, against what a 3-host backfill needs), a worker SIGKILLed in the middle of a job (seconds
until a second worker runs it again), the same job enqueued twice, and a once-a-second periodic
job. arq is not measured: 0.28 requires redis<6 and the project pins redis 6.4.

Both engines are run with the recovery knobs turned down to what a backfill wants (a job is a
window of a few seconds): procrastinate heartbeats every 1 s, calls a worker stalled after 3 s, and
retries stalled jobs from a once-a-second periodic task (its documented recipe: it has no
automatic retry; the project's set-up, ``data_collector/distributed/engine.py``); saq jobs carry a 2 s heartbeat and the sweep runs every second (the worker
passes its sweep timer as the cluster-wide sweep lock; default 60 s). The notes say what the defaults give.

The SIGKILL case runs worker processes: ``python -m benchmarks.bench_job_engines worker ENGINE
TARGET MARKER`` (TARGET: a PostgreSQL schema or a saq queue name; MARKER: a file each start of
the held job appends its pid to).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import PG_DSN, REDIS_URL, BenchContext, Row, Table

NAME = "job_engines"
DESCRIPTION = "procrastinate (PostgreSQL) vs saq (Redis): throughput, SIGKILL recovery, dedup, periodic jobs"

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 10
#: Jobs a producer enqueues in one call (procrastinate: one batch_defer; saq: concurrent enqueues).
BATCH = 100
#: procrastinate: heartbeat period and the silence after which a worker is stalled (s).
PG_HEARTBEAT_S, PG_STALLED_S = 1.0, 3.0
#: saq: a job's heartbeat (s) and the sweep's period and lock (s).
SAQ_HEARTBEAT_S, SAQ_SWEEP_S = 2, 1
#: What 3 hosts need at most: each spends 6,000 weight a minute on 2-weight klines requests,
#: 3,000 requests a minute, 50 a second; one request a job at the finest cut.
NEEDED_JOBS_PER_S = 3 * 6000 / 2 / 60

_done: dict[str, Any] = {"count": 0, "target": 0, "event": None, "periodic": 0}


def _tick() -> None:
    _done["count"] += 1
    if _done["count"] >= _done["target"] and _done["event"] is not None:
        _done["event"].set()


def _hold_start(marker: Path) -> bool:
    """Record this start of the held job; True in the first worker to start it (which then holds
    it until killed, however often its engine restarts it there)."""
    with marker.open("a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    return _starts(marker)[0] == os.getpid()


# -- procrastinate ---------------------------------------------------------------------------------


def pg_settings(schema: str) -> Any:
    from data_collector.distributed.engine import EngineSettings

    return EngineSettings(
        dsn=PG_DSN, schema=schema, heartbeat_s=PG_HEARTBEAT_S, stalled_s=PG_STALLED_S, concurrency=CONCURRENCY
    )


def pg_app(schema: str, marker: Path | None = None) -> Any:
    """The project's engine set-up (stalled-job retry included) with the benchmark's tasks."""
    from data_collector.distributed.engine import make_app

    app = make_app(pg_settings(schema))

    @app.task(name="noop")
    async def noop(i: int) -> None:
        _tick()

    @app.task(name="hold")
    async def hold() -> None:
        if marker is not None and _hold_start(marker):
            await asyncio.sleep(3600)

    @app.periodic(cron="* * * * * *")
    @app.task(name="tick", queue="periodic")
    async def tick(timestamp: int) -> None:
        _done["periodic"] += 1

    return app


def pg_worker_options(schema: str, queues: list[str] | None = None) -> dict[str, Any]:
    from data_collector.distributed.engine import worker_options

    return {**worker_options(pg_settings(schema), queues), "fetch_job_polling_interval": 1.0}


class Procrastinate:
    label = "procrastinate 3 (PostgreSQL)"

    def __init__(self) -> None:
        self.schema = f"bench_jobs_{uuid.uuid4().hex[:8]}"

    async def __aenter__(self) -> Procrastinate:
        from data_collector.distributed.engine import ensure_schema

        async with pg_app(self.schema).open_async() as app:
            await ensure_schema(app, pg_settings(self.schema))
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()

    async def throughput(self, n: int) -> tuple[float, float]:
        async with pg_app(self.schema).open_async() as app:
            noop = app.tasks["noop"]
            return await _timed_run(
                n,
                lambda: app.run_worker_async(**pg_worker_options(self.schema, ["default"])),
                lambda ids: noop.batch_defer_async(*({"i": i} for i in ids)),
            )

    async def dedup(self) -> str:
        import procrastinate.exceptions

        async with pg_app(self.schema).open_async() as app:
            deferrer = app.tasks["noop"].configure(queueing_lock="BTC/USDT-1m-2024-01-01")
            await deferrer.defer_async(i=0)
            try:
                await deferrer.defer_async(i=0)
            except procrastinate.exceptions.AlreadyEnqueued:
                return "2nd refused (queueing_lock: AlreadyEnqueued while the 1st waits)"
            return "2nd accepted"

    async def periodic(self, seconds: float) -> int:
        async with pg_app(self.schema).open_async() as app:
            return await _periodic_runs(
                lambda: app.run_worker_async(**pg_worker_options(self.schema, ["periodic"])), seconds
            )

    async def enqueue_hold(self) -> None:
        async with pg_app(self.schema).open_async() as app:
            await app.tasks["hold"].defer_async()

    @property
    def target(self) -> str:
        return self.schema


def _ready(marker: Path) -> Path:
    """The file a worker process writes its pid to once connected."""
    return marker.with_suffix(".ready")


async def pg_worker(schema: str, marker: Path) -> None:
    async with pg_app(schema, marker).open_async() as app:
        _ready(marker).write_text(str(os.getpid()))
        await app.run_worker_async(**pg_worker_options(schema))


# -- saq ---------------------------------------------------------------------------------------


def saq_queue(name: str) -> Any:
    from saq import Queue

    return Queue.from_url(REDIS_URL, name=name)


async def _saq_noop(ctx: Any, i: int) -> None:
    _tick()


async def _saq_tick(ctx: Any) -> None:
    _done["periodic"] += 1


def saq_worker_obj(queue: Any, marker: Path | None = None, cron: bool = False) -> Any:
    from saq import CronJob, Worker

    async def hold(ctx: Any) -> None:
        if marker is not None and _hold_start(marker):
            while True:  # a saq job proves it lives by touching its heartbeat
                await ctx["job"].update()
                await asyncio.sleep(SAQ_HEARTBEAT_S / 4)

    functions: list[Any] = [("noop", _saq_noop), ("hold", hold)]
    crons = [CronJob(_saq_tick, cron="* * * * * *")] if cron else []
    return Worker(
        queue,
        functions=functions,
        concurrency=CONCURRENCY,
        cron_jobs=crons,
        timers={"sweep": SAQ_SWEEP_S, "schedule": 1},
        dequeue_timeout=1.0,
    )


class Saq:
    label = "saq 0.26 (Redis)"

    def __init__(self) -> None:
        self.name = f"bench_jobs_{uuid.uuid4().hex[:8]}"
        self.queue: Any = None

    async def __aenter__(self) -> Saq:
        self.queue = saq_queue(self.name)
        await self.queue.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        keys = [k async for k in self.queue.redis.scan_iter(match=f"saq:*{self.name}*")]
        if keys:
            await self.queue.redis.delete(*keys)
        await self.queue.disconnect()

    async def _run_worker(self, cron: bool = False) -> None:
        worker = saq_worker_obj(self.queue, cron=cron)
        try:
            await worker.start()
        finally:
            await worker.stop()

    async def throughput(self, n: int) -> tuple[float, float]:
        return await _timed_run(n, self._run_worker, self._enqueue)

    async def _enqueue(self, ids: range) -> None:
        await asyncio.gather(*(self.queue.enqueue("noop", i=i) for i in ids))

    async def dedup(self) -> str:
        first = await self.queue.enqueue("noop", key="BTC/USDT-1m-2024-01-01", i=0)
        second = await self.queue.enqueue("noop", key="BTC/USDT-1m-2024-01-01", i=0)
        assert first is not None
        if second is None:
            return "2nd refused (job key: enqueue returns None while the 1st is kept, ttl 600 s)"
        return "2nd accepted"

    async def periodic(self, seconds: float) -> int:
        return await _periodic_runs(functools.partial(self._run_worker, cron=True), seconds)

    async def enqueue_hold(self) -> None:
        await self.queue.enqueue("hold", heartbeat=SAQ_HEARTBEAT_S, retries=3, timeout=3600)

    @property
    def target(self) -> str:
        return self.name


async def saq_worker(name: str, marker: Path) -> None:
    queue = saq_queue(name)
    await queue.connect()
    _ready(marker).write_text(str(os.getpid()))
    worker = saq_worker_obj(queue, marker)
    await worker.start()


# -- the cases -----------------------------------------------------------------------------------


async def _timed_run(
    n: int, worker: Callable[[], Awaitable[None]], enqueue: Callable[[range], Awaitable[Any]]
) -> tuple[float, float]:
    """Jobs/s of the producer (``n`` no-op jobs, ``BATCH`` at a time, no worker running) and of one
    worker running them from the filled queue until the last ran."""
    _done.update(count=0, target=n, event=asyncio.Event())
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        await enqueue(range(first, min(n, first + BATCH)))
    enqueued = time.perf_counter()
    task = asyncio.create_task(worker())
    try:
        await asyncio.wait_for(_done["event"].wait(), 300)
        return n / (enqueued - started), n / (time.perf_counter() - enqueued)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _periodic_runs(worker: Callable[[], Awaitable[None]], seconds: float) -> int:
    """How often a once-a-second periodic job ran in ``seconds`` of one worker."""
    _done["periodic"] = 0
    task = asyncio.create_task(worker())
    try:
        await asyncio.sleep(seconds)  # a benchmark's observation window, not a synchronisation
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return int(_done["periodic"])


def _spawn(engine: str, target: str, marker: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "benchmarks.bench_job_engines", "worker", engine, target, str(marker)]
    # stderr to a file, not a pipe nobody reads while the worker runs (a full pipe would block it).
    with marker.with_suffix(f".{len(_starts(marker))}.log").open("ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)


async def _until(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def _starts(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()] if marker.exists() else []


#: Restarts of the held job inside the first worker, before it was killed (a stall declared under load).
_false_restarts: dict[str, int] = {}


async def sigkill_recovery(engine: str, candidate: Any, tmp: Path) -> float:
    """Seconds from SIGKILL of the worker running a job until a second worker starts it again."""
    marker = tmp / f"{engine}-{uuid.uuid4().hex[:6]}.starts"
    first = _spawn(engine, candidate.target, marker)
    second: subprocess.Popen[bytes] | None = None
    try:
        await candidate.enqueue_hold()
        await _until(lambda: first.pid in _starts(marker), 60, "the first worker to start the job")
        second = _spawn(engine, candidate.target, marker)
        # The second worker's start-up (imports, pool) is not recovery time: wait until it is up.
        await _until(lambda: _ready(marker).read_text() == str(second.pid), 60, "the second worker")
        await asyncio.sleep(0.5)  # ... and has entered its loop (no signal for that; a margin)
        if second.poll() is not None:
            raise RuntimeError(f"the second {engine} worker exited with {second.returncode}")
        first.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        _false_restarts[engine] = _false_restarts.get(engine, 0) + len(_starts(marker)) - 1
        await _until(lambda: second.pid in _starts(marker), 120, "the second worker to start the job")
        return time.perf_counter() - killed
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            if proc is not None:
                proc.wait()


async def run(ctx: BenchContext) -> list[Table]:
    import tempfile

    n = 50 if ctx.quick else 2000
    repeats = 1 if ctx.quick else ctx.repeats
    speed = Table(
        f"{n} no-op jobs: enqueued {BATCH} at a time, then run by 1 worker (concurrency {CONCURRENCY})"
    )
    speed.add(
        Row(
            "needed: 3 hosts at 3,000 requests/min, 1 request a job",
            [NEEDED_JOBS_PER_S],
            "jobs/s",
            baseline=True,
        )
    )
    kill = Table("Worker SIGKILLed mid-job: seconds until a second worker runs it again")
    window = 2.5 if ctx.quick else 5.5
    periodic = Table(f"A once-a-second periodic job: runs seen in {window:g} s of one worker")
    dedup: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine, cls in (("procrastinate", Procrastinate), ("saq", Saq)):
            async with cls() as candidate:  # type: ignore[attr-defined]
                speeds = [await candidate.throughput(n) for _ in range(repeats)]
                speed.add(Row(f"{candidate.label}: enqueue", [s[0] for s in speeds], "jobs/s"))
                speed.add(Row(f"{candidate.label}: run", [s[1] for s in speeds], "jobs/s"))
                # The quick form (CI's smoke run) kills the chosen engine's worker only: saq's
                # recovery waits for its sweep (7.5 s), and the full form measures both.
                if not ctx.quick or engine == "procrastinate":
                    kills = [await sigkill_recovery(engine, candidate, Path(tmp)) for _ in range(repeats)]
                    kill.add(Row(candidate.label, kills, "s", higher_is_better=False))
                periodic.add(Row(candidate.label, [float(await candidate.periodic(window))], "runs"))
                dedup.append(f"{candidate.label}: same key enqueued twice: {await candidate.dedup()}")
    speed.notes += [
        "both async-native: tasks are `async def`, workers and producers run on asyncio",
        "arq 0.28 not measured: it requires redis<6, the project pins redis 6.4",
        *dedup,
    ]
    kill.notes += [
        f"procrastinate: heartbeat {PG_HEARTBEAT_S:g} s, stalled after {PG_STALLED_S:g} s, a periodic "
        "task retries stalled jobs every second (the documented recipe; defaults: 10 s / 30 s, "
        "and no retry unless that task is written)",
        f"saq: job heartbeat {SAQ_HEARTBEAT_S} s, sweep every {SAQ_SWEEP_S} s (defaults: no heartbeat, "
        "10 s job timeout, sweep every 60 s cluster-wide: up to a minute)",
        "the second worker is up before the kill: the time is detection + retry + dispatch",
        "restarts of the job inside the living first worker before the kill (a stall declared under "
        f"load; harmless with idempotent writes): {_false_restarts}",
    ]
    periodic.notes.append("procrastinate: @app.periodic(cron) with seconds; saq: CronJob(cron) with seconds")
    return [speed, kill, periodic]


def worker_main(argv: list[str]) -> int:
    engine, target, marker = argv
    main = pg_worker if engine == "procrastinate" else saq_worker
    try:
        asyncio.run(main(target, Path(marker)))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.bench_job_engines worker procrastinate|saq TARGET MARKER")
