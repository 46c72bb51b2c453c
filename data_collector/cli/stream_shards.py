"""One host of a shard group (``data-collector stream --shard-group NAME``): it streams the
shards it holds a lease on and keeps the host's heartbeat; and the status loop the streaming
command shares with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from data_collector.config import Config
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.redis.client import RedisEndpoint


async def run_until(
    wait_for: Callable[[], Awaitable[Any]],
    running: Callable[[], bool],
    duration_s: float | None,
    status_interval_s: float,
    status: Callable[[], str],
    out: TextIO,
) -> None:
    """Await ``wait_for()`` while ``running()`` and until ``duration_s``, printing ``status()``
    every ``status_interval_s`` (0: never)."""
    loop = asyncio.get_running_loop()
    deadline = None if duration_s is None else loop.time() + duration_s
    while running():
        wait = status_interval_s if status_interval_s > 0 else 3600.0
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await wait_for()
        if status_interval_s > 0 and running():
            print(status(), file=out, flush=True)


async def run_shard_host(
    cfg: Config,
    endpoint: RedisEndpoint,
    symbols: list[str],
    channels: Sequence[str] | None,
    group: str,
    host_id: str | None,
    stop: asyncio.Event,
    out: TextIO,
    status_interval_s: float,
    duration_s: float | None,
) -> dict[str, Any]:
    """One host of shard group ``group``: streams the shards it holds a lease on until ``stop``
    (or ``duration_s``), keeping its streamer heartbeat (``<group>@<host>``); the sums of its
    shard streamers' counters."""
    from data_collector.distributed.shards import ShardHost, ShardKeys, heartbeat_instance, plan_shards
    from data_collector.heartbeat import Heartbeat

    host_name = host_id or f"{socket.gethostname()}-{os.getpid()}"
    instance = heartbeat_instance(group, host_name)
    streamers: list[OptimizedWebSocketStreamer] = []

    async def start_shard(shard_symbols: list[str], lease: Any) -> OptimizedWebSocketStreamer:
        streamer = OptimizedWebSocketStreamer(
            symbols=shard_symbols, channels=channels, config=cfg, lease=lease, heartbeat=False
        )
        streamer.start()
        streamers.append(streamer)
        return streamer

    shards = plan_shards(symbols, cfg.streaming.shard_symbols)
    loop = asyncio.get_running_loop()
    client = endpoint.async_client()
    host = ShardHost(
        client,
        ShardKeys(cfg.redis.prefix, group),
        shards,
        host_name,
        cfg.streaming.shard_lease_s,
        start_shard,
    )
    print(
        f"shard group {group}: host {host_name}, {len(shards)} shards of {len(symbols)} symbols, "
        f"lease {cfg.streaming.shard_lease_s:g} s; Ctrl-C stops",
        file=out,
        flush=True,
    )
    # The host's heartbeat, not one per shard streamer: it lives as long as the host, holding
    # shards or not, and the health check tells the group's hosts apart by it.
    heartbeat = Heartbeat(
        client,
        cfg.redis.prefix,
        "streamer",
        ttl_s=cfg.metrics.heartbeat_ttl_s,
        monitor=_ShardHostActivity(streamers),
        instance=instance,
        extra=lambda: {
            "exchange": cfg.exchange.name,
            "shard_group": group,
            "host_id": host_name,
            "shards": host.owned(),
            "symbols": sum(len(shards[i]) for i in host.owned()),
            "written": sum(s.metrics.written for s in streamers),
            "dropped": sum(s.metrics.dropped for s in streamers),
            "gaps": sum(s.metrics.gaps for s in streamers),
            "reconnects": sum(s.metrics.reconnects for s in streamers),
        },
    )

    def status() -> str:
        written = sum(s.metrics.written for s in streamers)
        return f"{time.strftime('%H:%M:%S')} {host_name} holds shards {host.owned()} | written {written:,}"

    try:
        async with heartbeat:  # removed on the way out, once the shards are given back
            task = loop.create_task(host.run(stop), name="shard-host")
            try:
                await run_until(
                    lambda: asyncio.shield(task),
                    lambda: not task.done(),
                    duration_s,
                    status_interval_s,
                    status,
                    out,
                )
            finally:
                stop.set()
                await task
    finally:
        await client.aclose()
    totals: dict[str, Any] = {"shard_streamers": len(streamers)}
    for streamer in streamers:
        for key, value in streamer.metrics.snapshot(0).items():
            if isinstance(value, int):
                totals[key] = totals.get(key, 0) + value
    print(
        "\n".join(["shard host summary:", *(f"  {k.replace('_', ' ')}: {v:,}" for k, v in totals.items())]),
        file=out,
        flush=True,
    )
    return totals


class _ShardHostActivity:
    """A shard host's heartbeat view: the newest message and write of any of its shard streamers
    (those it gave back or lost included: their times are only older)."""

    def __init__(self, streamers: list[OptimizedWebSocketStreamer]) -> None:
        self._streamers = streamers

    @property
    def last_message_ms(self) -> int | None:
        return max((s.last_message_ms or 0 for s in self._streamers), default=0) or None

    @property
    def last_write_ms(self) -> int | None:
        return max((s.metrics.last_write_ms or 0 for s in self._streamers), default=0) or None

    def record_heartbeat(self, ts_ms: int) -> None:
        """No monitor is fed in a sharded run."""
