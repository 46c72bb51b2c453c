"""One OKX v5 WebSocket (``/ws/v5/public`` or ``/ws/v5/business``) that keeps itself alive.

The reconnects, backoff and watchdog are :class:`StreamConnection`'s; what differs is here:

- on every connect each ``{"channel", "instId"}`` is subscribed with ``op: subscribe`` (at most
  :data:`SUBSCRIBE_PER_S` requests a second, as OKX allows 3), and the acks and errors are control
  frames, not data;
- OKX drops a connection after 30 s without traffic, so a text ``ping`` goes out whenever nothing
  arrived for ``ping_interval_s``; the ``pong`` keeps the socket up but does not count as data for
  the watchdog (a stalled feed that still answers pings is reconnected);
- a push is ``{"arg": {"channel", "instId"}, "data": [...]}``, each item an event; ``books``
  items go to the book keeper before they are written (it checks and strips their raw levels).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from data_collector.streaming.connection import Route, StreamConnection, deliver
from data_collector.streaming.normalize import MalformedEvent
from data_collector.venues.okx.protocol import (
    endpoint,
    inst_id,
    okx_channel,
    subscribe_requests,
    ws_endpoint_url,
)

log = logging.getLogger(__name__)

#: ``subscribe`` requests per second on one connection (OKX: 3 per second).
SUBSCRIBE_PER_S = 3.0


def route_key(channel: str, inst: str) -> str:
    """The routing key of OKX's ``arg``: ``trades:BTC-USDT``."""
    return f"{channel}:{inst}"


class OkxConnection(StreamConnection):
    """Owns one OKX WebSocket (and its reconnects) for a fixed set of ``(channel, instId)``."""

    keepalive_reply = b"pong"

    def __init__(
        self,
        name: str,
        url: str,
        subscriptions: list[tuple[str, str]],
        routes: dict[str, Route],
        *,
        ping_interval_s: float,
        **hooks: Any,
    ) -> None:
        """``hooks``: :class:`StreamConnection`'s keyword arguments (submit, metrics, settings, ...)."""
        super().__init__(name, url, routes, **hooks)
        self.subscriptions = subscriptions
        self.ping_interval_s = ping_interval_s
        self._sends: set[asyncio.Task[None]] = set()
        #: ``ping`` frames sent.
        self.pings = 0

    def _helpers(self, ws: ClientConnection) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._subscribe_all(ws)), asyncio.create_task(self._keepalive(ws))]

    async def _subscribe_all(self, ws: ClientConnection) -> None:
        for i, request in enumerate(subscribe_requests("subscribe", self.subscriptions)):
            if i:
                await asyncio.sleep(1.0 / SUBSCRIBE_PER_S)
            await ws.send(orjson.dumps(request).decode())

    async def _keepalive(self, ws: ClientConnection) -> None:
        interval = self.ping_interval_s
        while True:
            await asyncio.sleep(min(1.0, interval / 4))
            if time.monotonic() - self._last_any >= interval:
                self._last_any = time.monotonic()
                await ws.send("ping")
                self.pings += 1

    def resubscribe(self, channel: str, inst: str) -> None:
        """Unsubscribe and subscribe ``channel`` of ``inst`` again (``books``: a new snapshot)."""
        ws = self._ws
        if ws is None:
            return  # the reconnect subscribes everything anew
        arg = [(channel, inst)]

        async def send() -> None:
            try:
                for request in ("unsubscribe", "subscribe"):
                    await ws.send(orjson.dumps(subscribe_requests(request, arg)[0]).decode())
            except websockets.WebSocketException as exc:
                log.warning("%s: could not resubscribe %s %s: %s", self.name, channel, inst, exc)

        task = asyncio.get_running_loop().create_task(send())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _frame(self, raw: bytes, now: float, recv_ms: int) -> bool:
        """Route one OKX frame: a push's every item, or a control answer (never a reconnect)."""
        metrics = self._metrics
        try:
            msg = orjson.loads(raw)
            if "event" in msg:
                metrics.received -= 1
                self._control(msg)
                return False
            arg = msg["arg"]
            route = self.routes[arg["channel"] + ":" + arg["instId"]]
            items = msg["data"]
            if type(items) is not list:
                raise MalformedEvent("data must be a list")
        except (MalformedEvent, ValueError, KeyError, TypeError, AttributeError):
            metrics.malformed += 1
            return False
        metrics.received += len(items) - 1
        normalize = route.normalize
        for item in items:
            try:
                entry_id, event = normalize(item, recv_ms)
            except (MalformedEvent, ValueError, KeyError, TypeError, IndexError, AttributeError):
                metrics.malformed += 1
                continue
            deliver(route, entry_id, event, now, self._submit, self._on_resume)
        return False

    def _control(self, msg: dict[str, Any]) -> None:
        if msg.get("event") == "error":
            log.warning("%s: OKX refused a request: %s %s", self.name, msg.get("code"), msg.get("msg"))

    async def close(self) -> None:
        for task in list(self._sends):
            task.cancel()
        await super().close()


def build_connections(
    symbols: list[str],
    channels: list[str],
    route_for: Callable[[str, str], Route],
    ws_url: str,
    *,
    per_connection: int,
    ping_interval_s: float,
    **hooks: Any,
) -> list[OkxConnection]:
    """The connections for ``symbols`` x ``channels``: candles on ``/business``, the rest on
    ``/public``, at most ``per_connection`` subscriptions on each."""
    by_endpoint: dict[str, list[tuple[str, str, Route]]] = {}
    for symbol in symbols:
        inst = inst_id(symbol)
        for channel in channels:
            by_endpoint.setdefault(endpoint(channel), []).append(
                (okx_channel(channel), inst, route_for(symbol, channel))
            )
    out: list[OkxConnection] = []
    for path, subs in by_endpoint.items():
        for start in range(0, len(subs), per_connection):
            group = subs[start : start + per_connection]
            out.append(
                OkxConnection(
                    f"okx-{path}-{len(out)}",
                    ws_endpoint_url(ws_url, path),
                    [(c, i) for c, i, _ in group],
                    {route_key(c, i): r for c, i, r in group},
                    ping_interval_s=ping_interval_s,
                    **hooks,
                )
            )
    return out
