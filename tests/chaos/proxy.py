"""A small asyncio TCP fault proxy for the chaos suite.

Neither toxiproxy nor ``tc netem`` exists on these machines, so the faults are made here: the
proxy listens on ``127.0.0.1:<free port>`` and forwards every connection to one target, and its
switches can be flipped while traffic flows:

* ``latency_up_s`` / ``latency_down_s``: each chunk is delivered that much later (a delay line:
  order is kept, throughput is not throttled);
* ``blackhole``: new connections are accepted but never reach the target; data on existing ones is
  held (as TCP holds it across a partition) until the switch goes off;
* ``reset_new`` and :meth:`FaultProxy.reset_all`: a TCP RST (``SO_LINGER`` 0, then close) to the
  client, on new or on existing connections;
* ``bandwidth_bps``: bytes per second per connection and direction;
* :meth:`FaultProxy.cut_after`: RST a connection after N more bytes in one direction, in the
  middle of a transfer.

"up" is client -> target, "down" is target -> client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down", "both"]
_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 256


@dataclass
class ProxyStats:
    """Counters of one proxy since it started."""

    accepted: int = 0
    active: int = 0
    upstream_connected: int = 0
    upstream_failed: int = 0
    blackholed: int = 0
    resets: int = 0
    cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Abort ``writer``'s socket with a TCP RST rather than a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Conn:
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    target_writer: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cut_budget: dict[str, int | None] = field(default_factory=lambda: {"up": None, "down": None})
    closed: bool = False


class FaultProxy:
    """A TCP proxy to ``target_host:target_port`` whose faults are switched at runtime.

    Use it as ``async with FaultProxy(host, port) as proxy:`` and point the client at
    ``proxy.host:proxy.port`` (or :meth:`url` for a URL rewritten to the proxy).
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self.port = 0
        self.latency_up_s = 0.0
        self.latency_down_s = 0.0
        self.bandwidth_bps: int | None = None
        self.reset_new = False
        self.stats = ProxyStats()
        self._blackhole = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut: tuple[int, Direction] | None = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def url(self, original: str) -> str:
        """``original`` (``scheme://[user@]host:port/...``) with host:port replaced by the proxy's."""
        scheme, rest = original.split("://", 1)
        netloc, _, path = rest.partition("/")
        userinfo, _, _ = netloc.rpartition("@")
        auth = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{auth}{self.host}:{self.port}" + (
            f"/{path}" if path or rest.endswith("/") else ""
        )

    @property
    def blackhole(self) -> bool:
        return self._blackhole.is_set()

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if on:
            self._blackhole.set()
            self._open.clear()
        else:
            self._blackhole.clear()
            self._open.set()

    def set_latency(self, seconds: float, direction: Direction = "both") -> None:
        if direction in ("up", "both"):
            self.latency_up_s = seconds
        if direction in ("down", "both"):
            self.latency_down_s = seconds

    def cut_after(self, nbytes: int | None, direction: Direction = "down") -> None:
        """RST each connection (existing and new) once ``nbytes`` more bytes crossed in ``direction``.

        ``None`` switches it off. A cut fires once per connection.
        """
        self._cut = None if nbytes is None else (nbytes, direction)
        for conn in self._conns:
            self._arm_cut(conn)

    def _arm_cut(self, conn: _Conn) -> None:
        for d in ("up", "down"):
            conn.cut_budget[d] = None
        if self._cut is not None:
            nbytes, direction = self._cut
            for d in ("up", "down"):
                if direction in (d, "both"):
                    conn.cut_budget[d] = nbytes

    def reset_all(self) -> int:
        """RST every open connection (both sides); returns how many were reset."""
        conns = [c for c in self._conns if not c.closed]
        for conn in conns:
            self._kill(conn, rst=True)
        return len(conns)

    def clear(self) -> None:
        """Switch every fault off."""
        self.blackhole = False
        self.reset_new = False
        self.bandwidth_bps = None
        self.set_latency(0.0)
        self.cut_after(None)

    @property
    def connections(self) -> int:
        return sum(1 for c in self._conns if not c.closed)

    async def close(self) -> None:
        """Stop listening and drop every connection; safe to call twice."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._open.set()
        for conn in list(self._conns):
            self._kill(conn, rst=False)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)

    def _kill(self, conn: _Conn, *, rst: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        if rst:
            self.stats.resets += 1
            _rst(conn.client_writer)
            _rst(conn.target_writer)
        else:
            conn.client_writer.transport.abort()
            if conn.target_writer is not None:
                conn.target_writer.transport.abort()
        for task in conn.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        self.stats.accepted += 1
        self.stats.active += 1
        try:
            await self._serve(conn)
        except asyncio.CancelledError:
            pass
        finally:
            self._kill(conn, rst=False)
            self._conns.discard(conn)
            self.stats.active -= 1
            self._handlers.discard(task)

    async def _serve(self, conn: _Conn) -> None:
        if self.reset_new:
            self._kill(conn, rst=True)
            return
        if self.blackhole:
            # Accept, read nothing, answer nothing: the client's bytes wait in the kernel until the
            # blackhole lifts (a reset_all() in the meantime drops the connection).
            self.stats.blackholed += 1
            await self._open.wait()
            if conn.closed:
                return
        try:
            target_reader, target_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            self.stats.upstream_failed += 1
            self._kill(conn, rst=True)
            return
        self.stats.upstream_connected += 1
        conn.target_writer = target_writer
        self._arm_cut(conn)
        up = asyncio.create_task(self._pump(conn, conn.client_reader, target_writer, "up"))
        down = asyncio.create_task(self._pump(conn, target_reader, conn.client_writer, "down"))
        conn.tasks = [up, down]
        await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        # One side finished: give the other a moment to flush a half-close, then drop both.
        await asyncio.wait(conn.tasks, timeout=1.0)

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, d: str
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def read_side() -> None:
            try:
                while True:
                    data = await reader.read(_CHUNK)
                    delay = self.latency_up_s if d == "up" else self.latency_down_s
                    await queue.put((time.monotonic() + delay, data))
                    if not data:
                        return
            except OSError:
                await queue.put((0.0, b""))

        reading = asyncio.create_task(read_side())
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._open.wait()
                if not data:
                    with contextlib.suppress(OSError, RuntimeError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                await self._forward(conn, writer, d, data)
                if conn.closed:
                    return
        except (OSError, ConnectionError):
            self._kill(conn, rst=True)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading

    async def _forward(self, conn: _Conn, writer: asyncio.StreamWriter, d: str, data: bytes) -> None:
        budget = conn.cut_budget[d]
        cut = False
        if budget is not None and len(data) >= budget:
            data, cut = data[:budget], True
        elif budget is not None:
            conn.cut_budget[d] = budget - len(data)
        view = memoryview(data)
        while view:
            bps = self.bandwidth_bps
            piece = view if not bps else view[: max(1, bps // 20)]
            writer.write(piece)
            await writer.drain()
            if d == "up":
                self.stats.bytes_up += len(piece)
            else:
                self.stats.bytes_down += len(piece)
            view = view[len(piece) :]
            if bps:
                await asyncio.sleep(len(piece) / bps)
        if cut:
            self.stats.cuts += 1
            self._kill(conn, rst=True)
