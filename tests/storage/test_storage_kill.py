"""SIGKILL at any moment, then a restart: the tables end identical to an uninterrupted run.

The writer below resumes the way the collector does: it asks the store what is not covered yet
and writes only that, with two writer tasks. Run as ``python -m tests.storage.test_storage_kill URL
SCHEMA`` it prints one line per committed write and waits for a line on stdin before going on.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from data_collector.config import load_config
from data_collector.markets import MINUTE_MS
from data_collector.storage import CandleBatch, CoverageRange, open_store
from tests.support.services import PG_ADMIN_DSN, PG_URL, dropped_schemas

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE_MS
MINUTES = 60_000
PAGE = 500
#: An exchange-side gap the writer records as 'empty'.
GAP = (START_MS + 10_000 * MINUTE_MS, START_MS + 10_700 * MINUTE_MS)


def _page(iid: int, start_ms: int, end_ms: int) -> CandleBatch:
    if GAP[0] <= start_ms and end_ms <= GAP[1]:
        return CandleBatch(iid, "1m", [], [CoverageRange(start_ms, end_ms, "empty")])
    rows = [
        (ts, ts / 1e9, ts / 1e9 + 1, ts / 1e9 - 1, ts / 1e9 + 0.5, float(ts % 97))
        for ts in range(start_ms, end_ms, MINUTE_MS)
    ]
    return CandleBatch(iid, "1m", rows, [CoverageRange(start_ms, end_ms, "data")])


async def write_missing(url: str, schema: str, *, verbose: bool) -> tuple[int, int]:
    """Write every page not covered yet; returns (written, skipped)."""
    config = load_config({"database": {"url": url, "schema": schema}, "logging": {"file": None}})
    store = open_store(config)
    written = skipped = 0
    try:
        await store.initialize()
        iid = (await store.ensure_instrument("binance", "SOL/USDT", base="SOL", quote="USDT")).id
        end = START_MS + MINUTES * MINUTE_MS
        pages: list[CandleBatch] = []
        for s, e in await store.missing_ranges(iid, "1m", START_MS, end):
            # Page boundaries on a fixed grid, plus the gap's edges, so that reruns page alike.
            grid = range(START_MS, e, PAGE * MINUTE_MS)
            edges = sorted(x for x in {s, e, *grid, *GAP} if s <= x <= e)
            pages += [_page(iid, a, b) for a, b in zip(edges, edges[1:], strict=False)]
        queue: asyncio.Queue[list[CandleBatch] | None] = asyncio.Queue(maxsize=2)

        async def writer() -> None:
            nonlocal written, skipped
            while (chunk := await queue.get()) is not None:
                result = await store.write(chunk)
                written += result.written
                skipped += result.skipped
                if verbose:
                    print("committed", flush=True)
                    # Wait for the test's answer: otherwise, on a loaded machine, the writer runs
                    # ahead of the test reading its lines and finishes before the kill lands.
                    await asyncio.to_thread(sys.stdin.readline)

        tasks = [asyncio.create_task(writer()) for _ in range(2)]
        for i in range(0, len(pages), 3):
            await queue.put(pages[i : i + 3])
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    return written, skipped


async def _snapshot(schema: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await conn.fetch(f'SELECT * FROM "{schema}".ohlcv ORDER BY instrument_id, timeframe, ts')
        config = load_config({"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}})
        async with open_store(config) as store:
            coverage = await store.coverage(1, "1m")
        return [tuple(r) for r in rows], coverage
    finally:
        await conn.close()


@pytest.fixture
async def two_schemas() -> AsyncIterator[tuple[str, ...]]:
    async with dropped_schemas(2) as names:
        yield names


async def _run_and_kill(schema: str, after_commits: int, rng: random.Random) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.storage.test_storage_kill",
        PG_URL,
        schema,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        for _ in range(after_commits):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, "the writer finished before it could be killed"
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await asyncio.sleep(rng.random() * 0.05)  # land anywhere inside the next write
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_sigkill_at_three_points_then_restart_matches_an_uninterrupted_run(
    two_schemas: tuple[str, ...],
) -> None:
    clean, killed = two_schemas
    total_written, _ = await write_missing(PG_URL, clean, verbose=False)
    rng = random.Random(3)
    for after in (1, 8, 12):
        await _run_and_kill(killed, after, rng)
    written, skipped = await write_missing(PG_URL, killed, verbose=False)
    # The restart wrote only what no committed write had covered: nothing twice, nothing skipped.
    assert skipped == 0 and 0 < written < total_written
    assert await _snapshot(killed) == await _snapshot(clean)
    _, coverage = await _snapshot(clean)
    assert coverage == [
        CoverageRange(START_MS, GAP[0], "data"),
        CoverageRange(*GAP, "empty"),
        CoverageRange(GAP[1], START_MS + MINUTES * MINUTE_MS, "data"),
    ]
    # A second restart finds nothing to do.
    assert await write_missing(PG_URL, killed, verbose=False) == (0, 0)


if __name__ == "__main__":
    asyncio.run(write_missing(sys.argv[1], sys.argv[2], verbose=True))
