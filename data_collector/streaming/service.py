"""The streamer's async core: connections -> normalised events -> Redis (and books, candles).

:class:`StreamService` runs on one event loop and owns everything it opens: the WebSocket
connections, the Redis writer, the REST client, the order books and the candle sink.
``OptimizedWebSocketStreamer`` (the public facade) decides which loop that is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from data_collector.errors import CollectorError, UsageError
from data_collector.markets import candle_open_ms, next_open_ms, normalize_symbols, stream_symbol
from data_collector.redis_keys import gaps_key, latest_key, stream_key
from data_collector.streaming.candles import CandleSink
from data_collector.streaming.connection import (
    MAX_STREAMS_PER_CONNECTION,
    ConnectionSettings,
    Route,
    StreamConnection,
)
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import (
    Event,
    MalformedEvent,
    binance_stream_name,
    kline_entry_id,
    kline_event,
    make_normalizer,
    validate_channel,
)
from data_collector.streaming.order_book import BookKeeper
from data_collector.streaming.redis_conn import RedisEndpoint, pack
from data_collector.streaming.rest import BinanceRest
from data_collector.streaming.writer import RedisWriter, set_prefix, xadd_prefix

log = logging.getLogger(__name__)

#: Concurrent REST requests while repairing klines after a reconnect.
REPAIR_CONCURRENCY = 8
#: Longest the kline repair may hold a reconnected connection's reading back.
REPAIR_TIMEOUT_S = 5.0


@dataclass
class ServiceOptions:
    """Everything the core needs, resolved from the facade's arguments and the config."""

    symbols: list[str]
    channels: list[str]
    exchange: str
    prefix: str
    ws_url: str
    rest_url: str
    rest_timeout_s: float
    batch_size: int
    batch_interval_s: float
    max_batch: int
    buffer_max: int
    stream_maxlen: int
    book_depth: int
    book_publish_interval_ms: int
    book_snapshot_limit: int
    max_streams_per_connection: int
    connection: ConnectionSettings
    close_timeout_s: float = 10.0


class StreamService:
    """Runs the streams of :class:`ServiceOptions` into Redis until :meth:`close`."""

    def __init__(
        self,
        options: ServiceOptions,
        endpoint: RedisEndpoint,
        metrics: StreamMetrics,
        candle_sink: CandleSink | None = None,
    ) -> None:
        if options.exchange != "binance":
            raise UsageError(f"the streamer speaks Binance's protocol only, not {options.exchange!r}")
        self.options = options
        self.metrics = metrics
        self.symbols = normalize_symbols(options.symbols)
        self.channels = [validate_channel(c) for c in dict.fromkeys(options.channels)]
        if not self.symbols or not self.channels:
            raise UsageError("stream at least one symbol and one channel")
        self.writer = RedisWriter(
            endpoint,
            metrics,
            batch_size=options.batch_size,
            batch_interval_s=options.batch_interval_s,
            buffer_max=options.buffer_max,
            max_batch=options.max_batch,
        )
        self.rest = BinanceRest(options.rest_url, options.rest_timeout_s)
        self.books: BookKeeper | None = None
        if "depth" in self.channels:
            self.books = BookKeeper(
                self.symbols,
                rest=self.rest,
                metrics=metrics,
                publish=self.writer.publish_book,
                prefix=options.prefix,
                exchange=options.exchange,
                depth=options.book_depth,
                publish_interval_ms=options.book_publish_interval_ms,
                snapshot_limit=options.book_snapshot_limit,
            )
        self.candles = candle_sink
        self._last_closed_open: dict[tuple[str, str], int] = {}
        self._gap_id = (0, 0)
        self.connections = self._build_connections()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False

    def _route(self, symbol: str, channel: str) -> Route:
        opts = self.options
        skey = stream_key(opts.prefix, opts.exchange, channel, symbol)
        on_event = None
        if channel == "depth" and self.books is not None:
            books = self.books

            def on_depth(event: Event) -> None:
                books.on_diff(symbol, event)

            on_event = on_depth
        elif channel.startswith("kline_"):
            timeframe = channel[6:]

            def on_kline(event: Event) -> None:
                if event["closed"]:
                    self._on_closed_kline(symbol, timeframe, event)

            on_event = on_kline
        return Route(
            symbol=symbol,
            channel=channel,
            stream_key=skey,
            normalize=make_normalizer(opts.exchange, symbol, channel),
            xadd_head=xadd_prefix(skey, opts.stream_maxlen),
            set_head=set_prefix(latest_key(opts.prefix, opts.exchange, channel, symbol)),
            on_event=on_event,
        )

    def _build_connections(self) -> list[StreamConnection]:
        per_conn = min(self.options.max_streams_per_connection, MAX_STREAMS_PER_CONNECTION)
        symbols_per_conn = max(1, per_conn // len(self.channels))
        connections: list[StreamConnection] = []
        for start in range(0, len(self.symbols), symbols_per_conn):
            group = self.symbols[start : start + symbols_per_conn]
            streams: list[str] = []
            routes: dict[str, Route] = {}
            for symbol in group:
                for channel in self.channels:
                    name = binance_stream_name(stream_symbol(symbol), channel)
                    route = self._route(symbol, channel)
                    streams.append(name)
                    routes[name] = route
                    if channel == "depth":
                        routes[f"{stream_symbol(symbol)}@depth"] = route
            connections.append(
                StreamConnection(
                    f"ws-{len(connections)}",
                    self.options.ws_url,
                    streams,
                    routes,
                    submit=self.writer.submit,
                    metrics=self.metrics,
                    settings=self.options.connection,
                    on_reconnect=self._on_reconnect,
                    on_disconnect=self._on_disconnect,
                )
            )
        return connections

    async def start(self) -> None:
        """Start the writer, the candle sink and every connection (returns at once)."""
        loop = asyncio.get_running_loop()
        self._writer_task = loop.create_task(self.writer.run(), name="redis-writer")
        if self.candles is not None:
            self.candles.start()
        for conn in self.connections:
            self._tasks.append(loop.create_task(conn.run(), name=conn.name))

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.connections) and self.writer.connected

    def _on_closed_kline(self, symbol: str, timeframe: str, event: Event) -> None:
        key = (symbol, timeframe)
        if event["open_ms"] > self._last_closed_open.get(key, 0):
            self._last_closed_open[key] = event["open_ms"]
        if self.candles is not None:
            self.candles.submit(
                symbol,
                timeframe,
                (
                    event["open_ms"],
                    event["open"],
                    event["high"],
                    event["low"],
                    event["close"],
                    event["volume"],
                ),
            )

    def _on_disconnect(self, conn: StreamConnection) -> None:
        if self.books is None:
            return
        for symbol in {r.symbol for r in conn.routes.values() if r.channel == "depth"}:
            self.books.invalidate(symbol, resync=not self._closed)

    def _next_gap_id(self, to_ms: int) -> str:
        last_ms, last_seq = self._gap_id
        self._gap_id = (to_ms, 0) if to_ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._gap_id[0]}-{self._gap_id[1]}"

    async def _on_reconnect(self, conn: StreamConnection, from_ms: int, to_ms: int) -> None:
        opts = self.options
        gkey = gaps_key(opts.prefix, opts.exchange)
        routes = list({id(r): r for r in conn.routes.values()}.values())
        for route in routes:
            self.writer.submit_command(
                pack(
                    "XADD",
                    gkey,
                    "MAXLEN",
                    "~",
                    opts.stream_maxlen,
                    self._next_gap_id(to_ms),
                    "stream",
                    route.stream_key,
                    "channel",
                    route.channel,
                    "symbol",
                    route.symbol,
                    "from_ms",
                    from_ms,
                    "to_ms",
                    to_ms,
                    "reason",
                    "reconnect",
                )
            )
            self.metrics.gaps += 1
        kline_routes = [r for r in routes if r.channel.startswith("kline_")]
        if not kline_routes:
            return
        semaphore = asyncio.Semaphore(REPAIR_CONCURRENCY)

        async def fetch(route: Route, cutoff_ms: int) -> list[list[Any]]:
            timeframe = route.channel[6:]
            last = self._last_closed_open.get((route.symbol, timeframe))
            start = next_open_ms(last, timeframe) if last else candle_open_ms(from_ms, timeframe)
            async with semaphore:
                try:
                    return await self.rest.klines(route.symbol, timeframe, start, cutoff_ms)
                except CollectorError as exc:
                    self.metrics.rest_errors += 1
                    log.warning("could not repair %s %s klines after a gap: %s", route.symbol, timeframe, exc)
                    return []

        # Candles count as closed by the exchange's clock, which may differ from ours. One that
        # closes after the new connection opened may also arrive on it: it has the same entry id
        # and is then rejected by Redis as a duplicate.
        # Frames wait unread meanwhile, so the repair is bounded; what it misses stays marked in
        # the gaps stream for the backfill.
        try:
            async with asyncio.timeout(REPAIR_TIMEOUT_S):
                try:
                    cutoff_ms = max(to_ms, await self.rest.server_time())
                except CollectorError:
                    cutoff_ms = to_ms
                results = await asyncio.gather(*(fetch(r, cutoff_ms) for r in kline_routes))
        except TimeoutError:
            self.metrics.rest_errors += 1
            log.warning("kline repair after a gap took over %.0f s; left to the backfill", REPAIR_TIMEOUT_S)
            return
        now = time.time()
        recv_ms = int(now * 1000)
        for route, rows in zip(kline_routes, results, strict=True):
            self._write_repaired(route, rows, cutoff_ms, recv_ms, now)

    def _write_repaired(
        self, route: Route, rows: list[list[Any]], to_ms: int, recv_ms: int, now: float
    ) -> None:
        timeframe = route.channel[6:]
        last = self._last_closed_open.get((route.symbol, timeframe), 0)
        for row in rows:
            try:
                open_ms, close_ms = int(row[0]), int(row[6])
                if close_ms >= to_ms or open_ms <= last:
                    continue
                event = kline_event(
                    self.options.exchange,
                    route.symbol,
                    timeframe,
                    open_ms=open_ms,
                    values=(row[1], row[2], row[3], row[4], row[5], row[7]),
                    trades=int(row[8]),
                    closed=True,
                    event_ms=close_ms,
                    recv_ms=recv_ms,
                )
            except (MalformedEvent, ValueError, TypeError, IndexError) as exc:
                self.metrics.rest_errors += 1
                log.warning("skipping a bad REST kline for %s: %s", route.symbol, exc)
                continue
            event["repaired"] = True
            entry_id = kline_entry_id(open_ms, timeframe, close_ms, True)
            self.writer.submit(
                (route.xadd_head, route.set_head, entry_id, msgpack.packb(event), recv_ms, now)
            )
            self.metrics.repaired_klines += 1
            self._on_closed_kline(route.symbol, timeframe, event)

    def order_book(self, symbol: str) -> dict[str, Any] | None:
        """The full local book of ``symbol`` while in sync, else ``None``."""
        if self.books is None:
            return None
        return self.books.snapshot(symbol)

    async def close(self) -> None:
        """Stop the connections, flush Redis (bounded), close everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in self.connections:
            await conn.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.books is not None:
            await self.books.close()
        await self.writer.close(self._writer_task, self.options.close_timeout_s)
        if self.candles is not None:
            await self.candles.close()
        await self.rest.close()
