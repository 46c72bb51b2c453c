"""An ``ohlcv`` table in the layout users have before partitioning, and a migration that SIGKILLs
itself part way.

Run as ``python -m tests.support.migrate URL SCHEMA AT``: it migrates the schema's ``ohlcv`` to
monthly partitions and kills itself with SIGKILL when the move of ``ohlcv`` series number ``AT``
(from 1) has run but is not committed, so ``AT - 1`` series are in the new table and the rest in
the old; ``AT=swap``: when ``ohlcv``'s final swap has run but is not committed (every row in the
new table). ``AT=trades:N`` and ``AT=swap:trades``: the same points of the ``trades`` table's
migration (``ohlcv``'s is committed by then).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from data_collector.config import load_config
from data_collector.storage import open_store
from data_collector.storage.postgres import PostgresCandleStore
from data_collector.storage.postgres_migrate import migrate_ohlcv
from tests.support.archive import store_config

#: ``ohlcv`` as main created it before partitioning (git log -p data_collector/storage/postgres.py).
OLD_OHLCV_DDL = """CREATE TABLE IF NOT EXISTS {s}.ohlcv (
        instrument_id integer NOT NULL,
        timeframe smallint NOT NULL,
        ts bigint NOT NULL,
        open double precision NOT NULL,
        high double precision NOT NULL,
        low double precision NOT NULL,
        close double precision NOT NULL,
        volume double precision NOT NULL,
        PRIMARY KEY (instrument_id, timeframe, ts))"""


async def migrate_and_die(url: str, schema: str, step: str) -> None:
    seen: dict[str, int] = {}
    if step.startswith("swap"):
        kill_at, table, number = "swap", step.partition(":")[2] or "ohlcv", ""
    else:
        kill_at, (table, _, number) = "key", step.rpartition(":")
        table = table or "ohlcv"

    def hook(at: str, what: str) -> None:
        name = what.split(":", 1)[0]
        seen[name] = seen.get(name, 0) + (at == "key")
        if at == kill_at and name == table and (at == "swap" or str(seen[name]) == number):
            os.kill(os.getpid(), signal.SIGKILL)

    store = open_store(load_config(store_config(url, schema)))
    assert isinstance(store, PostgresCandleStore)
    try:
        await migrate_ohlcv(store, hook)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(migrate_and_die(*sys.argv[1:4]))
