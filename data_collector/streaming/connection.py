"""The WebSocket connection every native venue's connection builds on: it keeps itself alive.

:class:`StreamConnection` reconnects on any close after a capped exponential backoff with jitter;
a watchdog aborts a connection silent for ``watchdog_s``. websockets answers the server's pings by
itself. What a venue sends and how it reads a frame are its subclass's
(``venues/binance/connection.py``: the combined streams, ``venues/okx/connection.py``); each
frame's events go through :func:`deliver` to the writer. A frame that does not fit is counted as
malformed and skipped, and the connection stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import websockets
from websockets.asyncio.client import ClientConnection, connect

from data_collector.backoff import backoff_delay
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import Event, Normalizer
from data_collector.streaming.writer import Entry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Route:
    """Where the events of one stream go."""

    symbol: str
    channel: str
    stream_key: str
    normalize: Normalizer
    xadd_head: bytes
    set_head: bytes
    #: Called with every valid event after it is queued (order books, closed klines).
    on_event: Callable[[Event], None] | None = None
    #: Exchange event time of the newest event queued on this stream, or, before the first one,
    #: of the newest one Redis held when the streamer started (0: none known).
    last_ms: int = 0
    #: Set on every connect when ``last_ms`` is known: the first event of the new connection
    #: then closes a gap marker ``(last_ms, its event time)``.
    gap_pending: bool = False
    #: The channel's events carry an id contiguous per symbol (trades): continuity is checked
    #: on every event, and a jump opens a gap exactly as wide as the ids missing.
    sequenced: bool = False
    #: The id of the newest event queued, or of the newest stored at start (-1: none known).
    last_seq: int = -1


@dataclass(slots=True)
class ConnectionSettings:
    watchdog_s: float = 30.0
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    #: Frames larger than this are counted as malformed and skipped.
    max_frame_bytes: int = 1 << 20
    #: The WebSocket library closes the connection on frames larger than this.
    ws_max_size: int = 16 << 20
    url_max_chars: int = 4000
    subscribe_per_s: float = 4.0
    subscribe_chunk: int = 100
    open_timeout_s: float = 10.0


def deliver(
    route: Route,
    entry_id: str,
    event: Event,
    now: float,
    submit: Callable[[Entry], None],
    on_resume: ResumeHook,
) -> None:
    """Hand one normalised event on (every adapter): to its hook (books, closed klines; an OKX
    book strips its raw levels here), to the writer, and, first after a (re)connect, to
    ``on_resume`` for the gap marker."""
    if route.on_event is not None:
        route.on_event(event)
    event_ms = event["event_ms"]
    submit((route.xadd_head, route.set_head, entry_id, msgpack.packb(event), event_ms, now))
    if route.sequenced:
        seq = event["id"]
        if seq > route.last_seq + 1 >= 1:  # an id was skipped: its gap is marked
            route.gap_pending = True
    if route.gap_pending:
        route.gap_pending = False
        on_resume(route, entry_id, event)
    if route.sequenced and seq > route.last_seq:
        route.last_seq = seq
    if event_ms > route.last_ms:
        route.last_ms = event_ms


ConnectHook = Callable[["Feed"], Awaitable[None]]
DisconnectHook = Callable[["Feed"], None]
#: ``(route, entry id, first event)`` of a stream whose ``gap_pending`` was set.
ResumeHook = Callable[[Route, str, Event], None]


class Feed:
    """What the service sees of any adapter's connection: its routes, hooks and state."""

    def __init__(
        self,
        name: str,
        routes: dict[str, Route],
        *,
        submit: Callable[[Entry], None],
        metrics: StreamMetrics,
        settings: ConnectionSettings,
        on_connect: ConnectHook,
        on_disconnect: DisconnectHook,
        on_resume: ResumeHook,
    ) -> None:
        self.name = name
        self.routes = routes
        self._submit = submit
        self._metrics = metrics
        self._settings = settings
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_resume = on_resume
        self.last_rx_ms = 0
        self.connected = False
        self.connects = 0
        #: ``(attempt, delay_s)`` of the latest reconnect waits (for metrics and tests).
        self.backoffs: deque[tuple[int, float]] = deque(maxlen=100)

    def unique_routes(self) -> list[Route]:
        """Each route once (a depth route is reachable under two stream names)."""
        return list({id(r): r for r in self.routes.values()}.values())

    async def _connected(self) -> None:
        """Count the (re)connect and mark the streams whose earlier events are known (from
        this process or from Redis after a restart): their first event closes a gap marker."""
        self.connects += 1
        if self.connects > 1:
            self._metrics.add_reconnect()
            log.info("%s reconnected", self.name)
        await self._on_connect(self)
        self.connected = True

    async def run(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class StreamConnection(Feed):
    """Owns one WebSocket connection (and its reconnects) for a fixed set of streams."""

    #: A frame that only answers our keepalive (OKX's ``pong``): not data, and not proof that
    #: data flows (the watchdog ignores it).
    keepalive_reply: bytes | None = None

    def __init__(self, name: str, url: str, routes: dict[str, Route], **hooks: Any) -> None:
        """``hooks``: :class:`Feed`'s keyword arguments."""
        super().__init__(name, routes, **hooks)
        self.url = url
        self._ws: ClientConnection | None = None
        self._last_rx = 0.0
        #: Newest frame of any kind (keepalive replies included).
        self._last_any = time.monotonic()
        self._shutdown_requested = False

    async def run(self) -> None:
        """Connect, read, reconnect, forever (until cancelled)."""
        attempt = 0
        settings = self._settings
        while True:
            started = time.monotonic()
            opened_ms = 0
            try:
                async with connect(
                    self.url,
                    compression=None,
                    max_size=settings.ws_max_size,
                    ping_interval=None,
                    close_timeout=1.0,
                    open_timeout=settings.open_timeout_s,
                    max_queue=1024,
                ) as ws:
                    self._ws = ws
                    opened_ms = int(time.time() * 1000)
                    await self._connected()
                    self._shutdown_requested = False
                    self._last_rx = time.monotonic()
                    helpers = [asyncio.create_task(self._watchdog(ws)), *self._helpers(ws)]
                    try:
                        await self._read(ws)
                    finally:
                        for task in helpers:
                            task.cancel()
                        await asyncio.gather(*helpers, return_exceptions=True)
            except (websockets.WebSocketException, OSError, TimeoutError) as exc:
                log.warning("%s: %s: %s", self.name, type(exc).__name__, exc)
            except Exception:  # a bug must not end the stream for good: log it and reconnect
                log.exception("%s: unexpected error; reconnecting", self.name)
            finally:
                self._ws = None
                if self.connected:
                    self.connected = False
                    self._on_disconnect(self)
            if opened_ms and self.last_rx_ms >= opened_ms and time.monotonic() - started > 1.0:
                attempt = 0
            delay = backoff_delay(attempt, settings.min_backoff_s, settings.max_backoff_s)
            self.backoffs.append((attempt, delay))
            attempt += 1
            await asyncio.sleep(delay)

    def _helpers(self, ws: ClientConnection) -> list[asyncio.Task[None]]:
        """Tasks beside the reader for one connection (cancelled when it ends): subscribing,
        keepalives (the venue's)."""
        return []

    async def _read(self, ws: ClientConnection) -> None:
        metrics = self._metrics
        max_frame = self._settings.max_frame_bytes
        handle = self._frame
        keepalive = self.keepalive_reply
        clock = time.time
        monotonic = time.monotonic
        self._last_any = monotonic()
        while True:
            try:
                raw = await ws.recv(decode=False)
            except websockets.ConnectionClosedOK:
                log.info("%s closed by the server", self.name)
                return
            self._last_any = monotonic()
            if raw == keepalive:
                continue
            now = clock()
            self._last_rx = self._last_any
            recv_ms = int(now * 1000)
            self.last_rx_ms = recv_ms
            metrics.received += 1
            if len(raw) > max_frame:
                metrics.malformed += 1
                continue
            if handle(raw, now, recv_ms):
                return

    def _frame(self, raw: bytes, now: float, recv_ms: int) -> bool:
        """Route one frame (the venue's); True when the server asked us to reconnect."""
        raise NotImplementedError

    async def _watchdog(self, ws: ClientConnection) -> None:
        limit = self._settings.watchdog_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            silent = time.monotonic() - self._last_rx
            if silent > limit:
                log.warning("%s silent for %.1f s; reconnecting", self.name, silent)
                ws.transport.abort()
                return

    async def close(self) -> None:
        """Close the socket now (the owner cancels :meth:`run`); idempotent."""
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.transport.abort()
