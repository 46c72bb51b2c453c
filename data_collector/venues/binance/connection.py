"""One Binance combined-stream WebSocket connection (spot and USDⓈ-M).

It connects to ``<ws_url>/stream?streams=a/b/...``; streams that do not fit in the URL are added
with ``SUBSCRIBE``, at most ``subscribe_per_s`` control messages a second (Binance allows 5, and
counts pongs too). A frame is ``{"stream": name, "data": payload}``; the answers to ``SUBSCRIBE``
and ``serverShutdown`` notices are control frames (the latter reconnects at once). The
reconnects, backoff and watchdog are :class:`~data_collector.streaming.connection.StreamConnection`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection

from data_collector.streaming.connection import Route, StreamConnection, deliver
from data_collector.streaming.normalize import MalformedEvent

log = logging.getLogger(__name__)

#: Binance's limit of streams on one connection.
MAX_STREAMS_PER_CONNECTION = 1024


def ws_base(url: str) -> str:
    """``ws://host:port`` from a base URL given with or without ``/ws`` or ``/stream``."""
    base = url.rstrip("/")
    changed = True
    while changed:
        changed = False
        for suffix in ("/stream", "/ws"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                changed = True
    return base


def split_for_url(base: str, streams: list[str], url_max_chars: int) -> tuple[str, list[str]]:
    """The combined-stream URL holding as many streams as fit, and the streams left to SUBSCRIBE."""
    url = f"{ws_base(base)}/stream?streams="
    taken: list[str] = []
    length = len(url)
    for stream in streams:
        extra = len(stream) + (1 if taken else 0)
        if taken and length + extra > url_max_chars:
            break
        taken.append(stream)
        length += extra
    return url + "/".join(taken), streams[len(taken) :]


class BinanceConnection(StreamConnection):
    """Owns one combined-stream connection (and its reconnects) for a fixed set of streams."""

    def __init__(
        self, name: str, base_url: str, streams: list[str], routes: dict[str, Route], **hooks: Any
    ) -> None:
        """``hooks``: :class:`~data_collector.streaming.connection.Feed`'s keyword arguments."""
        super().__init__(name, base_url, routes, **hooks)
        self.streams = list(streams)
        self.url, self._to_subscribe = split_for_url(base_url, self.streams, self._settings.url_max_chars)

    def _helpers(self, ws: ClientConnection) -> list[asyncio.Task[None]]:
        """SUBSCRIBE the streams the URL could not hold."""
        return [asyncio.create_task(self._subscribe(ws))] if self._to_subscribe else []

    def _frame(self, raw: bytes, now: float, recv_ms: int) -> bool:
        """Route one Binance frame; True when the server asked us to reconnect."""
        try:
            msg = orjson.loads(raw)
            route = self.routes[msg["stream"]]
            entry_id, event = route.normalize(msg["data"], recv_ms)
        except (MalformedEvent, ValueError, KeyError, TypeError, IndexError, AttributeError):
            if self._control_frame(raw):
                self._metrics.received -= 1
                return self._shutdown_requested
            self._metrics.malformed += 1
            return False
        deliver(route, entry_id, event, now, self._submit, self._on_resume)
        return False

    def _control_frame(self, raw: bytes) -> bool:
        """Answers to SUBSCRIBE and ``serverShutdown`` notices: not data, not malformed."""
        try:
            msg: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(msg, dict):
            return False
        if "id" in msg and ("result" in msg or "error" in msg):
            if msg.get("error"):
                log.warning("%s: the server refused a control message: %s", self.name, msg["error"])
            return True
        data = msg.get("data", msg)
        if isinstance(data, dict) and data.get("e") == "serverShutdown":
            log.info("%s: serverShutdown received; reconnecting", self.name)
            self._shutdown_requested = True
            return True
        return False

    async def _subscribe(self, ws: ClientConnection) -> None:
        pending = list(self._to_subscribe)
        chunk = self._settings.subscribe_chunk
        interval = 1.0 / self._settings.subscribe_per_s
        request_id = 1
        while pending:
            params, pending = pending[:chunk], pending[chunk:]
            await ws.send(orjson.dumps({"method": "SUBSCRIBE", "params": params, "id": request_id}).decode())
            request_id += 1
            await asyncio.sleep(interval)


def stream_name(stream_symbol: str, channel: str) -> str:
    """The Binance stream for a channel: ``solusdt@trade``, ``solusdt@depth@100ms`` ..."""
    if channel == "depth":
        return f"{stream_symbol}@depth@100ms"
    return f"{stream_symbol}@{channel}"
