"""``data-collector migrate-partitions``: a plain ohlcv becomes partitioned, every row kept; bad
input is one line and the documented exit code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from data_collector.cli.exits import EXIT_OK, EXIT_USAGE
from data_collector.cli.main import main as data_collector
from data_collector.cli.migrate import main
from data_collector.config import load_config
from data_collector.storage import open_store
from tests.support.archive import seed, store_config
from tests.support.backfill import write_config
from tests.support.migrate import OLD_OHLCV_DDL
from tests.support.services import PG_ADMIN_DSN, PG_URL


async def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_a_plain_ohlcv_is_migrated_and_a_second_run_has_nothing_to_do(
    pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await admin.execute(OLD_OHLCV_DDL.replace("{s}", f'"{pg_schema}"'))
        async with open_store(load_config(store_config(PG_URL, pg_schema))) as store:
            await seed(store)
        rows = await admin.fetch(f'SELECT * FROM "{pg_schema}".ohlcv ORDER BY 1, 2, 3')
        config = write_config(tmp_path / "config.yaml", store_config(PG_URL, pg_schema))
        code, out, err = await _run(["--config", str(config)], capsys)
        assert (code, err) == (EXIT_OK, "") and f"{len(rows):,} rows moved" in out, out
        kind = await admin.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = 'ohlcv'",
            pg_schema,
        )
        assert kind == b"p"
        assert await admin.fetch(f'SELECT * FROM "{pg_schema}".ohlcv ORDER BY 1, 2, 3') == rows
        code, out, err = await _run(["--config", str(config)], capsys)
        assert (code, err) == (EXIT_OK, "") and "already partitioned" in out
    finally:
        await admin.close()


async def test_sqlite_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        {"database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"}, "logging": {"file": None}},
    )
    code = await asyncio.to_thread(data_collector, ["migrate-partitions", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1 and "not PostgreSQL" in err, err
