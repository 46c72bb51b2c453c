"""The collector's orchestration with an in-memory store and a fake exchange (pure logic).

The end-to-end tests (real ccxt against the simulator, real PostgreSQL) are in
test_collector_e2e.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt.async_support as ccxt
import pytest

from data_collector.backfill.exchange import ExchangeClient, ExchangeSettings
from data_collector.backfill.report import PairReport
from data_collector.backfill.run import BackfillSettings
from data_collector.config import load_config
from data_collector.errors import ClosedError, InvalidSymbolError, UsageError
from data_collector.markets import DAY_MS, HOUR_MS, candle_opens
from data_collector.optimized_collector import OptimizedDataCollector
from tests.support.collector_fakes import FakeExchange, MemoryStore

T0 = 1_704_067_200_000  # 2024-01-01
LISTING = T0 + 2 * DAY_MS + 3 * HOUR_MS
GAP = (T0 + 3 * DAY_MS, T0 + 3 * DAY_MS + 2 * HOUR_MS)
SYMBOLS = ["SOL/USDT", "BTC/USDT"]
TFS = ["1m", "15m", "1h"]
# The fake exchange has no archive tree: REST only (the default, auto, would ask data.binance.vision).
CONFIG: dict[str, Any] = {
    "logging": {"file": None},
    "symbols": SYMBOLS,
    "timeframes": TFS,
    "exchange": {"source": "rest"},
}


@pytest.fixture
def fake() -> FakeExchange:
    return FakeExchange(SYMBOLS, LISTING, [GAP])


def collector_on(fake: FakeExchange, config: Any = CONFIG, **kwargs: Any) -> OptimizedDataCollector:
    """A collector whose exchange client wraps ``fake`` (injected, not patched in)."""
    client = ExchangeClient(ExchangeSettings.from_config(load_config(config)), exchange=fake)
    return OptimizedDataCollector(config, client=client, **kwargs)


def expected(tf: str, start: int, end: int) -> list[int]:
    return [
        t
        for t in candle_opens(max(start, LISTING - LISTING % 3_600_000), end, tf)
        if not GAP[0] <= t < GAP[1]
    ]


async def test_collects_everything_then_nothing(fake: FakeExchange) -> None:
    store = MemoryStore()
    end = T0 + 5 * DAY_MS
    async with collector_on(fake, CONFIG, store=store) as collector:
        report = await collector.collect(start=T0, end=end)
        assert report.ok, report.summary()
        for symbol in SYMBOLS:
            inst = await collector.instrument(symbol)
            assert inst.listing_ms == LISTING
            for tf in TFS:
                rows = await store.load(inst.id, tf, T0, end)
                opens = [r[0] for r in rows]
                want = [
                    t
                    for t in candle_opens(T0, end, tf)
                    if t >= LISTING - LISTING % {"1m": 60_000, "15m": 900_000, "1h": 3_600_000}[tf]
                    and not GAP[0] <= t < GAP[1]
                ]
                assert opens == want, (symbol, tf)
        assert report.rows_written == sum(len(v) for v in store.rows.values())
        # nothing before the listing was asked for: no page starts before it
        assert all(since is None or since == 0 or since >= LISTING - 3_600_000 for _, _, since in fake.calls)
        calls = len(fake.calls)
        again = await collector.collect(start=T0, end=end)
        assert again.rows_written == 0 and again.requests == 0
        assert len(fake.calls) == calls
        gaps = await collector.find_gaps("SOL/USDT", "1m", T0, end)
        kinds = {(g.start_ms, g.end_ms): g.kind for g in gaps}
        assert kinds[GAP] == "exchange"
        assert all(k == "exchange" for k in kinds.values())
        frame = await collector.load_ohlcv("SOL/USDT", "1h", T0, end)
        assert str(frame.index.tz) == "UTC" and list(frame.columns) == [
            "open",
            "high",
            "low",
            "close",
            "volume",
        ]
    # A client and a store passed in belong to the caller: the collector closes neither.
    assert not fake.closed and store.closed == 0


async def test_bad_symbol_fails_that_pair_only(fake: FakeExchange) -> None:
    fake.fail["BTC/USDT"] = ccxt.BadSymbol('binance {"code":-1121,"msg":"Invalid symbol."}')
    async with collector_on(fake, CONFIG, store=MemoryStore()) as collector:
        report = await collector.collect(start=T0, end=T0 + DAY_MS * 3)
    assert set(report.failures) == {f"BTC/USDT {tf}" for tf in TFS}
    assert all(report.pairs[f"SOL/USDT {tf}"].status == "done" for tf in TFS)
    assert "symbol" in next(iter(report.failures.values())).lower()


async def test_transient_errors_are_retried(fake: FakeExchange) -> None:
    store = MemoryStore()
    store.fail_next_writes = 2
    original = fake.fetch_ohlcv
    failures = {"n": 0}

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        failures["n"] += 1
        if failures["n"] % 5 == 0:
            raise ccxt.ExchangeNotAvailable("binance 503")
        return await original(*args, **kwargs)

    fake.fetch_ohlcv = flaky  # type: ignore[method-assign]
    async with collector_on(fake, CONFIG, store=store) as collector:
        report = await collector.collect(start=T0, end=T0 + 4 * DAY_MS)
    assert report.ok, report.summary()
    assert report.retries > 0
    inst = store.by_key[("binance", "SOL/USDT")]
    assert [r[0] for r in await store.load(inst.id, "1m", T0, T0 + 4 * DAY_MS)] == expected(
        "1m", T0, T0 + 4 * DAY_MS
    )


async def test_stop_then_resume(fake: FakeExchange) -> None:
    store = MemoryStore()
    fake.delay_s = 0.01
    end = T0 + 6 * DAY_MS
    some_pages = asyncio.Event()

    def progress(pair: PairReport) -> None:
        if pair.pages_done >= 2:
            some_pages.set()

    config = {**CONFIG, "performance": {"concurrent_symbols": 1}}
    async with collector_on(fake, config, store=store, progress=progress) as collector:
        task = asyncio.create_task(collector.collect(start=T0, end=end))
        await some_pages.wait()
        collector.request_stop()
        first = await task
        assert first.interrupted
        assert 0 < first.rows_written < 6 * 1440 * 2
        second = await collector.collect(start=T0, end=end)
        # nothing stored by the first run is fetched again
        assert second.ok and second.rows_skipped == 0 and second.rows_written > 0
    inst = store.by_key[("binance", "SOL/USDT")]
    assert [r[0] for r in await store.load(inst.id, "1m", T0, end)] == expected("1m", T0, end)


async def test_usage_errors_before_anything_is_written(fake: FakeExchange) -> None:
    store = MemoryStore()
    async with collector_on(fake, CONFIG, store=store) as collector:
        with pytest.raises(InvalidSymbolError):
            await collector.collect(symbols=["DOGE/USDT"], start=T0, end=T0 + DAY_MS)
        with pytest.raises(UsageError):
            await collector.collect(start=T0 + DAY_MS, end=T0)
        with pytest.raises(UsageError):
            await collector.collect(timeframes=["7m"], start=T0, end=T0 + DAY_MS)
    assert store.writes == 0 and fake.calls == []


async def test_close_is_idempotent_and_final(fake: FakeExchange) -> None:
    collector = collector_on(fake, CONFIG, store=MemoryStore())
    await collector.initialize()
    await collector.close()
    await collector.close()
    with pytest.raises(ClosedError):
        await collector.collect(start=T0, end=T0 + DAY_MS)


class RecordingMonitor:
    def __init__(self) -> None:
        self.api: list[tuple[float, bool, int | None]] = []
        self.retries = 0
        self.weight = 0
        self.rows = 0
        self.gaps = 0
        self.depths: list[int] = []

    def record_api_call(self, duration_ms: float, success: bool = True, *, status: int | None = None) -> None:
        self.api.append((duration_ms, success, status))

    def record_request_weight(
        self, sent: int, used: int, limit: int, budget: int, resets_in_s: float
    ) -> None:
        self.weight += sent

    def record_retry(self, n: int = 1) -> None:
        self.retries += n

    def record_db_operation(
        self, op: str, duration_ms: float, rows: int = 0, *, written: bool | None = None
    ) -> None:
        self.rows += rows

    def record_gaps(self, n: int = 1) -> None:
        self.gaps += n

    def record_archive_file(self, nbytes: int, rows: int) -> None:
        pass

    def set_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


async def test_monitor_receives_calls_retries_and_rows(fake: FakeExchange) -> None:
    original = fake.fetch_ohlcv
    calls = {"n": 0}

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ccxt.RequestTimeout("binance GET timed out")
        return await original(*args, **kwargs)

    fake.fetch_ohlcv = flaky  # type: ignore[method-assign]
    monitor = RecordingMonitor()
    async with collector_on(fake, CONFIG, store=MemoryStore(), monitor=monitor) as collector:
        report = await collector.collect(start=T0, end=T0 + 3 * DAY_MS)
    assert report.ok
    assert len(monitor.api) == report.requests + 2  # plus load_markets and /time
    assert sum(1 for _, ok, _ in monitor.api if not ok) == 1 and monitor.retries == 1
    assert monitor.rows == report.rows_written > 0 and monitor.depths


async def test_concurrent_symbols_bounds_symbols_in_flight(fake: FakeExchange) -> None:
    symbols = [f"C{i}/USDT" for i in range(5)]
    fake.markets.update(
        {s: {"symbol": s, "base": s.split("/")[0], "quote": "USDT", "type": "spot"} for s in symbols}
    )
    original = fake.fetch_ohlcv
    in_flight: dict[str, int] = {}
    peak = {"symbols": 0}

    async def tracking(symbol: str, *args: Any, **kwargs: Any) -> Any:
        in_flight[symbol] = in_flight.get(symbol, 0) + 1
        peak["symbols"] = max(peak["symbols"], sum(1 for n in in_flight.values() if n))
        try:
            await asyncio.sleep(0.002)
            return await original(symbol, *args, **kwargs)
        finally:
            in_flight[symbol] -= 1

    fake.fetch_ohlcv = tracking  # type: ignore[method-assign]
    config = {**CONFIG, "symbols": symbols, "performance": {"concurrent_symbols": 2}}
    async with collector_on(fake, config, store=MemoryStore()) as collector:
        report = await collector.collect(start=T0, end=T0 + 4 * DAY_MS)
    assert report.ok
    assert peak["symbols"] == 2


async def test_secrets_never_reach_the_log(fake: FakeExchange, tmp_path: Any) -> None:
    import logging

    from data_collector.cli.logging_setup import setup_logging

    log_file = tmp_path / "collector.log"
    config = load_config(
        {
            **CONFIG,
            "logging": {"file": str(log_file), "level": "DEBUG"},
            "exchange": {"api_key": "KEY-very-secret", "secret": "SECRET-very-secret"},
            "database": {"url": "postgresql+asyncpg://me:pa55word@127.0.0.1:1/x"},
        }
    )
    setup_logging(config, console_level=None)
    try:
        async with collector_on(fake, config, store=MemoryStore()) as collector:
            await collector.collect(start=T0, end=T0 + DAY_MS)
            logging.getLogger("test").warning("connecting to %s", config.database.url.get_secret_value())
            logging.getLogger("test").info("config %r collector %r", config, collector)
    finally:
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_dc_handler", False):
                logging.getLogger().removeHandler(handler)
                handler.close()
    text = log_file.read_text()
    assert "connecting to postgresql+asyncpg://me:***@127.0.0.1:1/x" in text
    for secret in ("very-secret", "pa55word"):
        assert secret not in text


async def test_exchanges_without_weight_headers_use_ccxt_rate_limit() -> None:
    # Built from settings alone: no config dict.
    client = ExchangeClient(ExchangeSettings(id="kraken"))
    exchange = client._build()
    try:
        assert client.limiter.weight_limit is None
        assert client.limiter.fallback_interval_s == pytest.approx(exchange.rateLimit / 1000)
        assert exchange.enableRateLimit is False  # our limiter paces, not ccxt's
    finally:
        await exchange.close()
    binance = ExchangeClient(ExchangeSettings(id="binance", timeout_s=3.5))
    built = binance._build()
    try:
        assert binance.limiter.weight_limit == 6000 and built.enableRateLimit is False
        assert built.timeout == 3_500
    finally:
        await built.close()


def test_exchange_settings_follow_the_config() -> None:
    config = load_config(
        {
            "logging": {"file": None},
            "exchange": {"id": "kraken", "timeout_s": 4, "max_retries": 2, "api_key": "k", "secret": "s"},
            "performance": {"api_rate_limit": 600, "requests_in_flight": 3},
        }
    )
    settings = ExchangeSettings.from_config(config)
    assert (settings.id, settings.timeout_s, settings.max_retries) == ("kraken", 4, 2)
    assert (settings.requests_per_min, settings.requests_in_flight) == (600, 3)
    assert (settings.api_key, settings.secret) == ("k", "s") and "'k'" not in repr(settings)
    backfill = BackfillSettings.from_config(load_config({"logging": {"file": None}}))
    assert (backfill.pages_in_flight, backfill.pages_in_flight_per_pair) == (32, 16)


class _Peak:
    """Counts coroutines inside a block and keeps the most seen at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def around(self, call: Any) -> Any:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.002)
            return await call
        finally:
            self.now -= 1


async def test_requests_in_flight_is_a_setting(fake: FakeExchange) -> None:
    original = fake.fetch_ohlcv
    peak = _Peak()

    async def tracking(*args: Any, **kwargs: Any) -> Any:
        return await peak.around(original(*args, **kwargs))

    fake.fetch_ohlcv = tracking  # type: ignore[method-assign]
    config = {**CONFIG, "performance": {"requests_in_flight": 3}}
    async with collector_on(fake, config, store=MemoryStore()) as collector:
        report = await collector.collect(start=T0, end=T0 + 10 * DAY_MS)
    assert report.ok
    assert peak.most == 3


async def test_pages_in_flight_is_a_setting(fake: FakeExchange) -> None:
    original = fake.fetch_ohlcv
    peak = _Peak()

    async def tracking(symbol: str, timeframe: str, since: int | None = None, *a: Any, **kw: Any) -> Any:
        if since == 0:  # a listing probe, not a page
            return await original(symbol, timeframe, since, *a, **kw)
        return await peak.around(original(symbol, timeframe, since, *a, **kw))

    fake.fetch_ohlcv = tracking  # type: ignore[method-assign]
    config = {**CONFIG, "performance": {"pages_in_flight": 2, "requests_in_flight": 16}}
    async with collector_on(fake, config, store=MemoryStore()) as collector:
        report = await collector.collect(start=T0, end=T0 + 10 * DAY_MS)
    assert report.ok
    assert peak.most == 2


async def test_an_unexpected_error_in_one_symbol_stops_the_run_and_leaves_no_task(fake: FakeExchange) -> None:
    """A bug (not a failed pair) in one symbol's task: collect() raises it, siblings are cancelled.

    Before the task group, the other symbol's fetchers went on after the writers had stopped and
    blocked on the full write queue for good.
    """
    other_busy = asyncio.Event()
    original = fake.fetch_ohlcv

    async def fetch(symbol: str, timeframe: str, since: int | None = None, *args: Any, **kwargs: Any) -> Any:
        if symbol == "BTC/USDT" and since == 0:
            await other_busy.wait()  # fail while SOL/USDT's pages stream
            raise UsageError("injected misuse: not a failed pair, a bug")
        if symbol == "SOL/USDT" and since:
            other_busy.set()
        return await original(symbol, timeframe, since, *args, **kwargs)

    fake.fetch_ohlcv = fetch  # type: ignore[method-assign]
    fake.delay_s = 0.001
    before = asyncio.all_tasks()
    async with collector_on(fake, CONFIG, store=MemoryStore()) as collector:
        with pytest.raises(UsageError, match="injected misuse"):
            await asyncio.wait_for(collector.collect(start=T0, end=T0 + 60 * DAY_MS), timeout=30)
    left = asyncio.all_tasks() - before
    assert not left, left
