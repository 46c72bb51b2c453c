"""The reader API over what the streamer wrote, and the streaming command line."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import redis.asyncio

from data_collector.cli.stream import run_stream_cli
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from data_collector.streaming.reader import MarketDataReader
from tests.support.services import REDIS_URL
from tests.support.streaming import read_until, stream_config, wait_for, wait_for_async

ROOT = Path(__file__).resolve().parents[2]


async def test_reader_latest_last_range_dataframe_tail_and_gaps(redis_prefix: str) -> None:
    symbol = "SOL/USDT"
    async with SimulatedExchange(symbols=[symbol], seed=9, ws_rate=50) as sim:
        streamer = OptimizedWebSocketStreamer(
            symbols=[symbol],
            redis_client=REDIS_URL,
            channels=["trade", "kline_1m", "depth"],
            config=stream_config(sim, redis_prefix),
        )
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        reader = MarketDataReader(client, prefix=redis_prefix, exchange="sim-binance")
        async with streamer:
            await wait_for(lambda: streamer.get_metrics()["written"] > 50, what="entries")
            tailed: list[dict[str, object]] = []

            async def tail() -> None:
                async for event in reader.tail(symbol, "trade", block_ms=200):
                    tailed.append(event)

            tail_task = asyncio.create_task(tail())
            await wait_for(lambda: len(tailed) >= 1, what="the tail reading")
            before_drop = streamer.get_metrics()["written"]
            sim.ws_drop_all()
            await wait_for(lambda: streamer.get_metrics()["written"] > before_drop + 50, what="more entries")
            await wait_for(lambda: len(tailed) > 5, what="tailed entries")
            await wait_for(lambda: streamer.order_book(symbol) is not None, what="the book")

            async def published() -> bool:
                return await reader.book(symbol) is not None

            await wait_for_async(published, what="the book published")
            book = await reader.book(symbol)
            tail_task.cancel()

            latest = await reader.latest(symbol, "trade")
            last = await reader.last(symbol, "trade", 10)
            assert latest is not None and last[-1]["id"] >= latest["id"]
            assert [e["id"] for e in last] == sorted(e["id"] for e in last) and len(last) == 10
            start, end = last[0]["trade_ms"], last[-1]["trade_ms"]
            ranged = await reader.range(symbol, "trade", start, end)
            assert {e["id"] for e in last} <= {e["id"] for e in ranged}
            assert all(start <= e["trade_ms"] <= end for e in ranged)
            frame = await reader.dataframe(symbol, "trade", count=20)
            assert len(frame) == 20 and {"price", "amount", "trade_time"} <= set(frame.columns)
            kline = await reader.latest(symbol, "kline_1m")
            assert kline is not None and kline["timeframe"] == "1m"
            gaps = await reader.gaps()
            assert {g["channel"] for g in gaps} == {"trade", "kline_1m", "depth"}
            assert all(g["from_ms"] <= g["to_ms"] for g in gaps)
        final = await reader.latest(symbol, "trade")
        tailed_ids = [e["id"] for e in tailed]
        assert tailed_ids == sorted(set(tailed_ids))
        assert book is not None and book["bids"][0][0] < book["asks"][0][0]
        await reader.close()
        await client.aclose()
    own_config = {"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "exchange": {"name": "sim-binance"}}
    async with MarketDataReader.from_config(own_config) as own:
        assert await own.latest(symbol, "trade") == final


async def test_cli_runs_the_demo_prints_status_and_a_summary(redis_prefix: str) -> None:
    out = io.StringIO()
    metrics = await run_stream_cli(
        config={"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}},
        symbols=["SOL/USDT", "ETH/USDT"],
        channels=["trade", "bookTicker"],
        demo=True,
        status_interval_s=0.5,
        duration_s=2.0,
        out=out,
    )
    text = out.getvalue()
    assert "demo: simulator at http://127.0.0.1:" in text
    assert text.count(" written ") >= 2 and "stream summary:" in text and "latency event to redis" in text
    assert metrics["written"] > 0 and metrics["malformed"] == 0
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    assert await client.xlen(f"{redis_prefix}:stream:sim-binance:trade:ETH/USDT") > 0
    await client.aclose()


async def test_script_stops_on_ctrl_c_with_a_summary_and_rejects_bad_input(redis_prefix: str) -> None:
    env = {**os.environ, "DC__REDIS__PREFIX": redis_prefix, "DC__LOGGING__FILE": "null"}
    script = str(ROOT / "scripts" / "stream_market_data.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        script,
        "--demo",
        "--symbols",
        "SOL/USDT",
        "--channels",
        "trade",
        "--status-interval",
        "0.3",
        cwd=ROOT / "tests",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await read_until(proc.stdout, b" written ")
    proc.send_signal(signal.SIGINT)
    rest, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()  # stopped by Ctrl-C
    assert b"stream summary:" in rest and b"Traceback" not in err

    for args, said in (
        (["--symbols", "SOL-USDT", "--demo"], b""),
        (["--channels", "kline_7m", "--demo"], b""),
        (["--duration", "-1"], b""),
        # A shard host's heartbeat is <group>@<host id>: both must be fit for a Redis key (said
        # before --demo is refused with them, so nothing here could connect anywhere).
        (["--shard-group", "g", "--host-id", "h:1", "--demo"], b"invalid host id 'h:1' for a Redis key"),
        (["--shard-group", "g" * 40, "--host-id", "h" * 40, "--demo"], b"at most 64 characters together"),
    ):
        bad = await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            *args,
            cwd=ROOT / "tests",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(bad.communicate(), 30)
        assert bad.returncode == 2, (args, err)
        assert err.startswith(b"error: ") and err.strip().count(b"\n") == 0, err
        assert said in err, (args, err)
