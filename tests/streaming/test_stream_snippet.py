"""Issue 4 acceptance 1: the user's snippet, verbatim, in a plain script and in a running loop;
and a streaming-only process imports neither ccxt nor pandas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import redis
import redis.asyncio

from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL
from tests.support.streaming import wait_for

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """\
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
streamer = OptimizedWebSocketStreamer(symbols=['SOL/USDT'], redis_client=redis_client, batch_size=10)
streamer.start()
metrics = streamer.get_metrics()
print(f"Latency: {metrics['latency_ms']}ms")
print(f"Throughput: {metrics['messages_per_second']} msg/s")
"""


def sim_env(sim: SimulatedExchange, prefix: str) -> dict[str, str]:
    """Point the default config at the simulator and the test prefix, through the environment."""
    cfg = sim.exchange_config()
    return {
        "DC__EXCHANGE__WS_URL": cfg["ws_url"],
        "DC__EXCHANGE__URLS": json.dumps(cfg["urls"]),
        "DC__REDIS__PREFIX": prefix,
        "DC__PERFORMANCE__WS_BATCH_INTERVAL": "0.02",
    }


async def test_snippet_runs_verbatim_in_a_plain_script(redis_prefix: str, tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(
        "import redis, sys, time\n"
        f"redis_client = redis.Redis.from_url({REDIS_URL!r})\n"
        + SNIPPET
        + textwrap.dedent(
            """
            time.sleep(2.0)
            later = streamer.get_metrics()
            streamer.stop()
            import resource
            print("written", later["written"], "p99", later["latency_ms"]["event_to_redis"]["p99"])
            print("modules", "ccxt" in sys.modules, "pandas" in sys.modules)
            print("rss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
            """
        )
    )
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=1, ws_rate=50) as sim:
        env = {**os.environ, **sim_env(sim, redis_prefix), "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "Latency: {'event_to_redis': {" in text and "Throughput: " in text
    written = int(text.split("written ")[1].split()[0])
    assert written > 0
    assert "modules False False" in text
    client = redis.Redis.from_url(REDIS_URL)
    lengths = {
        c: client.xlen(f"{redis_prefix}:stream:binance:{c}:SOL/USDT")
        for c in ("trade", "bookTicker", "kline_1m", "depth")
    }
    assert sum(lengths.values()) >= written and all(lengths.values()), lengths
    client.close()


async def test_snippet_runs_verbatim_inside_a_running_loop(redis_prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async with SimulatedExchange(symbols=["SOL/USDT"], seed=2, ws_rate=50) as sim:
        for name, value in sim_env(sim, redis_prefix).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(ROOT / "tests")  # no config.yaml here: the defaults plus the environment
        redis_client = redis.asyncio.Redis.from_url(REDIS_URL)
        namespace: dict[str, object] = {"redis_client": redis_client}
        exec(SNIPPET, namespace)  # the user's lines, unchanged, in a notebook-like running loop
        streamer = namespace["streamer"]
        from data_collector.optimized_websocket import OptimizedWebSocketStreamer

        assert isinstance(streamer, OptimizedWebSocketStreamer)
        await wait_for(lambda: streamer.get_metrics()["written"] > 20, what="entries written")
        await streamer.astop()
        await streamer.astop()  # idempotent
        metrics = streamer.get_metrics()
        assert metrics["latency_ms"]["event_to_redis"]["p99"] is not None
        assert metrics["messages_per_second"] > 0
        assert await redis_client.xlen(f"{redis_prefix}:stream:binance:trade:SOL/USDT") == metrics[
            "written"
        ] - (
            await redis_client.xlen(f"{redis_prefix}:stream:binance:bookTicker:SOL/USDT")
            + await redis_client.xlen(f"{redis_prefix}:stream:binance:kline_1m:SOL/USDT")
            + await redis_client.xlen(f"{redis_prefix}:stream:binance:depth:SOL/USDT")
        )
        await redis_client.aclose()


async def test_a_sync_client_and_foreground_run(redis_prefix: str) -> None:
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    async with SimulatedExchange(symbols=["BTC/USDT"], seed=4, ws_rate=50) as sim:
        sync_client = redis.Redis.from_url(REDIS_URL)
        streamer = OptimizedWebSocketStreamer(
            symbols=["BTC/USDT"],
            redis_client=sync_client,
            channels=["trade"],
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            config={"redis": {"prefix": redis_prefix}, "logging": {"file": None}},
        )
        task = asyncio.create_task(streamer.run())
        await wait_for(lambda: streamer.get_metrics()["written"] > 10, what="entries written")
        await streamer.astop()
        await task
    assert (
        sync_client.xlen(f"{redis_prefix}:stream:binance:trade:BTC/USDT") == streamer.get_metrics()["written"]
    )
    sync_client.close()


def test_bad_arguments_fail_with_a_usage_error() -> None:
    import pytest

    from data_collector.errors import UsageError
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    for kwargs in (
        {"symbols": ["SOL-USDT"]},
        {"symbols": ["SOL/USDT"], "channels": ["nope"]},
        {"symbols": ["SOL/USDT"], "batch_size": 0},
        {"symbols": ["SOL/USDT"], "redis_client": 42},
        # The protocol is exchange.id (the ``exchange`` argument is only the label in the keys).
        {"symbols": ["SOL/USDT"], "config": {"exchange": {"id": "kraken"}}},
        {"symbols": ["SOL/USDT"], "exchange": "bad label"},
    ):
        with pytest.raises(UsageError):
            OptimizedWebSocketStreamer(redis_client=kwargs.pop("redis_client", REDIS_URL), **kwargs)  # type: ignore[arg-type]
