"""Acceptance 2: the HTML map opens in headless Chromium with no network, renders its rows (read
from the screenshot's pixels), and makes no request that leaves the machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_collector.coverage import build_coverage_map
from data_collector.coverage.grid import STATES
from data_collector.coverage.render import COLOURS, cell_box, image_size
from data_collector.markets import HOUR_MS, MINUTE_MS
from data_collector.storage import CandleBatch, CoverageRange, StoreSettings, open_store
from tests.support.browser import CHROMIUM, shoot
from tests.support.candles import batch

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
)
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))


async def test_html_map_renders_its_rows_offline(tmp_path: Path) -> None:
    async with open_store(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")) as store:
        for n, symbol in enumerate(SYMBOLS):
            iid = (await store.ensure_instrument("binance", symbol, base=symbol[:3], quote="USDT")).id
            # Row n: n hours stored, one hour empty at the exchange, the rest never fetched.
            await store.write([batch(iid, 0, 60 * (n + 1))])
            gap = CoverageRange(60 * (n + 1) * MINUTE_MS, 60 * (n + 2) * MINUTE_MS, "empty")
            await store.write([CandleBatch(iid, "1m", [], [gap])])
        await store.remove_candles(1, "1m", [30 * MINUTE_MS], [])  # a hole in row 0, hour 0
        cover = await build_coverage_map(store, ["binance"], since=0, until=6 * HOUR_MS)
    page = cover.save_html(tmp_path / "map.html")
    width, height = image_size(cover)

    shot = shoot(page, tmp_path, width, height)

    assert shot.left_the_machine() == []
    with Image.open(shot.screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert [r.label for r in cover.rows] == [f"binance {s} ohlcv 1m" for s in SYMBOLS]
    for r, row in enumerate(cover.rows):
        for col, state in enumerate(row.states):
            x0, y0, x1, y1 = cell_box(cover.grid.count, r, col)
            centre = tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2].tolist())
            assert centre == rgb(COLOURS[STATES[state]]), (r, col, STATES[state])
    assert [STATES[s] for s in cover.rows[0].states] == [
        "hole",
        "exchange",
        "missing",
        "missing",
        "missing",
        "missing",
    ]
    assert [STATES[s] for s in cover.rows[2].states][:4] == ["stored", "stored", "stored", "exchange"]

    # The check can fail: the same page with a remote image (and no CSP) is caught.
    leaky = tmp_path / "leaky" / "map.html"
    leaky.parent.mkdir()
    text = page.read_text().replace("Content-Security-Policy", "x-no-policy")
    leaky.write_text(text.replace("</body>", '<img src="http://coverage-map.invalid/pixel.png"></body>'))
    assert shoot(leaky, leaky.parent, width, height).left_the_machine() == [
        "http://coverage-map.invalid/pixel.png"
    ]
