"""The simulator's data.binance.vision tree: same values as REST, µs from 2025, lag, faults, cache."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from data_collector.markets import DAY_MS
from data_collector.simulator import SimulatedExchange
from data_collector.simulator.archives import ArchiveSettings, period_range

SYMBOL = "BTC/USDT"
LISTED = 1_700_000_000_000 // DAY_MS * DAY_MS  # 2023-11-14


async def _get(sim: SimulatedExchange, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(sim.archive_url + path) as r:
        return r.status, await r.read()


def _csv(data: bytes) -> list[list[str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (name,) = zf.namelist()
        text = zf.read(name).decode()
    return [line.split(",") for line in text.splitlines()]


def _as_ms(row: list[str]) -> list[str]:
    out = list(row)
    if int(out[0]) > 10**14:
        out[0] = str(int(out[0]) // 1000)
        out[6] = str(int(out[6]) // 1000)
    return out


@pytest.mark.parametrize("date", ["2024-12-31", "2025-01-01", "2024-12"])
async def test_archive_rows_equal_rest_klines_across_the_microsecond_switch(date: str) -> None:
    async with SimulatedExchange(symbols=[SYMBOL], seed=3, listings={SYMBOL: LISTED}) as sim:
        period, start, end = period_range(date)
        path = sim.archive.url(sim.market(SYMBOL), "1m", period, date)
        status, data = await _get(sim, path)
        assert status == 200
        status, check = await _get(sim, path + ".CHECKSUM")
        hexdigest, name = check.decode().split()
        assert hexdigest == hashlib.sha256(data).hexdigest() and path.endswith(name)
        rows = _csv(data)
        assert not rows[0][0].isalpha()  # spot: no header row
        want = [[str(x) for x in k] for k in sim.klines(SYMBOL, "1m", start, end)]
        assert [_as_ms(r) for r in rows] == want
        micros = start >= 1_735_689_600_000
        assert all((int(r[0]) > 10**14) == micros for r in rows)
        if micros:
            assert rows[0][6].endswith("999999")


async def test_lag_and_listing_decide_what_exists() -> None:
    async with SimulatedExchange(symbols=[SYMBOL], seed=3, listings={SYMBOL: LISTED}) as sim:
        market = sim.market(SYMBOL)
        now = sim.clock.now_ms()
        today = now // DAY_MS * DAY_MS

        def day(ms: int) -> str:
            return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")

        assert (await _get(sim, sim.archive.url(market, "1m", "daily", day(today))))[0] == 404
        old = today - 3 * DAY_MS
        assert (await _get(sim, sim.archive.url(market, "1m", "daily", day(old))))[0] == 200
        before = LISTED - 2 * DAY_MS
        assert (await _get(sim, sim.archive.url(market, "1m", "daily", day(before))))[0] == 404
        this_month = datetime.fromtimestamp(now / 1000, UTC).strftime("%Y-%m")
        assert (await _get(sim, sim.archive.url(market, "1h", "monthly", this_month)))[0] == 404


async def test_faults_spoil_the_named_file_only_as_often_as_asked(tmp_path: Path) -> None:
    settings = ArchiveSettings(cache_dir=tmp_path, slow_s=0.01)
    async with SimulatedExchange(
        symbols=[SYMBOL], seed=3, listings={SYMBOL: LISTED}, archive=settings
    ) as sim:
        path = sim.archive.url(sim.market(SYMBOL), "1h", "daily", "2024-06-03")
        good = (await _get(sim, path))[1]
        good_check = (await _get(sim, path + ".CHECKSUM"))[1]
        assert any(os.scandir(tmp_path))  # built once, kept on disk
        sim.archive.inject("bad_checksum", "2024-06-03", times=1)
        assert (await _get(sim, path + ".CHECKSUM"))[1] != good_check
        assert (await _get(sim, path + ".CHECKSUM"))[1] == good_check
        sim.archive.inject("corrupt", "2024-06-03", times=1)
        assert (await _get(sim, path))[1] != good
        sim.archive.inject("no_checksum", "2024-06-03", times=1)
        assert (await _get(sim, path + ".CHECKSUM"))[0] == 404
        sim.archive.inject("404", "2024-06-03", times=1)
        assert (await _get(sim, path))[0] == 404
        sim.archive.inject("5xx", "2024-06-03", times=1)
        assert (await _get(sim, path))[0] == 503
        sim.archive.inject("slow", "2024-06-03", times=1)
        assert (await _get(sim, path))[1] == good
        sim.archive.inject("truncated", "2024-06-03", times=1)
        with pytest.raises(aiohttp.ClientPayloadError):
            await _get(sim, path)
        assert (await _get(sim, path))[1] == good
        other = sim.archive.url(sim.market(SYMBOL), "1h", "daily", "2024-06-04")
        sim.archive.inject("404", "2024-06-03")
        assert (await _get(sim, other))[0] == 200


@pytest.mark.parametrize("date", ["2024-12-31", "2025-01-01"])
async def test_agg_trades_archive_equals_rest_agg_trades(date: str) -> None:
    async with SimulatedExchange(symbols=[SYMBOL], seed=3, listings={SYMBOL: LISTED}) as sim:
        _, start, end = period_range(date)
        path = sim.archive.url(sim.market(SYMBOL), "aggTrades", "daily", date)
        assert path.endswith(f"/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{date}.zip")
        status, data = await _get(sim, path)
        assert status == 200
        rows = _csv(data)
        want = sim.agg_trades(SYMBOL, start, end)
        assert len(rows) == len(want) > 10_000
        micros = start >= 1_735_689_600_000
        for row, trade in zip(rows, want, strict=True):
            assert int(row[5]) == (trade["T"] * 1000 if micros else trade["T"])
            got = [int(row[0]), row[1], row[2], int(row[3]), int(row[4]), row[6] == "True", row[7]]
            assert got == [trade["a"], trade["p"], trade["q"], trade["f"], trade["l"], trade["m"], "True"]


PERP = "BTC/USDT:USDT"
UM_KINDS = {
    "klines": "last",
    "markPriceKlines": "mark",
    "indexPriceKlines": "index",
    "premiumIndexKlines": "premium",
}


@pytest.mark.parametrize("kind", list(UM_KINDS))
@pytest.mark.parametrize("date", ["2024-12-31", "2025-01-01"])
async def test_futures_klines_have_a_header_row_ms_times_and_rest_values(kind: str, date: str) -> None:
    async with SimulatedExchange(symbols=[SYMBOL], perpetuals=[PERP], seed=3) as sim:
        period, start, end = period_range(date)
        market = sim.usdm.market(PERP)
        path = sim.archive.url(market, "1h", period, date, kind)
        assert path == f"/data/futures/um/daily/{kind}/BTCUSDT/1h/BTCUSDT-1h-{date}.zip"
        status, data = await _get(sim, path)
        assert status == 200
        status, check = await _get(sim, path + ".CHECKSUM")
        assert status == 200 and check.decode().split()[0] == hashlib.sha256(data).hexdigest()
        header, *rows = _csv(data)
        assert header[:3] == ["open_time", "open", "high"] and len(header) == 12
        want = [[str(x) for x in k] for k in sim.usdm.klines(PERP, "1h", start, end, UM_KINDS[kind])]
        assert rows == want and len(rows) == 24  # ms on both sides of 2025-01-01
        # The spot market of the same name is another file with other values.
        assert (await _get(sim, sim.archive.url(sim.market(SYMBOL), "1h", period, date)))[1] != data


async def test_futures_agg_trades_have_a_header_row_and_equal_fapi_agg_trades() -> None:
    date = "2025-01-01"
    async with SimulatedExchange(symbols=[SYMBOL], perpetuals=[PERP], seed=3) as sim:
        market = sim.usdm.market(PERP)
        status, data = await _get(sim, sim.archive.url(market, "aggTrades", "daily", date, "aggTrades"))
        assert status == 200
        header, *rows = _csv(data)
        assert header == [
            "agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker"
        ]  # fmt: skip
        assert {r[6] for r in rows} == {"true", "false"}
        _, start, end = period_range(date)
        assert start <= int(rows[0][5]) and int(rows[-1][5]) < end  # milliseconds, inside the day
        url = f"{sim.futures_rest_url}/fapi/v1/aggTrades?symbol=BTCUSDT&limit=1000&fromId="
        async with aiohttp.ClientSession() as s:
            for at in (0, len(rows) // 2, len(rows) - 1000):
                async with s.get(url + rows[at][0]) as r:
                    page = await r.json()
                got = [
                    [str(t["a"]), t["p"], t["q"], str(t["f"]), str(t["l"]), str(t["T"]), str(t["m"]).lower()]
                    for t in page
                ]
                assert got == rows[at : at + 1000]
        first = await _get(sim, sim.archive.url(market, "aggTrades", "daily", "2024-12-31", "aggTrades"))
        assert int(_csv(first[1])[-1][0]) + 1 == int(rows[0][0])  # ids run on across files
