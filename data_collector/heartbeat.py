"""A liveness key that the collector and the streamer refresh, and that the health check only reads.

The key is :func:`data_collector.redis.keys.heartbeat_key`
(``<prefix>:heartbeat:<component>:<instance>``, one per process: two collectors on one prefix
keep two keys); its value is JSON::

    {"component": "streamer", "instance": "box-4242", "pid": 4242, "host": "box", "started_ms": ..., "ts_ms": ...,
     "heartbeat_ttl_s": 60, "interval_s": 20.0, "last_write_ms": ..., "last_message_ms": ..., ...extra}

written with ``SET ... EX metrics.heartbeat_ttl_s`` every third of the TTL, so the key vanishes
on its own when the process dies; before that, the health check calls it stale once two beats
are missed (:func:`since_beat_s`, by Redis's clock). ``last_write_ms`` and ``last_message_ms`` come from the
component's :class:`~utils.performance_monitor.PerformanceMonitor`.

Example:
    >>> async with Heartbeat(redis, "dc", "streamer", ttl_s=60, monitor=monitor):  # doctest: +SKIP
    ...     await run_streamer()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from data_collector.config import Config
from data_collector.redis.client import RedisSettings, async_client
from data_collector.redis.keys import heartbeat_key, heartbeat_pattern

log = logging.getLogger(__name__)


class ActivitySource(Protocol):
    """Where a heartbeat's ``last_write_ms`` / ``last_message_ms`` come from: a
    :class:`~utils.performance_monitor.PerformanceMonitor`, or the streamer's own counters (so a
    streaming-only process need not load numpy and prometheus_client for its heartbeat)."""

    @property
    def last_write_ms(self) -> int | None: ...

    @property
    def last_message_ms(self) -> int | None: ...

    def record_heartbeat(self, ts_ms: int) -> None:
        """A heartbeat was written at ``ts_ms`` (for ``dc_seconds_since_last_heartbeat``)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def default_instance() -> str:
    """``<host>-<pid>``, made fit for a key part: unique among the processes sharing a Redis."""
    host = re.sub(r"[^A-Za-z0-9_.@-]", "-", socket.gethostname())[:50] or "host"
    return f"{host}-{os.getpid()}"


class Heartbeat:
    """Refreshes ``<prefix>:heartbeat:<component>:<instance>`` in a background task until closed.

    Args:
        client: an open ``redis.asyncio.Redis``; the caller owns it.
        prefix: ``redis.prefix``.
        component: ``'collector'``, ``'streamer'``, ...
        ttl_s: the key's TTL (``metrics.heartbeat_ttl_s``).
        monitor: where ``last_write_ms`` / ``last_message_ms`` come from (a PerformanceMonitor
            or any :class:`ActivitySource`).
        extra: called at each beat for more fields (e.g. ``{"symbols": 3}``).
        interval_s: time between beats; a third of ``ttl_s`` by default.
        instance: this process's name in the key (``metrics.instance``); default
            :func:`default_instance`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        component: str,
        ttl_s: int = 60,
        *,
        monitor: ActivitySource | None = None,
        extra: Callable[[], Mapping[str, Any]] | None = None,
        interval_s: float | None = None,
        instance: str | None = None,
    ) -> None:
        self.instance = instance or default_instance()
        self.key = heartbeat_key(prefix, component, self.instance)
        self.component = component
        self.ttl_s = ttl_s
        self.interval_s = interval_s if interval_s is not None else max(0.1, ttl_s / 3)
        self._client = client
        self._monitor = monitor
        self._extra = extra
        self._started_ms = _now_ms()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self.beats = 0

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "component": self.component,
            "instance": self.instance,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_ms": self._started_ms,
            "ts_ms": _now_ms(),
            # What the key was set with: the TTL Redis counts down from, and the beat's period.
            "heartbeat_ttl_s": self.ttl_s,
            "interval_s": self.interval_s,
            "last_write_ms": self._monitor.last_write_ms if self._monitor else None,
            "last_message_ms": self._monitor.last_message_ms if self._monitor else None,
        }
        if self._extra is not None:
            data.update(self._extra())
        return data

    async def beat(self) -> bool:
        """Write the heartbeat once; False (logged) when Redis is unreachable."""
        payload = self.payload()
        try:
            await self._client.set(self.key, json.dumps(payload), ex=self.ttl_s)
        except (redis.RedisError, OSError) as exc:
            # Said once per outage, not at every beat: a run without Redis is allowed.
            log.log(
                logging.DEBUG if self._failing else logging.WARNING,
                "heartbeat %s not written: %s",
                self.key,
                exc,
            )
            self._failing = True
            return False
        if self._failing:
            log.warning("heartbeat %s written again", self.key)
        self._failing = False
        self.beats += 1
        if self._monitor is not None:
            self._monitor.record_heartbeat(payload["ts_ms"])
        return True

    async def start(self) -> Heartbeat:
        """Write one heartbeat now and keep refreshing it in the background."""
        if self._task is None:
            await self.beat()
            self._task = asyncio.create_task(self._run(), name=f"heartbeat:{self.component}")
        return self

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.beat()

    async def close(self, *, remove: bool = True) -> None:
        """Stop refreshing and (by default) delete the key, so a clean stop is not a stale heartbeat."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if remove:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._client.delete(self.key)

    async def __aenter__(self) -> Heartbeat:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@contextlib.asynccontextmanager
async def running_heartbeat(
    config: Config, component: str, monitor: ActivitySource | None = None
) -> AsyncIterator[Heartbeat]:
    """Keep ``component``'s heartbeat fresh for the duration of the block (Redis down: logged, no error)."""
    client = async_client(RedisSettings.from_config(config))
    venue = config.exchange.name
    heartbeat = Heartbeat(
        client,
        config.redis.prefix,
        component,
        config.metrics.heartbeat_ttl_s,
        monitor=monitor,
        extra=lambda: {"exchange": venue},
        instance=config.metrics.instance,
    )
    try:
        yield await heartbeat.start()
    finally:
        await heartbeat.close()
        await client.aclose()


async def read_heartbeats(client: aioredis.Redis, prefix: str, component: str) -> dict[str, dict[str, Any]]:
    """Every live heartbeat of ``component`` by instance name (each with the TTL left: ``ttl_s``
    as Redis's ``TTL`` rounds it, ``ttl_ms`` exact).

    Unreadable values are left out.
    """
    keys = sorted(
        [key async for key in client.scan_iter(match=heartbeat_pattern(prefix, component), count=1000)]
    )
    if not keys:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
    beats: dict[str, dict[str, Any]] = {}
    for key, raw, ttl_ms in zip(keys, replies[::2], replies[1::2], strict=True):
        try:
            data = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
        if isinstance(data, dict):
            data["ttl_ms"] = ttl_ms
            # Redis's TTL: the milliseconds rounded to seconds (-1 no TTL, -2 gone meanwhile).
            data["ttl_s"] = (ttl_ms + 500) // 1000 if ttl_ms >= 0 else ttl_ms
            name = key.decode() if isinstance(key, bytes) else str(key)
            beats[name.rsplit(":", 1)[1]] = data
    return beats


async def read_heartbeat(client: aioredis.Redis, prefix: str, component: str) -> dict[str, Any] | None:
    """The newest heartbeat of ``component`` among its instances, or None when there is none."""
    beats = await read_heartbeats(client, prefix, component)
    return max(beats.values(), key=lambda beat: int(beat.get("ts_ms", 0)), default=None)


def since_beat_s(beat: Mapping[str, Any], now_ms: int) -> float:
    """Seconds since ``beat`` (from :func:`read_heartbeats`) was written.

    By Redis's own clock when the beat says what TTL it was set with (that TTL less the TTL left),
    so the clocks of the writer's and the reader's hosts need not agree; else by the wall clocks
    (``now_ms`` less the beat's ``ts_ms``).
    """
    set_s, left_ms = beat.get("heartbeat_ttl_s"), beat.get("ttl_ms")
    if isinstance(set_s, int | float) and isinstance(left_ms, int) and left_ms >= 0:
        return max(0.0, set_s - left_ms / 1000)
    return max(0.0, (now_ms - int(beat.get("ts_ms", 0))) / 1000)


def beat_interval_s(beat: Mapping[str, Any], ttl_s: float) -> float:
    """The period ``beat``'s writer beats at (a third of ``ttl_s`` for a beat that does not say)."""
    interval = beat.get("interval_s")
    return float(interval) if isinstance(interval, int | float) and interval > 0 else ttl_s / 3
