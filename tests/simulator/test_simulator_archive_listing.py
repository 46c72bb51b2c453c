"""The simulator's S3-style listing of its archive tree, read by the collector's own listing parser."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import pytest

from data_collector.markets import DAY_MS, HOUR_MS
from data_collector.simulator import SimulatedExchange
from data_collector.venues.binance.archive_fetch import ArchiveFailure
from data_collector.venues.binance.archive_listing import archive_dates, list_archive, parse_listing

SYMBOL = "BTC/USDT"
PERP = "BTC/USDT:USDT"
LISTED = 1_700_000_000_000 // DAY_MS * DAY_MS + 5 * HOUR_MS  # 2023-11-14 05:00
GAP_DAY = 1_720_000_000_000 // DAY_MS * DAY_MS  # 2024-07-03: no trade all day


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


async def test_listing_pages_through_every_published_file_and_only_those() -> None:
    gaps = {SYMBOL: [(GAP_DAY - HOUR_MS, GAP_DAY + DAY_MS + HOUR_MS)]}
    async with (
        SimulatedExchange(
            symbols=[SYMBOL], perpetuals=[PERP], seed=3, listings={SYMBOL: LISTED}, gaps=gaps
        ) as sim,
        aiohttp.ClientSession() as session,
    ):
        prefix = "data/spot/daily/klines/BTCUSDT/1m/"
        listing = await list_archive(session, sim.archive_url, prefix)
        assert sim.archive.stats["listing_requests"] >= 2  # more than 1,000 keys: paged by marker
        assert len(listing.keys) == len(set(listing.keys)) == 2 * len(archive_dates(listing.keys))
        dates = archive_dates(listing.keys)
        now = sim.clock.now_ms()
        last = (now - sim.archive.settings.daily_lag_ms) // DAY_MS * DAY_MS - DAY_MS
        expected = [_day(d) for d in range(LISTED // DAY_MS * DAY_MS, last + DAY_MS, DAY_MS) if d != GAP_DAY]
        assert dates == expected
        market = sim.market(SYMBOL)
        for date, status in [
            (dates[0], 200),
            (dates[-1], 200),
            (_day(GAP_DAY), 404),
            (_day(last + DAY_MS), 404),
        ]:
            url = sim.archive_url + sim.archive.url(market, "1m", "daily", date)
            async with session.get(url) as r:
                assert r.status == status, date
        months = await list_archive(session, sim.archive_url, "data/spot/monthly/aggTrades/BTCUSDT/")
        assert archive_dates(months.keys)[0] == "2023-11"
        kinds = await list_archive(session, sim.archive_url, "data/futures/um/daily/markPriceKlines/")
        assert kinds.prefixes == ["data/futures/um/daily/markPriceKlines/BTCUSDT/"] and not kinds.keys
        assert not (await list_archive(session, sim.archive_url, "data/spot/daily/klines/NOPE/1m/")).keys


def test_a_page_that_is_not_a_listing_is_a_clear_failure() -> None:
    with pytest.raises(ArchiveFailure, match="unreadable listing"):
        parse_listing(b"<html>")
    with pytest.raises(ArchiveFailure, match="not a bucket listing"):
        parse_listing(b"<Error><Code>NoSuchKey</Code></Error>")
