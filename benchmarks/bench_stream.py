"""Simulator -> streamer -> Redis stream, end to end, against a plain websockets + json loop.

The simulator runs in this process; the streamer (and the baseline) each run in a subprocess of
their own, so that their CPU time, RSS and latency are theirs alone. Only ``trade`` streams are
used: they carry the exchange event time, so event->Redis latency is measured on every message.
Five clients in the same run, one after the other (each repeat starts one client later, so no
client always runs first): the baseline and the native streamer on the simulator's Binance venue,
the native streamer on its OKX venue, and the generic ccxt.pro adapter (``watch_trades_for_symbols``
of ``ccxt.pro.binance`` and ``ccxt.pro.okx``) on each venue. The first table of each rate is the
per-venue summary: msg/s per core and p50/p99 event->Redis, each against the baseline's.

Run one side by hand: ``python -m benchmarks.bench_stream --role streamer --ws-url ws://...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections import deque
from typing import Any

from benchmarks.harness import BenchContext, Row, Table
from data_collector.percentiles import percentiles

NAME = "stream"
DESCRIPTION = "simulator -> streamer -> Redis stream: msg/s per core, event->Redis latency, RSS"

SYMBOLS = [f"S{i}/USDT" for i in range(10)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_SIZE = 10
BATCH_INTERVAL_S = 0.002


def _cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sched(pid: int | str = "self") -> tuple[float, int]:
    """``(ms spent waiting on a run queue, times run)`` of a process's main thread, from Linux's
    ``/proc/<pid>/schedstat``; ``(0, 0)`` where it cannot be read. The wait is the scheduler's
    delay: ready to run (a frame or a reply arrived) but no core free."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            _, wait_ns, runs = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0
    return int(wait_ns) / 1e6, int(runs)


def _sched_since(before: tuple[float, int], pid: int | str = "self") -> dict[str, float]:
    wait, runs = _sched(pid)
    return {"wait_ms": wait - before[0], "runs": runs - before[1]}


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


async def _role_streamer(args: argparse.Namespace) -> dict[str, Any]:
    from data_collector.optimized_websocket import OptimizedWebSocketStreamer

    config: dict[str, Any] = {
        "redis": {"prefix": args.prefix},
        "logging": {"file": None},
        "streaming": {"watchdog_s": 60},
    }
    rest_url = args.ws_url.replace("ws://", "http://")
    if args.exchange:
        config["exchange"] = json.loads(args.exchange)
    elif args.venue == "okx":
        rest_url = rest_url.partition("/ws/")[0]
        config["exchange"] = {
            "id": "okx",
            "name": "sim-okx",
            "urls": {"api": {"rest": rest_url, "ws": args.ws_url}},
            "options": {"fetchMarkets": {"types": ["spot"]}},
        }
    streamer = OptimizedWebSocketStreamer(
        symbols=SYMBOLS[: args.symbols],
        redis_client=args.redis_url,
        batch_size=BATCH_SIZE,
        batch_interval=BATCH_INTERVAL_S,
        channels=["trade"],
        ws_url=args.ws_url,
        rest_url=rest_url,
        config=config,
        adapter=args.adapter,
    )
    streamer.start()
    # The warm-up counts from the first data (the generic adapter first loads ccxt and markets).
    if not await streamer.wait_connected(60):
        raise RuntimeError(f"{args.adapter} streamer on {args.venue}: no data within 60 s")
    await asyncio.sleep(args.warmup)
    before = streamer.get_metrics()
    streamer.metrics.event_latency_ms.clear()
    streamer.metrics.receive_latency_ms.clear()
    cpu0, t0, sched0 = _cpu_s(), time.perf_counter(), _sched()
    await asyncio.sleep(args.duration)
    cpu, wall, sched = _cpu_s() - cpu0, time.perf_counter() - t0, _sched_since(sched0)
    after = streamer.get_metrics()
    latencies = list(streamer.metrics.event_latency_ms)
    receive = list(streamer.metrics.receive_latency_ms)
    rss = _rss_mb()
    await streamer.astop()
    written = after["written"] - before["written"]
    return {
        "written": written,
        "cpu_s": cpu,
        "wall_s": wall,
        "latency": percentiles(latencies),
        "receive_latency": percentiles(receive),
        "rss_mb": rss,
        "sched": sched,
        "mean_batch": after["mean_batch_size"],
        "dropped": after["dropped"],
        "modules": sorted(m for m in ("ccxt", "pandas", "numpy") if m in sys.modules),
    }


async def _role_baseline(args: argparse.Namespace) -> None:
    import redis.asyncio as aioredis
    from websockets.asyncio.client import connect

    streams = [f"{s.replace('/', '').lower()}@trade" for s in SYMBOLS[: args.symbols]]
    keys = {name: f"{args.prefix}:stream:binance:trade:{name.split('@')[0]}" for name in streams}
    client = aioredis.Redis.from_url(args.redis_url, socket_timeout=5)
    latencies: list[float] = []
    state = {"written": 0, "measuring": False}

    async def loop() -> None:
        url = f"{args.ws_url}/stream?streams={'/'.join(streams)}"
        async with connect(url, max_queue=None) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                data = msg["data"]
                event = {
                    "symbol": data["s"],
                    "id": data["t"],
                    "price": float(data["p"]),
                    "amount": float(data["q"]),
                    "event_ms": data["E"],
                }
                await client.xadd(
                    keys[msg["stream"]], {"d": json.dumps(event)}, maxlen=100_000, approximate=True
                )
                state["written"] += 1
                if state["measuring"]:
                    latencies.append(time.time() * 1000 - data["E"])

    task = asyncio.create_task(loop())
    await asyncio.sleep(args.warmup)
    state["measuring"] = True
    written0, cpu0, t0, sched0 = state["written"], _cpu_s(), time.perf_counter(), _sched()
    await asyncio.sleep(args.duration)
    cpu, wall, sched = _cpu_s() - cpu0, time.perf_counter() - t0, _sched_since(sched0)
    written = state["written"] - written0
    if task.done():
        task.result()  # the loop died: report why
    # The baseline falls behind, leaving megabytes unread: a close handshake would wait for
    # them, so the process reports and leaves without one.
    result = {
        "written": written,
        "cpu_s": cpu,
        "wall_s": wall,
        "latency": percentiles(latencies),
        "rss_mb": _rss_mb(),
        "sched": sched,
    }
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


def _role_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=("streamer", "baseline"), required=True)
    parser.add_argument("--venue", choices=("binance", "okx"), default="binance")
    parser.add_argument("--adapter", choices=("native", "ccxt"), default="native")
    parser.add_argument("--ws-url", required=True)
    parser.add_argument("--exchange", default="", help="the config's exchange section, as JSON")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="bench_stream")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.role == "streamer":
        import uvloop

        result = uvloop.run(_role_streamer(args))
        print("RESULT " + json.dumps(result), flush=True)
    else:
        asyncio.run(_role_baseline(args))


#: client -> (role, venue, adapter)
CLIENTS = {
    "baseline": ("baseline", "binance", "native"),
    "streamer": ("streamer", "binance", "native"),
    "okx": ("streamer", "okx", "native"),
    "binance-ccxt": ("streamer", "binance", "ccxt"),
    "okx-ccxt": ("streamer", "okx", "ccxt"),
}
NAMES = {
    "baseline": "plain loop, Binance (websockets + json, 1 XADD/msg)",
    "streamer": "OptimizedWebSocketStreamer, Binance native",
    "okx": "OptimizedWebSocketStreamer, OKX native",
    "binance-ccxt": "generic ccxt.pro adapter, Binance",
    "okx-ccxt": "generic ccxt.pro adapter, OKX",
}
#: The clients with the issues' targets (>= 50,000 msg/s per core, p99 <= 5 ms at 10,000 msg/s).
NATIVE = ("streamer", "okx")


async def _run_role(
    client: str, ws_url: str, redis_url: str, warmup: float, duration: float, exchange: str = ""
) -> dict[str, Any]:
    prefix = f"bench_stream_{uuid.uuid4().hex[:8]}"
    role, venue, adapter = CLIENTS[client]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_stream",
        "--role",
        role,
        "--venue",
        venue,
        "--adapter",
        adapter,
        "--ws-url",
        ws_url,
        "--exchange",
        exchange,
        "--redis-url",
        redis_url,
        "--prefix",
        prefix,
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), warmup + duration + 120)
    finally:
        await _drop_prefix(redis_url, prefix)
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"{role} run failed: {err.decode()[-2000:]}")


async def _drop_prefix(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def run(ctx: BenchContext) -> list[Table]:
    from data_collector.simulator import OkxSettings, SimulatedExchange

    rates = [10_000] if ctx.quick else [1_000, 10_000, 50_000]
    repeats = 1 if ctx.quick else ctx.repeats
    warmup, duration = (1.0, 1.5) if ctx.quick else (2.0, 5.0)
    tables: list[Table] = []
    async with SimulatedExchange(symbols=SYMBOLS, seed=42, ws_rate=1, okx=OkxSettings()) as sim:
        ticks = {"binance": _time_ticks(sim.hub), "okx": _time_ticks(sim.okx.hub)}
        # OKX's pump ticks every 100 ms. An OKX trade frame carries only the trade's time (``ts``),
        # while Binance's carries its push time (``E``, stamped as the frame is built): a trade
        # waits up to one tick in the simulator before it is pushed, and that wait is inside OKX's
        # event->Redis figure but not Binance's. Ticking OKX's pump every 1 ms keeps the
        # simulator's own share of that figure under 1 ms (a real venue pushes a trade as it fills).
        sim.okx.hub.tick_s = 0.001
        urls = {"binance": sim.ws_url, "okx": sim.okx.ws_url}
        # The generic adapter on Binance needs ccxt's URLs pointed here (native OKX builds its own).
        exchange = {"binance-ccxt": json.dumps(sim.exchange_config())}
        redis_pid = await _redis_pid(ctx.redis_url)
        for rate in rates:
            #: Each hub's ticks while a client of its venue ran.
            venue_ticks: dict[str, list[float]] = {venue: [] for venue in ticks}
            sim.ws_rate = rate / len(SYMBOLS)
            sim.okx.hub.ws_rate = rate / len(SYMBOLS)
            runs: dict[str, list[dict[str, Any]]] = {client: [] for client in CLIENTS}
            sim_cpu: dict[str, list[float]] = {client: [] for client in NATIVE}
            load0 = os.getloadavg()
            for i in range(repeats):
                order = list(CLIENTS)
                order = order[i % len(order) :] + order[: i % len(order)]
                for client in order:
                    venue = CLIENTS[client][1]
                    url = urls[venue]
                    ticks[venue].clear()
                    cpu0, t0 = _cpu_s(), time.perf_counter()
                    sim0, redis0 = _sched(), _sched(redis_pid)
                    result = await _run_role(
                        client, url, ctx.redis_url, warmup, duration, exchange.get(client, "")
                    )
                    wall = time.perf_counter() - t0
                    # Over the whole client run (start and warm-up too): per second of it.
                    for who, since, pid in (("sim", sim0, "self"), ("redis", redis0, redis_pid)):
                        result[f"{who}_wait_ms_per_s"] = _sched_since(since, pid)["wait_ms"] / wall
                    runs[client].append(result)
                    venue_ticks[venue] += ticks[venue]
                    if client in sim_cpu:
                        sim_cpu[client].append(100 * (_cpu_s() - cpu0) / (time.perf_counter() - t0))
            load1 = os.getloadavg()
            summary, details = _tables(rate, runs)
            summary.notes.append(
                f"load average (1/5/15 min) {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start of this rate, "
                f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at its end, on {os.cpu_count()} cores"
            )
            details.notes.append(
                "simulator (this process) CPU during the native runs: "
                + ", ".join(f"{NAMES[c]} {max(v):.0f}% of a core" for c, v in sim_cpu.items() if v)
            )
            for venue, durations in venue_ticks.items():
                p = percentiles(durations)
                details.notes.append(
                    f"simulator {venue} tick (builds and writes the frames; each stream's event time is read as it is built): "
                    f"p50 {p['p50'] or 0:.2f} / p99 {p['p99'] or 0:.2f} / max {max(durations, default=0):.1f} ms"
                )
            tables += [summary, details]
    return tables


async def _redis_pid(redis_url: str) -> int | str:
    """The Redis server's pid if it runs on this machine, else ``"none"`` (:func:`_sched` then
    reads nothing, and its wait shows as 0)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    return pid if "redis" in _comm(pid) else "none"


def _comm(pid: int) -> str:
    """The command name of a local process ("" if there is none: Redis runs elsewhere)."""
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii") as f:
            return f.read()
    except OSError:
        return ""


def _time_ticks(hub: Any) -> deque[float]:
    """Record how long each of a simulator hub's ticks with a client takes (its frames leave at the end)."""
    durations: deque[float] = deque(maxlen=100_000)
    tick = hub.tick

    def timed_tick(*args: Any) -> None:
        started = time.perf_counter()
        tick(*args)
        if hub.connections:  # not the idle ticks between clients
            durations.append((time.perf_counter() - started) * 1000)

    hub.tick = timed_tick
    return durations


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def _tables(rate: int, runs: dict[str, list[dict[str, Any]]]) -> tuple[Table, Table]:
    """Per rate: the per-venue summary (ratios against the plain loop's) and the details."""
    label = f"{rate:,} msg/s offered"
    summary = Table(
        f"Stream to Redis at {label}, per venue: msg/s per core of client CPU, event->Redis latency"
    )
    details = Table(f"Stream to Redis at {label}: details")
    base = NAMES["baseline"]
    for client in CLIENTS:
        rs, name = runs[client], NAMES[client]
        summary.add(
            Row(
                f"{name}: throughput",
                [r["written"] / max(r["cpu_s"], 1e-6) for r in rs],
                "msg/s/core",
                baseline=client == "baseline",
            )
        )
        for q in ("p50", "p99"):
            summary.add(
                Row(
                    f"{name}: event->Redis {q}",
                    [r["latency"][q] for r in rs if r["latency"][q] is not None],
                    "ms",
                    higher_is_better=False,
                    versus=f"{base}: event->Redis {q}",
                )
            )
        details.add(Row(f"{name}: delivered", [r["written"] / r["wall_s"] for r in rs], "msg/s"))
        details.add(Row(f"{name}: CPU", [100 * r["cpu_s"] / r["wall_s"] for r in rs], "% of a core"))
        details.add(Row(f"{name}: RSS", [r["rss_mb"] for r in rs], "MB"))
        details.add(
            Row(
                f"{name}: run-queue wait, client",
                [r["sched"]["wait_ms"] / r["wall_s"] for r in rs],
                "ms per s",
            )
        )
        details.add(
            Row(
                f"{name}: run-queue wait per wake-up, client",
                [r["sched"]["wait_ms"] / max(1, r["sched"]["runs"]) for r in rs],
                "ms",
            )
        )
        for who, what in (("sim", "simulator"), ("redis", "Redis server")):
            details.add(
                Row(f"{name}: run-queue wait, {what}", [r[f"{who}_wait_ms_per_s"] for r in rs], "ms per s")
            )
        details.add(
            Row(f"{name}: event->Redis p95", [r["latency"]["p95"] for r in rs if r["latency"]["p95"]], "ms")
        )
        if client != "baseline":
            for q in ("p50", "p95", "p99"):
                values = [r["receive_latency"][q] for r in rs if r["receive_latency"][q] is not None]
                details.add(Row(f"{name}: receive->Redis {q}", values, "ms from receive"))
    for client in NATIVE:
        rs, name = runs[client], NAMES[client]
        per_core = _median([r["written"] / max(r["cpu_s"], 1e-6) for r in rs])
        rss = max(r["rss_mb"] for r in rs)
        line = f"{name}: RSS <= 80 MB: {'met' if rss <= 80 else 'NOT met'} ({rss:.0f} MB)"
        if rate >= 10_000:
            line += (
                f"; >= 50,000 msg/s per core: {'met' if per_core >= 50_000 else 'NOT met'} ({per_core:,.0f})"
            )
        if rate == 10_000:
            p99 = _median([r["latency"]["p99"] or 0.0 for r in rs])
            recv = _median([r["receive_latency"]["p99"] or 0.0 for r in rs])
            line += (
                f"; p99 <= 5 ms at 10,000 msg/s: event->Redis {'met' if p99 <= 5 else 'NOT met'} ({p99:.2f} ms), "
                f"receive->Redis (the streamer's share) {'met' if recv <= 5 else 'NOT met'} ({recv:.2f} ms)"
            )
        summary.notes.append(line)
    p99 = {c: _median([r["latency"]["p99"] or 0.0 for r in runs[c]]) for c in CLIENTS}
    if p99["streamer"]:
        summary.notes.append(
            "p99 event->Redis against Binance native's in this run: "
            + ", ".join(f"{NAMES[c]} {p99[c] / p99['streamer']:.2f}x" for c in CLIENTS if c != "streamer")
        )
    summary.notes.append(
        "the generic ccxt.pro adapter has no target: it is the slower path for venues without a native adapter"
    )
    summary.notes.append(
        "event time: Binance's E (the simulator's clock read as each stream's frames are built, 5 ms ticks), "
        "OKX's trade ts (the trade's time on the tape, pushed at the next 1 ms tick); event->Redis includes "
        "the simulator's own delay, receive->Redis "
        "(details) is the client's share; ratios: msg/s per core and each percentile against the plain loop's"
    )
    details.notes.append(
        "run-queue wait: time a process was ready to run but waited for a core (Linux schedstat of its main "
        "thread), per second of wall time; the client's over its measured seconds, the simulator's and Redis's "
        "over the client's whole run; it is the machine's load, and every event->Redis latency carries it"
    )
    details.notes.append(
        f"batch_size={BATCH_SIZE}, batch_interval={BATCH_INTERVAL_S}s, {len(SYMBOLS)} trade streams, uvloop; mean batch "
        + ", ".join(f"{NAMES[c]} {runs[c][0]['mean_batch']}" for c in CLIENTS if c != "baseline")
        + f"; modules loaded (Binance native) of ccxt/pandas/numpy: {runs['streamer'][0]['modules'] or 'none'}"
    )
    return summary, details


if __name__ == "__main__":
    _role_main(sys.argv[1:])
