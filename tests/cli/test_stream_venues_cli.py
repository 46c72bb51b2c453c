"""Issue 14, acceptance 5 for the streamer: ``data-collector stream`` (the real command, as a
subprocess, against the simulator's Binance and OKX venues and the real Redis) given an unknown
venue id, a symbol the venue does not list, or a channel the venue lacks prints one line naming
what to fix, exits 2 (the README's exit-code table) with no traceback, and writes nothing."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from data_collector.cli.exits import EXIT_USAGE
from data_collector.simulator import OkxSettings, SimulatedExchange
from tests.support.backfill import write_config
from tests.support.services import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedExchange]:
    async with SimulatedExchange(
        symbols=["BTC/USDT", "SOL/USDT"], seed=5, gaps={}, okx=OkxSettings(swaps=["BTC/USDT"])
    ) as exchange:
        yield exchange


def binance(sim: SimulatedExchange) -> dict[str, Any]:
    return {**sim.exchange_config(), "timeout_s": 5.0}


def okx(sim: SimulatedExchange) -> dict[str, Any]:
    ccxt_config = sim.okx_ccxt_config()
    return {
        "id": "okx",
        "name": "sim-okx",
        "urls": ccxt_config["urls"],
        "options": ccxt_config["options"],
        "ws_url": sim.okx.ws_url,
    }


#: case -> (exchange section of the config, --symbols, --channels, the one line expected on
#: stderr, streaming.adapter).
CASES: dict[str, tuple[Any, str, str, str, str]] = {
    "unknown venue id": (
        lambda sim: {**binance(sim), "id": "notavenue", "name": "notavenue"},
        "BTC/USDT",
        "trade",
        "error: unknown exchange.id 'notavenue': the streamer speaks 'binance', 'binanceusdm', 'okx' "
        "natively and any ccxt.pro exchange (ccxt.pro.exchanges) through the generic adapter",
        "native",
    ),
    "symbol binance does not list": (
        binance,
        "BTC/USDT,XRP/USDT",
        "trade",
        "error: unknown symbol 'XRP/USDT': the exchange at {rest} does not list it",
        "native",
    ),
    "spot symbol okx does not list": (
        okx,
        "BTC/USDT,XRP/USDT",
        "trade",
        "error: unknown symbol 'XRP/USDT': the exchange at {okx_rest} does not list it",
        "native",
    ),
    "swap okx does not list": (
        okx,
        "BTC/USDT:USDT,SOL/USDT:USDT",
        "trade",
        "error: unknown symbol 'SOL/USDT:USDT': the exchange at {okx_rest} does not list it",
        "native",
    ),
    "channel okx lacks": (
        okx,
        "BTC/USDT",
        "trade,aggTrade",
        "error: okx: unknown channel 'aggTrade': use one of trade, bookTicker, ticker, depth or "
        "kline_<timeframe> (kline_1m)",
        "native",
    ),
    "channel binance spot lacks": (
        binance,
        "BTC/USDT",
        "markPrice",
        "error: binance: unknown channel 'markPrice': use one of trade, aggTrade, bookTicker, depth or "
        "kline_<timeframe> (kline_1m)",
        "native",
    ),
    "symbol ccxt.pro's okx does not list (generic adapter)": (
        okx,
        "BTC/USDT,XRP/USDT",
        "trade",
        "error: unknown symbol 'XRP/USDT': ccxt.pro's okx does not list it",
        "ccxt",
    ),
    "channel the generic adapter lacks": (
        binance,
        "BTC/USDT",
        "trade,bookTicker",
        "error: binance: unknown channel 'bookTicker': use one of trade, depth or kline_<timeframe> (kline_1m)",
        "ccxt",
    ),
}


async def stream_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``data-collector stream ARGS`` as a subprocess (the installed entry point's module)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "data_collector.cli.main", "stream", *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("case", CASES)
async def test_stream_bad_venue_input_is_one_line_and_exit_code_2(
    case: str, sim: SimulatedExchange, base_config: dict[str, Any], redis_prefix: str, tmp_path: Path
) -> None:
    exchange, symbols, channels, expected, adapter = CASES[case]
    config = {
        **base_config,
        "exchange": exchange(sim),
        "streaming": {"channels": ["trade"], "adapter": adapter},
    }
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await stream_cli(
        "--config", str(path), "--symbols", symbols, "--channels", channels, "--duration", "30", cwd=tmp_path
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, (code, out, err)
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0] == expected.format(rest=sim.rest_url, okx_rest=sim.okx.rest_url), lines[0]
    assert "streaming " not in out, out  # refused before any connection
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert [k async for k in client.scan_iter(match=f"{redis_prefix}:*")] == []
    finally:
        await client.aclose()


async def test_listed_okx_symbols_stream(
    sim: SimulatedExchange, base_config: dict[str, Any], redis_prefix: str, tmp_path: Path
) -> None:
    """The control: the same command with listed OKX symbols (spot and swap) streams and stops
    at its --duration with exit 0, so the refusals above are the symbols', not the setup's."""
    # No database: streaming only (a streamer that stores candles takes spot or perpetuals).
    streaming_only = {k: v for k, v in base_config.items() if k != "database"}
    config = {**streaming_only, "exchange": okx(sim), "streaming": {"channels": ["trade"]}}
    path = write_config(tmp_path / "config.yaml", config)
    code, out, err = await stream_cli(
        "--config", str(path), "--symbols", "BTC/USDT,BTC/USDT:USDT", "--duration", "2",
        "--status-interval", "0", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, (out, err)
    assert "streaming trade for BTC/USDT, BTC/USDT:USDT" in out, out
