"""Small helpers shared by the chaos scenarios."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from data_collector.markets import CODE_TIMEFRAMES
from tests.support.waiting import wait_for, wait_for_async

#: Stored or true candles: (symbol, timeframe, open ms) -> (open, high, low, close, volume).
Candles = dict[tuple[str, str, int], tuple[float, ...]]


@dataclass
class Outcome:
    """How a call under fault ended: its result or its error, and how long it took."""

    what: str
    elapsed_s: float
    result: Any = None
    error: BaseException | None = None
    hung: bool = False

    def __str__(self) -> str:
        how = "HUNG" if self.hung else type(self.error).__name__ if self.error else "ok"
        return f"{self.what}: {how} after {self.elapsed_s:.2f}s"


async def bounded(what: str, call: Awaitable[Any], guard_s: float) -> Outcome:
    """Await ``call`` under an outer guard of ``guard_s``; a call still running then has *hung*.

    The guard is far above the configured timeout, so a pass never depends on the machine's speed:
    it only catches calls that would otherwise wait forever.
    """
    started = time.monotonic()
    guard = asyncio.timeout(guard_s)
    try:
        async with guard:
            result = await call
    except TimeoutError as exc:
        return Outcome(what, time.monotonic() - started, error=exc, hung=guard.expired())
    except Exception as exc:
        return Outcome(what, time.monotonic() - started, error=exc)
    return Outcome(what, time.monotonic() - started, result=result)


ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ("optimized_collection.py", "health_check.py", "stream_market_data.py")
#: Address space a script run may take: far above what a refused config needs (~0.5 GB of
#: mappings at import), far below what /dev/zero or an alias bomb would eat.
SCRIPT_MEMORY_BYTES = 1 << 30
SCRIPT_TIMEOUT_S = 60.0


@dataclass
class ScriptRun:
    """How a script run ended: exit code and both output streams."""

    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def assert_one_line(self, *codes: int) -> str:
        """Exit code in ``codes``, exactly one line on stderr and no traceback; return that line."""
        shown = (self.code, self.stderr[-800:])
        assert "Traceback" not in self.stderr + self.stdout, shown
        assert self.code in codes, shown
        assert len(self.stderr_lines) == 1, shown
        return self.stderr_lines[0]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (SCRIPT_MEMORY_BYTES, SCRIPT_MEMORY_BYTES))


def run_script(
    script: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = SCRIPT_TIMEOUT_S
) -> ScriptRun:
    """Run ``scripts/<script>`` with ``args`` under a memory limit; a run past ``timeout_s`` fails the test.

    ``stdin`` is closed and ``cwd`` is a directory of the test's own, so no ``./config.yaml`` is
    picked up by accident.
    """
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), *args],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            preexec_fn=_limit_memory,  # noqa: PLW1509  (no threads in the test process need it)
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{script} {' '.join(a[:40] for a in args)}: still running after {timeout_s}s"
        ) from None
    return ScriptRun(done.returncode, done.stdout, done.stderr)


_LOADER_CHILD = """
import sys
from data_collector.config import load_config
from data_collector.errors import ConfigError
for path in sys.argv[1:]:
    try:
        load_config(path)
        print("ok", flush=True)
    except ConfigError as exc:
        print("ConfigError", str(exc).encode("unicode_escape").decode("ascii"), flush=True)
    except BaseException as exc:
        print("CRASH", type(exc).__name__, flush=True)
# VmHWM, not ru_maxrss: Linux carries the pre-exec high-water mark (the forked copy of the test
# process) into ru_maxrss, so a big test process would be charged to the loader.
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("maxrss_kb", hwm, flush=True)
"""


@dataclass
class LoaderRun:
    """What ``load_config`` did with each path in a child process, and the child's peak RSS."""

    outcomes: list[str]
    maxrss_kb: int


def load_in_child(paths: list[Path], *, timeout_s: float = SCRIPT_TIMEOUT_S) -> LoaderRun:
    """``load_config`` on each path in one child process under the script memory limit.

    Each outcome is ``ok``, ``ConfigError <message>`` (escaped) or ``CRASH <exception type>``.
    A child that hangs fails the test: reading a config must never wait forever.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOADER_CHILD, *map(str, paths)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=_limit_memory,  # noqa: PLW1509  (no threads in the test process need it)
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        seen = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        raise AssertionError(
            f"the loader hung after {len(seen.splitlines())} of {len(paths)} files"
        ) from None
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines and lines[-1].startswith("maxrss_kb"), done.stderr[-800:]
    return LoaderRun(outcomes=lines[:-1], maxrss_kb=int(lines[-1].split()[1]))


async def stored_candles(conn: asyncpg.Connection, schema: str) -> tuple[Candles, int]:
    """Every candle stored in ``schema`` and the number of rows (more rows than keys: duplicates)."""
    rows = await conn.fetch(
        f'SELECT i.symbol, o.timeframe, o.ts, o.open, o.high, o.low, o.close, o.volume FROM "{schema}".ohlcv o '
        f'JOIN "{schema}".instruments i ON i.id = o.instrument_id'
    )
    stored = {(r[0], CODE_TIMEFRAMES[r[1]], int(r[2])): tuple(float(x) for x in r[3:8]) for r in rows}
    return stored, len(rows)


@contextlib.asynccontextmanager
async def streamer_process(config: Path, log: Path, report: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """``scripts/stream_market_data.py --config config`` in a subprocess, its output in ``log``,
    its RSS watched by ``report`` (a ScenarioReport); killed on the way out if still running."""
    with open(log, "wb") as out:  # noqa: ASYNC230 - a log sink
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "scripts" / "stream_market_data.py"), "--config", str(config),
            "--status-interval", "0", stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=str(config.parent),
        )  # fmt: skip
        report.rss.watch(proc.pid)
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def end_streamer(proc: asyncio.subprocess.Process, kill: bool, report: Any) -> int:
    """SIGKILL (counted as a ``sigkill`` fault in ``report``) or SIGINT (a clean stop that flushes)
    ``proc``; its exit code."""
    if kill:
        proc.send_signal(signal.SIGKILL)
        report.fault("sigkill")
    else:
        proc.send_signal(signal.SIGINT)
    return await asyncio.wait_for(proc.wait(), 30)


@dataclass
class KillPlan:
    """What a SIGKILL scenario watches between kills, each a condition on what is stored."""

    #: Entries on the trade streams.
    stored: Callable[[], int]
    #: Trade gaps not yet repaired.
    open_gaps: Callable[[], set[Any]]
    #: Whether every trade sent is stored.
    caught_up: Callable[[], bool]
    closed_candles: Callable[[], int]
    #: The simulator's open WebSockets.
    connections: Callable[[], int]
    #: Stops the flow (freezes the simulator's clock).
    freeze: Callable[[], None]
    repair_timeout_s: float
    #: Awaited after kill ``n`` before the next start (a candle closing meanwhile, say).
    downtime: Callable[[int], Awaitable[None]] | None = None
    #: Whether what the last run still owes elsewhere is in (the trades table), once the flow stopped.
    settled: Callable[[], Awaitable[bool]] | None = None
    #: Awaited once run ``n``'s process is up, before it must write (the scenario may start the
    #: market then, say).
    started: Callable[[int], Awaitable[None]] | None = None


async def run_with_kills(config: Path, logs: Path, kills: int, report: Any, plan: KillPlan) -> list[int]:
    """``kills`` runs of the streamer on ``config``, each SIGKILLed once it wrote 400 more trades,
    then a last one that waits for closed candles and every repair, stops the flow and ends with
    SIGINT; the exit codes."""
    codes = []
    for run in range(kills + 1):
        before = plan.stored()
        async with streamer_process(config, logs / f"stream{run}.out", report) as proc:
            if plan.started is not None:
                await plan.started(run)
            await wait_for(lambda b=before: plan.stored() >= b + 400, timeout_s=60, what=f"run {run} writing")
            if run == kills:
                await wait_for(
                    lambda: plan.closed_candles() >= 2 * kills, timeout_s=60, what="candles closed meanwhile"
                )
                try:
                    await wait_for(
                        lambda: not plan.open_gaps(),
                        timeout_s=plan.repair_timeout_s,
                        what="every gap repaired",
                    )
                except AssertionError:
                    raise AssertionError(f"trade gaps never repaired: {sorted(plan.open_gaps())}") from None
                plan.freeze()  # the flow stops
                await wait_for(lambda: not plan.open_gaps(), timeout_s=60, what="the last gaps repaired")
                # What was sent is in before the stop: frames still in flight at a SIGINT are
                # never read (the clean stop's loss, not a fault's).
                await wait_for(plan.caught_up, timeout_s=30, what="the last frames stored")
                if plan.settled is not None:
                    await wait_for_async(plan.settled, timeout_s=plan.repair_timeout_s, what="all settled")
            codes.append(await end_streamer(proc, run < kills, report))
        await wait_for(lambda: plan.connections() == 0, what="the old connection closed")
        if run < kills and plan.downtime is not None:
            await plan.downtime(run)
    return codes


async def sigstop_redis(pid: int, streamer: Any, stop_s: float, report: Any) -> None:
    """SIGSTOP the Redis server ``pid`` (a ``redis_sigstop`` fault in ``report``) until the
    streamer's writer noticed and ``stop_s`` more passed, then SIGCONT it."""
    os.kill(pid, signal.SIGSTOP)
    report.fault("redis_sigstop")
    try:
        await wait_for(lambda: not streamer.connected, timeout_s=30, what="the writer noticing")
        await asyncio.sleep(stop_s)  # the fault's length, not a synchronisation
    finally:
        os.kill(pid, signal.SIGCONT)
