"""Where the trades ingest's floor is: a bare binary COPY into table shapes, with its CPU and WAL.

``python -m benchmarks.trades_floor [repeats]``: 1,000,000 trades (benchmarks/bench_trades.py's
pages) by ``copy_records_to_table``, 10,000 rows a transaction, 2 connections, into a fresh table
of each shape in turn; per shape the rows/s, the CPU seconds per million rows of the two
PostgreSQL backends (from ``/proc``, so PostgreSQL must run on this machine) and of this client,
the WAL written (the server's, so other sessions' writes meanwhile count too: an upper bound) and
the table's heap. CPU per row is what the machine's load does not move; rows/s is.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import time
import uuid

import asyncpg
import psutil

from benchmarks.bench_trades import PAGES_PER_WRITE, WRITERS, make_pages, run_writers
from benchmarks.harness import PG_DSN, PG_URL
from data_collector.config import load_config
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.postgres_trades import TRADE_DDL
from data_collector.storage.store import StoreSettings
from data_collector.storage.trades import TRADE_COLUMNS, TradeBatch

_EARLIER = (
    "CREATE TABLE {s}.trades (instrument_id integer NOT NULL, id bigint NOT NULL, ts bigint NOT NULL, "
    "price double precision NOT NULL, qty double precision NOT NULL, first_trade_id bigint NOT NULL, "
    "last_trade_id bigint NOT NULL, buyer_maker boolean NOT NULL, PRIMARY KEY (instrument_id, id))"
)
_BRIN = TRADE_DDL[1]
_NO_KEY = TRADE_DDL[0].replace(", PRIMARY KEY (instrument_id, id)", "")
SHAPES = {
    "earlier column order, key + BRIN": (_EARLIER, _BRIN),
    "current column order, key + BRIN": (TRADE_DDL[0], _BRIN),
    "current column order, key only": (TRADE_DDL[0],),
    "current column order, no index": (_NO_KEY,),
}


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one(
    ddl: tuple[str, ...], chunks: list[list[tuple[object, ...]]]
) -> tuple[float, float, float, float]:
    """rows/s, server and client CPU-s per million rows, WAL MB per million rows."""
    schema = f'"floor_{uuid.uuid4().hex[:8]}"'
    total = sum(len(c) for c in chunks)
    admin = await asyncpg.connect(PG_DSN)
    conns = [await asyncpg.connect(PG_DSN) for _ in range(2)]
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        for statement in ddl:
            await admin.execute(statement.replace("{s}", schema))
        pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
        queue: asyncio.Queue[list[tuple[object, ...]] | None] = asyncio.Queue(maxsize=4)

        async def writer(conn: asyncpg.Connection) -> None:
            while (rows := await queue.get()) is not None:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "trades", schema_name=schema.strip('"'), records=rows, columns=TRADE_COLUMNS
                    )

        async def feed() -> None:
            for rows in chunks:
                await queue.put(rows)
            for _ in conns:
                await queue.put(None)

        lsn = await admin.fetchval("SELECT pg_current_wal_lsn()::text")
        server, client, started = sum(map(_cpu, pids)), _client_cpu(), time.perf_counter()
        await asyncio.gather(feed(), *(writer(c) for c in conns))
        elapsed = time.perf_counter() - started
        server, client = sum(map(_cpu, pids)) - server, _client_cpu() - client
        wal = await admin.fetchval("SELECT pg_current_wal_lsn() - $1::text::pg_lsn", lsn)
        heap = await admin.fetchval("SELECT pg_relation_size($1::regclass)", f"{schema}.trades")
        scale = 1e6 / total
        return total / elapsed, server * scale, client * scale, float(wal) * scale / 1e6, heap * scale / 1e6
    finally:
        for c in conns:
            await c.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def writer_cost(pages: list[TradeBatch], repeats: int) -> list[tuple[float, float, float]]:
    """rows/s and server, client CPU-s per million trades of the project's writer, fresh range."""
    schema = f"floor_{uuid.uuid4().hex[:8]}"
    config = load_config({"database": {"url": PG_URL, "schema": schema}, "logging": {"file": None}})
    store = PostgresCandleStore(StoreSettings.from_config(config))
    admin = await asyncpg.connect(PG_DSN)
    runs = []
    try:
        await store.initialize()
        await run_writers(store, pages[: WRITERS * PAGES_PER_WRITE * 2])  # open the pool
        for _ in range(repeats):
            await admin.execute(f'TRUNCATE "{schema}".trades, "{schema}".trade_coverage')
            # The pool's backends: those whose client port is one of this process's connections.
            ports = [c.laddr.port for c in psutil.Process().net_connections("tcp") if c.raddr]
            pids = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1::int[]) AND pid <> pg_backend_pid()",
                ports,
            )
            server, client = sum(_cpu(r[0]) for r in pids), _client_cpu()
            elapsed = await run_writers(store, pages)
            server, client = sum(_cpu(r[0]) for r in pids) - server, _client_cpu() - client
            scale = 1e6 / sum(len(p.trades) for p in pages)
            runs.append((1e6 / scale / elapsed, server * scale, client * scale))
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()
    return runs


async def main(repeats: int) -> None:
    pages = make_pages(1_000_000)
    chunks = [
        [(p.instrument_id, *t) for p in pages[i : i + PAGES_PER_WRITE] for t in p.trades]
        for i in range(0, len(pages), PAGES_PER_WRITE)
    ]
    results: dict[str, list[tuple[float, float, float, float, float]]] = {name: [] for name in SHAPES}
    print(f"load average at start: {os.getloadavg()}")
    for _ in range(repeats):
        for name, ddl in SHAPES.items():  # shapes take turns, so load falls on all alike
            results[name].append(await one(ddl, chunks))
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
    writer = await writer_cost(pages, repeats)
    rate, server, client = zip(*writer, strict=True)
    print(
        f"project write_trades, fresh range, 2 writers: {statistics.median(rate):,.0f} trades/s "
        f"({min(rate):,.0f}-{max(rate):,.0f}); server CPU-s / 1M {min(server):.2f}-{max(server):.2f}, "
        f"client {min(client):.2f}-{max(client):.2f}"
    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
