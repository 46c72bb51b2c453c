"""Where the trades ingest's floor is: a bare binary COPY into table shapes, with its CPU and WAL.

``python -m benchmarks.trades_floor [repeats]``: 1,000,000 trades (benchmarks/bench_trades.py's
pages) by ``copy_records_to_table``, 10,000 rows a transaction, 2 connections, into a fresh table
of each shape in turn; per shape the rows/s, the CPU seconds per million rows of the two
PostgreSQL backends (from ``/proc``, so PostgreSQL must run on this machine) and of this client,
the WAL written (the server's, so other sessions' writes meanwhile count too: an upper bound) and
the table's heap, and what the two backends were doing (``pg_stat_activity`` sampled every 5 ms:
on CPU or waiting to be scheduled, WAL flush, relation extension, waiting for the client). A last
shape is the candles' ``ohlcv`` table (unpartitioned) with benchmarks/bench_ingest.py's 1,000,000
candles, for the same cost per row on the same machine at the same moment; one more runs the
current trades shape over 4 connections. Then the project's writer into a fresh range with 2 and
4 writer tasks, taking turns. CPU per row is what the machine's load does not move; rows/s is.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
import uuid
from collections import Counter

import asyncpg
import psutil

from benchmarks import bench_ingest, harness
from benchmarks.bench_trades import PAGES_PER_WRITE, WRITERS, make_pages
from benchmarks.harness import PG_DSN, PG_URL
from data_collector.config import load_config
from data_collector.storage.postgres import OHLCV_DDL, PostgresCandleStore
from data_collector.storage.postgres_trades import TRADE_DDL
from data_collector.storage.store import StoreSettings
from data_collector.storage.trades import TRADE_COLUMNS, TradeBatch

_EARLIER = (
    "CREATE TABLE {s}.trades (instrument_id integer NOT NULL, id bigint NOT NULL, ts bigint NOT NULL, "
    "price double precision NOT NULL, qty double precision NOT NULL, first_trade_id bigint NOT NULL, "
    "last_trade_id bigint NOT NULL, buyer_maker boolean NOT NULL, PRIMARY KEY (instrument_id, id))"
)
_BRIN = TRADE_DDL[1]
# The current table's columns and key (instrument_id, id, ts), as one plain table: a bare COPY has
# no partition to route to, and one month's partition is such a table.
_CURRENT = TRADE_DDL[0].replace(" PARTITION BY RANGE (ts)", "")
_NO_KEY = _CURRENT.replace(", PRIMARY KEY (instrument_id, id, ts)", "")
FOUR = "current column order, key + BRIN, 4 connections"
CANDLES = "candles: ohlcv shape (unpartitioned), key"
SHAPES = {
    "earlier column order, key + BRIN": (_EARLIER, _BRIN),
    "current column order, key + BRIN": (_CURRENT, _BRIN),
    "current column order, key only": (_CURRENT,),
    "current column order, no index": (_NO_KEY,),
    FOUR: (_CURRENT, _BRIN),
    CANDLES: (OHLCV_DDL.replace(" PARTITION BY RANGE (ts)", ""),),
}


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sample_waits(pids: list[int], waits: Counter[str], stop: asyncio.Event) -> None:
    """Count what the backends ``pids`` are doing, every 5 ms until ``stop``: only while they are in a
    transaction or running a statement (a pooled connection between writes is left out)."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        while not stop.is_set():
            for row in await conn.fetch(
                "SELECT state, wait_event FROM pg_stat_activity WHERE pid = ANY($1::int[]) AND state <> 'idle'",
                pids,
            ):
                waits[f"{row[0]}: {row[1] or 'CPU'}"] += 1
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def one(
    ddl: tuple[str, ...], chunks: list[list[tuple[object, ...]]], waits: Counter[str], writers: int = 2
) -> tuple[float, float, float, float, float]:
    """rows/s, server and client CPU-s per million rows, WAL and heap MB per million rows."""
    schema = f'"floor_{uuid.uuid4().hex[:8]}"'
    total = sum(len(c) for c in chunks)
    admin = await asyncpg.connect(PG_DSN)
    conns = [await asyncpg.connect(PG_DSN) for _ in range(writers)]
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        for statement in ddl:
            await admin.execute(statement.replace("{s}", schema))
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        table, columns = ("ohlcv", None) if "ohlcv" in ddl[0] else ("trades", TRADE_COLUMNS)
        queue: asyncio.Queue[list[tuple[object, ...]] | None] = asyncio.Queue(maxsize=4)

        async def writer(conn: asyncpg.Connection) -> None:
            while (rows := await queue.get()) is not None:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        table, schema_name=schema.strip('"'), records=rows, columns=columns
                    )

        async def feed() -> None:
            for rows in chunks:
                await queue.put(rows)
            for _ in conns:
                await queue.put(None)

        lsn = await admin.fetchval("SELECT pg_current_wal_lsn()::text")
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_waits(pids, waits, stop))
        server, client, started = sum(map(_cpu, pids)), _client_cpu(), time.perf_counter()
        await asyncio.gather(feed(), *(writer(c) for c in conns))
        elapsed = time.perf_counter() - started
        stop.set()
        await sampler
        server, client = sum(map(_cpu, pids)) - server, _client_cpu() - client
        wal = await admin.fetchval("SELECT pg_current_wal_lsn() - $1::text::pg_lsn", lsn)
        heap = await admin.fetchval("SELECT pg_relation_size($1::regclass)", f"{schema}.{table}")
        scale = 1e6 / total
        return total / elapsed, server * scale, client * scale, float(wal) * scale / 1e6, heap * scale / 1e6
    finally:
        for c in conns:
            await c.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def writer_cost(
    pages: list[TradeBatch], repeats: int, writers: tuple[int, ...]
) -> dict[int, tuple[list[tuple[float, float, float]], Counter[str]]]:
    """Per writer count (taking turns): rows/s and server, client CPU-s per million trades of the
    project's writer into a fresh range, and what its pooled backends did."""
    schema = f"floor_{uuid.uuid4().hex[:8]}"
    config = load_config({"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}})
    store = PostgresCandleStore(StoreSettings.from_config(config))
    admin = await asyncpg.connect(PG_DSN)
    out: dict[int, tuple[list[tuple[float, float, float]], Counter[str]]] = {
        n: ([], Counter()) for n in writers
    }
    try:
        await store.initialize()
        # Open the pool's connections.
        await harness.run_writers(
            store.write_trades, pages[: max(writers) * PAGES_PER_WRITE * 2], PAGES_PER_WRITE, max(writers)
        )
        for _ in range(repeats):
            for n, (runs, waits) in out.items():
                await admin.execute(f'TRUNCATE "{schema}".trades, "{schema}".trade_coverage')
                # The pool's backends: those whose client port is one of this process's connections.
                ports = [c.laddr.port for c in psutil.Process().net_connections("tcp") if c.raddr]
                pids = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[]) AND pid <> pg_backend_pid()",
                    ports,
                )
                stop = asyncio.Event()
                sampler = asyncio.create_task(_sample_waits([r[0] for r in pids], waits, stop))
                server, client = sum(_cpu(r[0]) for r in pids), _client_cpu()
                elapsed = await harness.run_writers(store.write_trades, pages, PAGES_PER_WRITE, n)
                server, client = sum(_cpu(r[0]) for r in pids) - server, _client_cpu() - client
                stop.set()
                await sampler
                scale = 1e6 / sum(len(p.trades) for p in pages)
                runs.append((1e6 / scale / elapsed, server * scale, client * scale))
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
    return out


async def main(repeats: int) -> None:
    pages = make_pages(1_000_000)
    chunks: list[list[tuple[object, ...]]] = [
        [(p.instrument_id, *t) for p in pages[i : i + PAGES_PER_WRITE] for t in p.trades]
        for i in range(0, len(pages), PAGES_PER_WRITE)
    ]
    candles: list[list[tuple[object, ...]]] = [
        [(p.instrument_id, bench_ingest.CODE_1M, *c) for p in chunk for c in p.candles]
        for chunk in bench_ingest.chunks(bench_ingest.make_pages(1_000_000))
    ]
    results: dict[str, list[tuple[float, float, float, float, float]]] = {name: [] for name in SHAPES}
    waits: dict[str, Counter[str]] = {name: Counter() for name in SHAPES}
    print(f"load average at start: {os.getloadavg()}")
    for _ in range(repeats):
        for name, ddl in SHAPES.items():  # shapes take turns, so load falls on all alike
            rows = candles if name == CANDLES else chunks
            results[name].append(await one(ddl, rows, waits[name], 4 if name == FOUR else 2))
    print(
        "| table | rows/s median (min-max) | server CPU-s / 1M | client CPU-s / 1M | WAL MB / 1M | heap MB / 1M |"
    )
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        rate, server, client, wal, heap = zip(*runs, strict=True)
        print(
            f"| {name} | {statistics.median(rate):,.0f} ({min(rate):,.0f}-{max(rate):,.0f}) | "
            f"{min(server):.2f}-{max(server):.2f} | {min(client):.2f}-{max(client):.2f} | "
            f"{min(wal):.0f}-{max(wal):.0f} | {statistics.median(heap):.1f} |"
        )
    print("\nbackends' time by state (share of 5 ms samples):")
    for name, counts in waits.items():
        n = sum(counts.values()) or 1
        print(f"- {name}: " + ", ".join(f"{k} {v / n:.0%}" for k, v in counts.most_common(6)))
    for n, (runs, counts) in (await writer_cost(pages, repeats, (WRITERS, 4))).items():
        rate, server, client = zip(*runs, strict=True)
        total = sum(counts.values()) or 1
        print(
            f"project write_trades, fresh range, {n} writers: {statistics.median(rate):,.0f} trades/s "
            f"({min(rate):,.0f}-{max(rate):,.0f}); server CPU-s / 1M {min(server):.2f}-{max(server):.2f}, "
            f"client {min(client):.2f}-{max(client):.2f}; its backends: "
            + ", ".join(f"{k} {v / total:.0%}" for k, v in counts.most_common(6))
        )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
