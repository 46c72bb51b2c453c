"""Acceptance 1: ``data-collector coverage --png`` on a real run (ccxt against the simulator into
PostgreSQL) with a maintenance gap, a hole deleted by hand and a range never fetched; the PNG's
pixels at the expected cells carry each kind's own colour."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from PIL import Image

from data_collector.coverage.grid import CellGrid, CoverageMap
from data_collector.coverage.render import COLOURS, LABEL_PX, LEGEND_PX, ROW_PX, TOP_PX, cell_box, image_size
from data_collector.markets import DAY_MS, HOUR_MS, TIMEFRAME_CODES, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import ROOT, config_for, local_iso, write_config
from tests.support.services import PG_ADMIN_DSN

DAYS = 10
#: Day by day: fetched and whole (S), the hole deleted by hand (H), the maintenance gap (E),
#: never fetched (M).
EXPECTED = "SSSHSESSMM"
STATE_OF = {"S": "stored", "H": "hole", "E": "exchange", "M": "missing"}


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))


@pytest.fixture
def day0() -> int:
    return candle_open_ms(int(time.time() * 1000), "1d") - 14 * DAY_MS


@pytest.fixture
async def sim(day0: int) -> AsyncIterator[SimulatedExchange]:
    maintenance = (day0 + 5 * DAY_MS + 3 * HOUR_MS, day0 + 5 * DAY_MS + 7 * HOUR_MS)
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=11, gaps={"SOL/USDT": [maintenance]}) as exchange:
        yield exchange


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "data_collector.cli.main",
        "coverage",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


async def test_png_shows_maintenance_gap_hole_and_missing_in_their_colours(
    base_config: dict[str, Any], sim: SimulatedExchange, pg_schema: str, day0: int, tmp_path: Path
) -> None:
    config = config_for(base_config, sim, symbols=["SOL/USDT"], timeframes=["1h"])
    async with OptimizedDataCollector(config) as collector:
        report = await collector.collect(start=day0, end=day0 + 8 * DAY_MS)  # days 8 and 9: never fetched
        assert report.ok, report.summary()
        instrument = await collector.instrument("SOL/USDT")
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:  # the hole: candles deleted by hand, behind the coverage record's back
        deleted = await conn.execute(
            f'DELETE FROM "{pg_schema}".ohlcv WHERE instrument_id = $1 AND timeframe = $2 AND ts >= $3 AND ts < $4',
            instrument.id,
            TIMEFRAME_CODES["1h"],
            day0 + 3 * DAY_MS + 10 * HOUR_MS,
            day0 + 3 * DAY_MS + 12 * HOUR_MS,
        )
        assert deleted == "DELETE 2"
    finally:
        await conn.close()
    cfg = write_config(tmp_path / "config.yaml", config)
    png, page = tmp_path / "map.png", tmp_path / "map.html"
    code, out, err = await run_cli(
        "--config",
        str(cfg),
        "--since",
        local_iso(day0),
        "--until",
        local_iso(day0 + DAYS * DAY_MS),
        "--png",
        str(png),
        "--html",
        str(page),
    )
    assert (code, err) == (0, ""), err
    assert "sim-binance SOL/USDT ohlcv 1h" in out
    assert "exchange 1 · missing 1 · holes 2 candles in 1 cell" in out

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (TOP_PX + ROW_PX + LEGEND_PX, image_width(DAYS))
    for day, kind in enumerate(EXPECTED):
        x0, y0, x1, y1 = cell_box(DAYS, 0, day)
        cell = pixels[y0:y1, x0:x1].reshape(-1, 3)
        # Every pixel of the cell, not one sample: the colour fills it exactly.
        assert {tuple(p) for p in cell.tolist()} == {rgb(COLOURS[STATE_OF[kind]])}, (day, kind)
    # The row's label and its summary are drawn as dark text beside the cells.
    band = pixels[TOP_PX : TOP_PX + ROW_PX].min(axis=2)
    grid_end = cell_box(DAYS, 0, DAYS - 1)[2]
    assert band[:, :LABEL_PX].min() < 100 and band[:, grid_end:].min() < 100
    states = [s.split('"')[1] for s in page.read_text().split("data-state=")[1:]]
    assert states == ["stored", "hole", "stored", "exchange", "stored", "missing"]


def image_width(cells: int) -> int:
    return image_size(CoverageMap(CellGrid.make(0, cells * DAY_MS, "day"), []))[0]


async def test_png_without_matplotlib_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code_ = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from data_collector.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code_,
        "coverage",
        "--png",
        str(tmp_path / "x.png"),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        "error: --png needs matplotlib, which is not installed: pip install 'data-collector[coverage]'"
    ]
    assert not (tmp_path / "x.png").exists()
