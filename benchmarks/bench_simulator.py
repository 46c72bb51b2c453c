"""Exchange simulator throughput: WS messages/s to one client and REST klines (limit=1000) req/s."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp

from benchmarks.harness import BenchContext, Row, Table

NAME = "simulator"
DESCRIPTION = "simulator WS msg/s to one client and REST klines req/s, vs naive servers"

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "scripts" / "simulate_exchange.py")

#: The naive WebSocket server: one json.dumps and one send_str per message.
NAIVE_WS = """
import asyncio, json, signal, sys, time
from aiohttp import web
async def handler(request):
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    t = 0
    try:
        while not ws.closed:
            t += 1
            now = int(time.time() * 1000)
            await ws.send_str(json.dumps({"e": "trade", "E": now, "s": "BTCUSDT", "t": t, "p": "35000.10000000",
                                          "q": "0.01200000", "T": now, "m": True, "M": True}))
    except ConnectionError:
        pass
    return ws
async def ping(request):
    return web.Response(text="{}", content_type="application/json")
async def main():
    app = web.Application()
    app.router.add_get("/ws", handler)
    app.router.add_get("/api/v3/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"REST http://127.0.0.1:{port}", flush=True)
    print(f"WS   ws://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()
asyncio.run(main())
"""


class Server:
    """A server in its own process (so it does not share a core with the client)."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.rest = ""
        self.ws = ""

    async def __aenter__(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        assert self.proc.stdout is not None
        self.rest = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode().split()[1]
        self.ws = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode().split()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def simulator(ws_rate: float) -> Server:
    return Server(
        [
            SCRIPT,
            "--port",
            "0",
            "--symbols",
            "BTC/USDT,SOL/USDT,ETH/USDT,BNB/USDT",
            "--seed",
            "1",
            "--weight-limit",
            "1000000000",
            "--ws-rate",
            str(ws_rate),
            "--no-gaps",
        ]
    )


async def ws_rate(url: str, seconds: float) -> float:
    """Messages per second one aiohttp client receives (frames counted, not parsed)."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, max_msg_size=0, compress=0)
        try:
            await ws.receive()  # first frame: the stream is flowing
            n = 0
            started = time.perf_counter()
            deadline = started + seconds
            while True:
                await ws.receive()
                n += 1
                if n % 2000 == 0 and time.perf_counter() >= deadline:
                    return n / (time.perf_counter() - started)
        finally:
            # No close handshake: against a flood it would read until the server stops.
            sock = ws.get_extra_info("socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            await ws.close()


async def rest_rate(url: str, params_of: list[dict[str, str]], seconds: float, concurrency: int = 8) -> float:
    """Requests per second with ``concurrency`` requests in flight, bodies read in full."""
    count = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:

        async def worker(i: int) -> None:
            nonlocal count
            while time.perf_counter() < stop:
                async with http.get(url, params=params_of[i % len(params_of)]) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}: {body[:200]!r}")
                count += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return count / (time.perf_counter() - started)


async def run(ctx: BenchContext) -> list[Table]:
    seconds = 1.0 if ctx.quick else 3.0
    repeats = 1 if ctx.quick else ctx.repeats
    ws_table = Table("Simulator WebSocket: messages/s received by one client on loopback")
    async with Server(["-c", NAIVE_WS]) as naive:
        vals = [await ws_rate(naive.ws + "/ws", seconds) for _ in range(repeats)]
    ws_table.add(Row("naive server: json.dumps + send_str per message", vals, "msg/s", baseline=True))
    # Offered far above what one client can take: the rows show the ceiling, not the setting.
    async with simulator(1_000_000) as sim:
        vals = [await ws_rate(sim.ws + "/ws/btcusdt@trade", seconds) for _ in range(repeats)]
        ws_table.add(Row("simulator, 1 raw trade stream (offered 1M/s)", vals, "msg/s"))
        streams = "/".join(f"{s}@trade" for s in ("btcusdt", "solusdt", "ethusdt", "bnbusdt"))
        vals = [await ws_rate(sim.ws + "/stream?streams=" + streams, seconds) for _ in range(repeats)]
        ws_table.add(Row("simulator, 4 combined trade streams (offered 4M/s)", vals, "msg/s"))
    best = max(r.median for r in ws_table.rows[1:])
    ws_table.notes.append(
        f"target >= 100,000 msg/s to one client: {'met' if best >= 100_000 else 'NOT met'} ({best:,.0f})"
    )

    rest_table = Table("Simulator REST: /api/v3/klines limit=1000 requests/s (8 in flight)")
    day_ms = 86_400_000
    base = (int(time.time() * 1000) // day_ms - 1200) * day_ms
    async with simulator(10) as sim:
        vals = [await rest_rate(sim.rest + "/api/v3/ping", [{}], seconds) for _ in range(repeats)]
        rest_table.add(Row("ping (aiohttp + middleware ceiling)", vals, "req/s", baseline=True))
        for tf, step in (("1m", 60_000), ("1h", 3_600_000)):
            params = [
                {
                    "symbol": "BTCUSDT",
                    "interval": tf,
                    "limit": "1000",
                    "startTime": str(base + i * 1000 * step),
                }
                for i in range(1 if tf == "1h" else 500)
            ]
            vals = [await rest_rate(sim.rest + "/api/v3/klines", params, seconds) for _ in range(repeats)]
            rest_table.add(
                Row(
                    f"klines {tf} limit=1000, distinct ranges" if tf == "1m" else f"klines {tf} limit=1000",
                    vals,
                    "req/s",
                )
            )
    best = max(r.median for r in rest_table.rows[1:])
    rest_table.notes.append(
        f"target >= 300 req/s of limit=1000 klines: {'met' if best >= 300 else 'NOT met'} ({best:,.0f})"
    )

    fmt_table = Table("Kline formatting in-process: 1,000 rows to JSON bytes")
    from data_collector.simulator.formats import klines_json, klines_json_naive
    from data_collector.simulator.market import SymbolMarket

    market = SymbolMarket("BTC/USDT", 1, gaps=[])
    rows = market.candles("1m", base, base + 1000 * 60_000, base + 10 * day_ms)
    for label, fn, is_base in (
        ("floats formatted per value + json.dumps", klines_json_naive, True),
        ("integer ticks, one %-format per row (served)", klines_json, False),
    ):
        vals = []
        for _ in range(repeats):
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds / 4:
                fn(rows, market, "1m")
                n += 1
            vals.append(n / (time.perf_counter() - started))
        fmt_table.add(Row(label, vals, "bodies/s", baseline=is_base))
    return [ws_table, rest_table, fmt_table]
