"""The streamer's async core: connections -> normalised events -> Redis (and books, candles).

:class:`StreamService` runs on one event loop and owns everything it opens: the WebSocket
connections, the Redis writer, the REST client, the order books and the candle sink.
``OptimizedWebSocketStreamer`` (the public facade) decides which loop that is.

Long because StreamService owns every resource it opens (sockets, writers, books, candles,
heartbeat) and their start and teardown order; split up, that order would be spread over files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from data_collector.errors import CollectorError, UsageError
from data_collector.markets import (
    TIMEFRAME_MS,
    candle_open_ms,
    next_open_ms,
    normalize_markets,
)
from data_collector.redis.client import RedisEndpoint, pack
from data_collector.redis.keys import gaps_key, latest_key, stream_key
from data_collector.streaming.candles import CandleSink
from data_collector.streaming.connection import (
    ConnectionSettings,
    Feed,
    Route,
)
from data_collector.streaming.funding import FundingWatcher
from data_collector.streaming.metrics import StreamMetrics
from data_collector.streaming.normalize import (
    SEQUENCED_CHANNELS,
    Event,
    MalformedEvent,
    kline_entry_id,
    kline_event,
    validate_channel,
)
from data_collector.streaming.order_book import BookKeeper
from data_collector.streaming.repair_hold import REPAIR_MODES, LiveHold, repaired_head
from data_collector.streaming.trade_repair import REPAIR_SUFFIX, WRITER_IDLE_DEPTH, RepairJob, TradeRepairer
from data_collector.streaming.trades_store import TradeStoreSink
from data_collector.streaming.writer import (
    GapMarker,
    RedisWriter,
    StreamName,
    WriteLease,
    set_prefix,
    xadd_prefix,
)
from data_collector.venues import stream_venue
from data_collector.venues.binance.rest import BACKGROUND_WEIGHT_PER_MIN, BinanceRest

log = logging.getLogger(__name__)

#: Concurrent REST requests while repairing klines after a reconnect.
REPAIR_CONCURRENCY = 8
#: Candles per klines page of a refill after a Redis restart (Binance's maximum).
KLINE_PAGE = 1000
#: Longest the kline repair may hold a reconnected connection's reading back.
REPAIR_TIMEOUT_S = 5.0
#: Seconds between attempts to read a restart's starting point when Redis was down at start.
RESOLVE_INTERVAL_S = 1.0
#: Newest gap markers read at start for the trade gaps a previous run left unrepaired.
OPEN_GAPS_READ = 10_000
#: Reason of the marker over candles that closed between a reconnect's REST repair and the first
#: live candle (a subscription acted on late): its ``repaired`` marker has the same bounds.
KLINE_SEAM = "late_subscription"


@dataclass
class ServiceOptions:
    """Everything the core needs, resolved from the facade's arguments and the config."""

    symbols: list[str]
    channels: list[str]
    #: The venue label in every key and event (``exchange.name``, e.g. ``binance``, ``sim-binance``).
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
    #: TTL of the ``<prefix>:heartbeat:streamer:<instance>`` key (``metrics.heartbeat_ttl_s``);
    #: ``None``: no heartbeat.
    heartbeat_ttl_s: int | None = 60
    #: The instance part of the heartbeat key (``metrics.instance``); ``None``: ``<host>-<pid>``.
    instance: str | None = None
    #: The protocol spoken (``exchange.id``): ``binance`` (spot) or ``binanceusdm`` (USDⓈ-M
    #: perpetuals), see :mod:`data_collector.venues`.
    protocol: str = "binance"
    #: With a candle sink: closed klines go to it.
    store_klines: bool = True
    #: With a candle sink: settled funding rates go to it (:mod:`.funding`).
    store_funding: bool = False
    #: The widest trade gap (Binance trade and aggTrade, OKX trade) fetched back over REST
    #: (:mod:`.trade_repair`); 0: none.
    repair_max_ids: int = 100_000
    #: Request weight the REST repairs may spend a minute (:class:`~data_collector.venues.binance.rest.RequestGate`).
    repair_weight_per_min: int = BACKGROUND_WEIGHT_PER_MIN
    #: Where repaired trades go (:mod:`.repair_hold`): ``companion`` (the ``@repair`` stream) or
    #: ``hold`` (the live stream itself, its live entries held meanwhile).
    repair_mode: str = "companion"
    #: Repair mode ``hold``: live entries one held stream keeps at most (and the widest gap held).
    repair_hold_max: int = 10_000
    #: Repair mode ``hold``: longest a stream is held.
    repair_hold_max_s: float = 2.0
    #: ``native`` (Binance's or OKX's own adapter) or ``ccxt`` (the generic one, :mod:`data_collector.venues.ccxt_generic`).
    adapter: str = "native"
    #: Constructor config of the ccxt.pro exchange (the generic adapter only).
    ccxt_config: dict[str, Any] = field(default_factory=dict)
    #: The shard lease these streams are written under (a sharded run); None: no lease.
    lease: WriteLease | None = None


class _Activity:
    """The heartbeat's view of the streamer: newest message received, newest batch written."""

    def __init__(self, service: StreamService) -> None:
        self._service = service

    @property
    def last_message_ms(self) -> int | None:
        return self._service.last_message_ms

    @property
    def last_write_ms(self) -> int | None:
        return self._service.metrics.last_write_ms

    def record_heartbeat(self, ts_ms: int) -> None:
        self._service.metrics.heartbeat_written(ts_ms)


def _opens_before(row: list[Any], ms: int) -> bool:
    """A REST kline row that opens before ``ms`` (a malformed one is left to the writer's checks)."""
    try:
        return int(row[0]) < ms
    except (ValueError, TypeError, IndexError):
        return False


class StreamService:
    """Runs the streams of :class:`ServiceOptions` into Redis until :meth:`close`."""

    def __init__(
        self,
        options: ServiceOptions,
        endpoint: RedisEndpoint,
        metrics: StreamMetrics,
        candle_sink: CandleSink | None = None,
        on_mark_price: Callable[[Event], None] | None = None,
        trade_store: TradeStoreSink | None = None,
    ) -> None:
        self.venue = venue = stream_venue(options.protocol, options.adapter)
        #: What the venue's folder builds: the book keeper, the connections, the normalisers.
        self.parts = venue.stream_parts()
        self.options = options
        self.metrics = metrics
        self._endpoint = endpoint
        self.symbols = [venue.check_symbol(s) for s in normalize_markets(options.symbols)]
        self.channels = [validate_channel(c, venue.channels) for c in dict.fromkeys(options.channels)]
        #: Called with every ``markPrice`` event (mark, index, funding rate, next funding time):
        #: where a funding store plugs in. None: the events only go to Redis.
        self._on_mark_price = on_mark_price
        if not self.symbols or not self.channels:
            raise UsageError("stream at least one symbol and one channel")
        self.writer = RedisWriter(
            endpoint,
            metrics,
            batch_size=options.batch_size,
            batch_interval_s=options.batch_interval_s,
            buffer_max=options.buffer_max,
            gaps_key=gaps_key(options.prefix, options.exchange),
            stream_maxlen=options.stream_maxlen,
            max_batch=options.max_batch,
            lease=options.lease,
        )
        self.rest = BinanceRest(
            options.rest_url,
            options.rest_timeout_s,
            api=venue.rest_api,
            background_weight_per_min=options.repair_weight_per_min,
        )
        sources = venue.trade_sources(self.rest) if venue.trade_sources is not None else ()
        #: Closed candles over REST: the venue's own client (OKX's ``history-candles``) or this one.
        self.kline_rest: BinanceRest | Any = (
            venue.kline_rest(self.rest) if venue.kline_rest is not None else self.rest
        )
        self.repairer = TradeRepairer(sources, self.writer, metrics, options.repair_max_ids)
        #: Repair mode ``hold``: the held live streams, in front of the writer.
        self.holds: LiveHold | None = None
        if options.repair_mode == "hold":
            self.holds = LiveHold(self.writer, metrics, options.repair_hold_max, options.repair_hold_max_s)
        elif options.repair_mode != "companion":
            raise UsageError(f"streaming.repair_mode must be one of {', '.join(REPAIR_MODES)}")
        self.writer.on_server_restart = self._on_redis_restart
        self._refill: asyncio.Task[None] | None = None
        self._restart_again = False
        #: XADD head -> the newest entry confirmed before a Redis restart, still to be checked.
        self._restart_tops: dict[bytes, str] = {}
        #: Streamed (and repaired) trades into the trades table (:mod:`.trades_store`).
        self.trades = trade_store
        if trade_store is not None:
            self.repairer.on_trade = trade_store.submit
            self.repairer.on_trade_channel = venue.stored_trades or ""  # the channel the table takes
        #: ``id(route)`` -> the companion stream's (XADD head, SET head) for repaired trades.
        self._repair_heads: dict[int, tuple[bytes, bytes]] = {}
        self.books: BookKeeper | None = None
        if "depth" in self.channels:
            book_args: dict[str, Any] = {
                "metrics": metrics,
                "publish": self.writer.publish_book,
                "prefix": options.prefix,
                "exchange": options.exchange,
                "depth": options.book_depth,
                "publish_interval_ms": options.book_publish_interval_ms,
                "on_break": self._on_book_break,
            }
            self.books = self.parts.books(self, book_args)
        self.candles = candle_sink
        #: Stores each settled funding rate (perpetuals with a markPrice channel and a store).
        self.funding: FundingWatcher | None = None
        if candle_sink is not None and options.store_funding:
            self.funding = FundingWatcher(self.rest, candle_sink, metrics)
        self._last_closed_open: dict[tuple[str, str], int] = {}
        #: ``id(route)`` -> the open of the first candle a (re)connect's kline repair left to the
        #: live feed: the first live candle must open there, or the candles between are fetched.
        self._kline_seams: dict[int, int] = {}
        self._seam_fills: set[asyncio.Task[None]] = set()
        #: Whether what Redis held at start has been read (once, before the first connection reads).
        self._loaded = False
        self._load_lock = asyncio.Lock()
        #: ``id(route)`` -> why its pending gap opened ("restart" or "reconnect").
        self._gap_reason: dict[int, str] = {}
        #: Streams whose stored past Redis could not tell at start, and their first new
        #: ``(entry id, event time)`` once seen.
        self._unresolved: dict[int, Route] = {}
        self._unresolved_first: dict[int, tuple[str, int]] = {}
        self._resolver: asyncio.Task[None] | None = None
        self.connections = self._build_connections()
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._heartbeat: Any = None
        self._heartbeat_client: Any = None
        self._heartbeat_task: asyncio.Task[Any] | None = None
        self._closed = False

    def route(self, symbol: str, channel: str) -> Route:
        opts = self.options
        skey = stream_key(opts.prefix, opts.exchange, channel, symbol)
        on_event: Callable[[Event], None] | None = None
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
        elif channel.startswith("markPrice"):
            on_event = self._mark_price_hook()
        elif channel == self.venue.stored_trades and self.trades is not None:
            trades = self.trades

            def on_trade(event: Event) -> None:
                trades.submit(symbol, event)

            on_event = on_trade
        head = xadd_prefix(skey, opts.stream_maxlen)
        self.writer.register_stream(head, StreamName(skey, channel, symbol))
        repair_heads = None
        # Klines get one too where the venue repairs them over REST: refilled after a Redis
        # restart, older than the live top.
        refilled_klines = self.venue.repairs_klines
        repairable = channel in self.repairer.channels or (channel.startswith("kline_") and refilled_klines)
        if repairable and opts.repair_max_ids > 0 and self.venue.repairs_trades:
            rkey = stream_key(opts.prefix, opts.exchange, channel + REPAIR_SUFFIX, symbol)
            rhead = xadd_prefix(rkey, opts.stream_maxlen)
            self.writer.register_stream(rhead, StreamName(rkey, channel + REPAIR_SUFFIX, symbol))
            repair_heads = (
                rhead,
                set_prefix(latest_key(opts.prefix, opts.exchange, channel + REPAIR_SUFFIX, symbol)),
            )
            if self.holds is not None:  # repaired entries written into the live stream itself
                self.writer.register_stream(
                    repaired_head(head), StreamName(skey, channel, symbol), repaired=True
                )
        route = Route(
            symbol=symbol,
            channel=channel,
            stream_key=skey,
            normalize=self.parts.normalizer(opts.exchange, symbol, channel),
            xadd_head=head,
            set_head=set_prefix(latest_key(opts.prefix, opts.exchange, channel, symbol)),
            on_event=on_event,
            # Binance's and OKX's trade ids are contiguous per symbol.
            sequenced=channel in SEQUENCED_CHANNELS and self.venue.sequenced,
        )
        if repair_heads is not None:
            self._repair_heads[id(route)] = repair_heads
        return route

    def _mark_price_hook(self) -> Callable[[Event], None] | None:
        """The funding watcher, then the caller's ``on_mark_price``, on every ``markPrice`` event."""
        watcher = self.funding.on_mark_price if self.funding is not None else None
        caller = self._on_mark_price
        if watcher is None or caller is None:
            return watcher or caller

        def both(event: Event) -> None:
            watcher(event)
            caller(event)

        return both

    def _build_connections(self) -> list[Feed]:
        hooks: dict[str, Any] = {
            "submit": self.writer.submit if self.holds is None else self.holds.submit,
            "metrics": self.metrics,
            "settings": self.options.connection,
            "on_connect": self._on_connect,
            "on_disconnect": self._on_disconnect,
            "on_resume": self._on_resume,
        }
        return self.parts.connections(self, hooks)

    async def start(self) -> None:
        """Start the writer, the candle sink and every connection (returns at once)."""
        loop = asyncio.get_running_loop()
        self._writer_task = loop.create_task(self.writer.run(), name="redis-writer")
        if self.candles is not None:
            self.candles.start()
        if self.trades is not None:
            self.trades.start()
        for conn in self.connections:
            self._tasks.append(loop.create_task(conn.run(), name=conn.name))
        if self.options.heartbeat_ttl_s is not None:
            self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        """``<prefix>:heartbeat:streamer:<instance>``, refreshed in its own task: every Redis call in it is
        bounded by the socket timeout and a failed beat is only logged, so streaming never waits
        for it (Redis down at start: the beats resume when it is back)."""
        from data_collector.heartbeat import Heartbeat  # only a streamer that keeps a heartbeat needs it

        ttl = self.options.heartbeat_ttl_s
        assert ttl is not None
        metrics = self.metrics
        self._heartbeat_client = self._endpoint.async_client()
        self._heartbeat = Heartbeat(
            self._heartbeat_client,
            self.options.prefix,
            "streamer",
            ttl_s=ttl,
            monitor=_Activity(self),
            instance=self.options.instance,
            extra=lambda: {
                # The venue label: the health check trusts only its own venue's streamer.
                "exchange": self.options.exchange,
                "symbols": len(self.symbols),
                "channels": self.channels,
                "written": metrics.written,
                "dropped": metrics.dropped,
                "gaps": metrics.gaps,
                "reconnects": metrics.reconnects,
                "queue_depth": self.writer.queue_depth,
            },
        )
        self._heartbeat_task = asyncio.get_running_loop().create_task(
            self._heartbeat.start(), name="heartbeat:streamer"
        )

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.connections) and self.writer.connected

    @property
    def last_message_ms(self) -> int | None:
        """Wall-clock ms of the newest message any connection received (None: none yet)."""
        return max((c.last_rx_ms for c in self.connections), default=0) or None

    def _on_closed_kline(self, symbol: str, timeframe: str, event: Event) -> None:
        key = (symbol, timeframe)
        if event["open_ms"] > self._last_closed_open.get(key, 0):
            self._last_closed_open[key] = event["open_ms"]
        if self.candles is not None and self.options.store_klines:
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

    def _on_book_break(self, symbol: str, from_ms: int, to_ms: int) -> None:
        """A depth diff was lost (the chain broke): the depth stream lacks it between these times."""
        opts = self.options
        skey = stream_key(opts.prefix, opts.exchange, "depth", symbol)
        self.writer.submit_gap(GapMarker(skey, "depth", symbol, from_ms, to_ms, "book"))

    def _on_disconnect(self, conn: Feed) -> None:
        if self.books is None:
            return
        for symbol in {r.symbol for r in conn.routes.values() if r.channel == "depth"}:
            self.books.invalidate(symbol, resync=not self._closed)

    async def _newest_entries(self, ranges: list[tuple[str, str]]) -> list[Any]:
        """``XREVRANGE <key> <max> - COUNT 1`` for each ``(key, max)``, in one round trip.

        Raises:
            ServerUnavailableError, TimeoutError, ConnectionError, OSError: Redis cannot be read
                (bounded by its connect and socket timeouts).
        """
        return await self._round_trip([pack("XREVRANGE", key, top, "-", "COUNT", 1) for key, top in ranges])

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        """The replies to ``commands``, sent in one write on a connection of its own (bounded by
        the Redis timeouts)."""
        endpoint = self._endpoint
        async with asyncio.timeout(endpoint.connect_timeout_s + 2 * endpoint.socket_timeout_s):
            conn = await endpoint.connect()
            try:
                return list(await conn.execute(b"".join(commands), len(commands)))
            finally:
                await conn.close()

    @staticmethod
    def _entry_event(reply: Any) -> dict[str, Any] | None:
        """The event of the one entry of an XREVRANGE reply, if there is one written by us."""
        try:
            fields = reply[0][1]
            event = msgpack.unpackb(dict(zip(fields[::2], fields[1::2], strict=False))[b"d"])
        except Exception:  # no entry, or an entry not written by us
            return None
        return event if isinstance(event, dict) else None

    @staticmethod
    def _entry_time(reply: Any) -> tuple[str, int] | None:
        """``(entry id, event time)`` of the one entry of an XREVRANGE reply, if any."""
        if not isinstance(reply, list) or not reply:
            return None
        entry_id = reply[0][0].decode()
        event_ms = int(entry_id.partition("-")[0])
        event = StreamService._entry_event(reply)
        with contextlib.suppress(Exception):  # an entry not written by us: its id's time will do
            event_ms = int(event["event_ms"])  # type: ignore[index]
        return entry_id, event_ms

    def _note_gap_top(self, reply: Any) -> None:
        found = self._entry_time(reply)
        if found is not None:
            self.writer.note_gap_id(found[0])

    async def _load_stored(self, routes: list[Route]) -> bool:
        """Learn what Redis already holds for ``routes`` (a restarted streamer's starting point).

        For each stream, the newest entry's event time becomes ``route.last_ms`` (so the first
        new event closes a gap over the downtime and whatever a killed process had not written);
        for klines, the newest closed candle seeds the REST repair; the gaps stream's top id keeps
        new marker ids increasing. Bounded by the Redis timeouts. False when Redis cannot be read:
        the streams then start without a known past, and :meth:`_resolve_restart_gaps` finds it
        later (the newest entry before each stream's first new one).
        """
        opts = self.options
        gkey = gaps_key(opts.prefix, opts.exchange)
        try:
            replies = await self._newest_entries([(r.stream_key, "+") for r in routes] + [(gkey, "+")])
        except (CollectorError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("cannot read what Redis holds (%s); the restart's gap is marked once it can be", exc)
            return False
        for route, reply in zip(routes, replies, strict=False):
            found = self._entry_time(reply)
            if found is None:
                continue
            entry_id, event_ms = found
            route.last_ms = max(route.last_ms, event_ms)
            if route.sequenced:  # a restart after SIGKILL goes on from the newest stored id
                route.last_seq = max(route.last_seq, self._stored_seq(reply))
            if self.funding is not None and route.channel.startswith("markPrice"):
                # The next funding time the previous run saw: a settlement since is fetched.
                self.funding.seed(route.symbol, self._entry_event(reply))
            if route.channel.startswith("kline_"):
                timeframe = route.channel[6:]
                open_ms = int(entry_id.partition("-")[0])
                if entry_id != kline_entry_id(open_ms, timeframe, open_ms, True):
                    open_ms = candle_open_ms(open_ms - 1, timeframe)  # the candle before the forming one
                key = (route.symbol, timeframe)
                self._last_closed_open[key] = max(self._last_closed_open.get(key, 0), open_ms)
        self._note_gap_top(replies[-1])
        await self._resume_open_repairs(routes)
        return True

    async def _resume_open_repairs(self, routes: list[Route]) -> None:
        """Queue again the trade gaps a previous process marked and had not repaired yet (it was
        killed with its repair queue): the newest ``OPEN_GAPS_READ`` markers are read, and each
        ``first_seq``..``last_seq`` with no ``repaired`` marker of the same bounds is a job, oldest
        id first (a page it had already written is refused as a duplicate, not written twice).
        Kline seams (``late_subscription`` markers) with no ``repaired`` marker of the same bounds
        are fetched again the same way."""
        by_key = {r.stream_key: r for r in routes if id(r) in self._repair_heads and r.sequenced}
        klines = {
            r.stream_key: r for r in routes if id(r) in self._repair_heads and r.channel.startswith("kline_")
        }
        if not by_key and not klines:
            return
        gkey = gaps_key(self.options.prefix, self.options.exchange)
        try:
            (rows,) = await self._round_trip([pack("XREVRANGE", gkey, "+", "-", "COUNT", OPEN_GAPS_READ)])
        except (CollectorError, TimeoutError, ConnectionError, OSError) as exc:
            log.warning("cannot read the open trade gaps (%s); they stay marked", exc)
            return
        opened: dict[tuple[str, int, int], tuple[int, int]] = {}
        closed: set[tuple[str, int, int]] = set()
        seams: set[tuple[str, int, int]] = set()
        filled: set[tuple[str, int, int]] = set()
        for _entry_id, flat in rows or []:
            fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat) - 1, 2)}
            if fields.get("stream") in klines:
                span = (fields["stream"], int(fields["from_ms"]), int(fields["to_ms"]))
                if fields.get("reason") == KLINE_SEAM:
                    seams.add(span)
                elif fields.get("reason") == "repaired":
                    filled.add(span)
                continue
            if fields.get("stream") not in by_key or "first_seq" not in fields:
                continue
            bounds = (fields["stream"], int(fields["first_seq"]), int(fields["last_seq"]))
            if fields.get("reason") == "repaired":
                closed.add(bounds)
            else:
                opened[bounds] = (int(fields["from_ms"]), int(fields["to_ms"]))
        for bounds in sorted(set(opened) - closed, key=lambda b: b[1]):
            route = by_key[bounds[0]]
            job = RepairJob(route, bounds[1], bounds[2], *opened[bounds], *self._repair_heads[id(route)])
            self.repairer.submit(job)
        if set(opened) - closed:
            log.info("%d trade gaps a previous run left open queued for repair", len(set(opened) - closed))
        for key, due_open, first_open in sorted(seams - filled, key=lambda b: b[1]):
            self._fill_kline_seam(klines[key], due_open, first_open, "a previous run left unfilled")
        if seams - filled:
            log.info("%d kline seams a previous run left open queued for refill", len(seams - filled))

    async def _on_connect(self, conn: Feed) -> None:
        """Every (re)connect: mark the streams with a known past, repair their closed klines."""
        routes = conn.unique_routes()
        async with self._load_lock:
            if not self._loaded:
                self._loaded = True
                every = [r for c in self.connections for r in c.unique_routes()]
                if not await self._load_stored(every):
                    self._unresolved = {id(r): r for r in every}
        reason = "reconnect" if conn.connects > 1 else "restart"
        for route in routes:
            # A stream whose past Redis could not tell at start still needs its first event.
            unknown = id(route) in self._unresolved and id(route) not in self._unresolved_first
            route.gap_pending = route.last_ms > 0 or unknown
            if route.last_ms > 0 and id(route) not in self._gap_reason:
                self._gap_reason[id(route)] = reason
        kline_routes = [r for r in routes if r.last_ms > 0 and r.channel.startswith("kline_")]
        # Venues that allow it (Binance, OKX) repair klines by REST; the others leave the gap marker.
        if kline_routes and self.venue.repairs_klines:
            await self._repair_klines(kline_routes)
            for route in kline_routes:
                if id(route) in self._repair_heads:
                    timeframe = route.channel[6:]
                    last = self._last_closed_open.get((route.symbol, timeframe))
                    due = next_open_ms(last, timeframe) if last else candle_open_ms(route.last_ms, timeframe)
                    self._kline_seams[id(route)] = due

    @classmethod
    def _stored_seq(cls, reply: Any) -> int:
        """The trade id of the one entry of an XREVRANGE reply (-1: none, or not a trade of ours)."""
        event = cls._entry_event(reply)
        seq = event.get("id") if event is not None else None
        return seq if type(seq) is int else -1

    def _on_resume(self, route: Route, entry_id: str, event: Event) -> None:
        """The first event of a stream after a (re)connect or a restart, or after a skipped id
        (trades): record the gap before it."""
        from_ms, to_ms = route.last_ms, int(event["event_ms"])
        seam = self._kline_seams.pop(id(route), None)
        if seam is not None:
            self._check_kline_seam(route, seam, int(event["open_ms"]))
        if id(route) in self._unresolved and id(route) not in self._unresolved_first:
            self._unresolved_first[id(route)] = (entry_id, to_ms)
            if self._resolver is None:
                self._resolver = asyncio.get_running_loop().create_task(
                    self._resolve_restart_gaps(), name="restart-gaps"
                )
            if from_ms == 0:
                return
        if route.sequenced and route.last_seq >= 0:
            # Contiguous ids: the gap is exactly the ids between the last stored and this one.
            reason = self._gap_reason.pop(id(route), "sequence")
            self._write_seq_gap(route, route.last_seq, int(event["id"]), from_ms, to_ms, reason)
            return
        if to_ms <= from_ms:
            self._gap_reason.pop(id(route), None)
            return
        self._write_gap(route, from_ms, to_ms, self._gap_reason.pop(id(route), "reconnect"))

    def _write_gap(self, route: Route, from_ms: int, to_ms: int, reason: str) -> None:
        self.writer.submit_gap(
            GapMarker(route.stream_key, route.channel, route.symbol, from_ms, to_ms, reason)
        )

    def _write_seq_gap(
        self,
        route: Route,
        last_seq: int,
        next_seq: int,
        from_ms: int,
        to_ms: int,
        reason: str,
        first: bool = False,
    ) -> None:
        """Mark the trade ids strictly between ``last_seq`` and ``next_seq`` missing (none: no marker)."""
        if next_seq <= last_seq + 1:
            return
        from_ms = min(from_ms, to_ms)
        self.writer.submit_gap(
            GapMarker(
                route.stream_key,
                route.channel,
                route.symbol,
                from_ms,
                to_ms,
                reason,
                count=next_seq - last_seq - 1,
                first_seq=last_seq + 1,
                last_seq=next_seq - 1,
            )
        )
        heads = self._repair_heads.get(id(route))
        if heads is not None and not self._closed:
            hold = None
            if (
                self.holds is not None
                and not first
                and route.sequenced
                and route.channel in self.repairer.channels
            ):
                # The "latest" key stays the live one's: repaired entries SET the companion's.
                hold = self.holds.start(route, last_seq + 1, next_seq - 1, heads[1])
            job = RepairJob(route, last_seq + 1, next_seq - 1, from_ms, to_ms, *heads, hold=hold)
            queued = self.repairer.submit(job, first=first)
            if not queued and hold is not None:
                hold.fall_back("not queued for repair")
            # The trades table holds the venue's stored channel: only its repair is its business.
            if queued and self.trades is not None and route.channel == self.venue.stored_trades:
                self.trades.expect_repair(route.symbol, last_seq + 1, next_seq - 1, from_ms, to_ms)

    async def _resolve_restart_gaps(self) -> None:
        """Redis was unreadable at start: once it answers, the newest entry before each stream's
        first new one is what the previous process left, and the gap runs from it."""
        gkey = gaps_key(self.options.prefix, self.options.exchange)
        while self._unresolved:
            await asyncio.sleep(RESOLVE_INTERVAL_S)
            ready = [(rid, first) for rid, first in self._unresolved_first.items() if rid in self._unresolved]
            if not ready:
                continue
            ranges = [(self._unresolved[rid].stream_key, f"({entry_id}") for rid, (entry_id, _) in ready]
            try:
                replies = await self._newest_entries([*ranges, (gkey, "+")])
            except (CollectorError, TimeoutError, ConnectionError, OSError):
                continue
            self._note_gap_top(replies[-1])
            for (rid, (first_id, to_ms)), reply in zip(ready, replies, strict=False):
                route = self._unresolved.pop(rid)
                found = self._entry_time(reply)
                stored_seq = self._stored_seq(reply) if route.sequenced else -1
                if found is not None and stored_seq >= 0:
                    next_seq = int(first_id.partition("-")[2])
                    self._write_seq_gap(route, stored_seq, next_seq, found[1], to_ms, "restart")
                elif found is not None and to_ms > found[1]:
                    self._write_gap(route, found[1], to_ms, "restart")
            log.info("restart gaps marked for %d streams after Redis became readable", len(ready))

    def _on_redis_restart(self, tops: dict[bytes, str]) -> None:
        """Redis answered with a new run id: check whether it still holds ``tops`` (each stream's
        newest confirmed entry before), once the writer is idle; a restart during that check has
        it run again."""
        if self._closed:
            return
        self._restart_tops = {**self._restart_tops, **tops}
        if self._refill is not None and not self._refill.done():
            self._restart_again = True
            return
        self._restart_again = False
        self._refill = asyncio.get_running_loop().create_task(
            self._after_redis_restart(), name="redis-refill"
        )

    async def _after_redis_restart(self) -> None:
        """A stream that no longer holds its newest entry from before the restart lost data (a
        restart without persistence, or since its last save): mark the hole, from the newest entry
        older than that one (0: none left) to the oldest newer one, and refill it over REST on
        trade streams (at most the last ``stream_maxlen`` ids, the retention the config gives:
        the background repair) and closed klines. A server that kept its data gets no marker."""
        while True:
            refills = await self._mark_after_restart()
            if refills is None:  # Redis unreadable: try again (its loss is unmarked until then)
                await asyncio.sleep(RESOLVE_INTERVAL_S)
                continue
            for route, after_ms, before_ms in refills:
                await self._refill_klines(route, after_ms, before_ms)
            if not self._restart_again:
                return
            self._restart_again = False

    async def _mark_after_restart(self) -> list[tuple[Route, int, int]] | None:
        """Mark what each stream lost and queue the trade refills; the kline refills to do
        ``(route, after open ms, before open ms)``, or ``None`` when Redis cannot be read."""
        writer = self.writer
        # Trade repairs stop: the refill goes first, and each companion stream takes ids in order.
        await self.repairer.pause()
        try:
            for _ in range(100):  # what the writer was holding lands first (bounded: 5 s)
                if writer.queue_depth == 0 and writer.connected:
                    break
                await asyncio.sleep(0.05)
            tops = self._restart_tops
            routes = [r for c in self.connections for r in c.unique_routes() if r.xadd_head in tops]
            commands = []
            for route in routes:
                top = tops[route.xadd_head]
                commands += [
                    pack("XRANGE", route.stream_key, top, top),
                    pack("XREVRANGE", route.stream_key, f"({top}", "-", "COUNT", 1),
                    pack("XRANGE", route.stream_key, f"({top}", "+", "COUNT", 1),
                ]
            try:
                replies = await self._round_trip(commands) if commands else []
                lost = [
                    (route, replies[3 * k + 1], replies[3 * k + 2])
                    for k, route in enumerate(routes)
                    if not replies[3 * k]  # its newest confirmed entry is gone
                ]
                # What a paused repair wrote since the restart is refilled again: those start empty.
                repair_keys = [
                    self._repair_key(r) for r, _, _ in lost if r.sequenced and id(r) in self._repair_heads
                ]
                if repair_keys:
                    await self._round_trip([pack("DEL", *repair_keys)])
            except (CollectorError, TimeoutError, ConnectionError, OSError) as exc:
                log.warning("cannot read Redis after its restart (%s); retrying", exc)
                return None
            self._restart_tops = {}
            return self._mark_redis_loss(lost)
        finally:
            self.repairer.resume()

    def _repair_key(self, route: Route) -> str:
        opts = self.options
        return stream_key(opts.prefix, opts.exchange, route.channel + REPAIR_SUFFIX, route.symbol)

    def _mark_redis_loss(self, lost: list[tuple[Route, Any, Any]]) -> list[tuple[Route, int, int]]:
        """A ``redis_restart`` marker per stream that lost data (``before``/``after``: the XRANGE
        replies of the entries either side of the hole), its trade refill queued first; the kline
        streams to refill."""
        retention = self.options.stream_maxlen
        refills: list[tuple[Route, int, int]] = []
        for route, before, after in lost:
            found_before, found_after = self._entry_time(before), self._entry_time(after)
            from_ms = found_before[1] if found_before is not None else 0
            to_ms = found_after[1] if found_after is not None else route.last_ms
            if route.channel.startswith("kline_") and id(route) in self._repair_heads:
                timeframe = route.channel[6:]
                last_open = int(found_before[0].partition("-")[0]) if found_before is not None else -1
                first_open = (
                    int(found_after[0].partition("-")[0]) if found_after is not None else route.last_ms
                )
                refills.append((route, last_open, candle_open_ms(first_open, timeframe)))
            if route.sequenced:
                stored_after = self._stored_seq(after)
                next_seq = stored_after if stored_after >= 0 else route.last_seq + 1
                stored_before = self._stored_seq(before)
                last_seq = max(stored_before, next_seq - retention - 1, -1)
                self.repairer.drop_below(route.stream_key, next_seq)  # the refill covers them
                self._write_seq_gap(route, last_seq, next_seq, from_ms, to_ms, "redis_restart", first=True)
            else:
                self._write_gap(route, from_ms, to_ms, "redis_restart")
        if lost:
            log.warning("Redis lost data in a restart: %d streams marked", len(lost))
        return refills

    async def _refill_klines(
        self, route: Route, after_open_ms: int, before_ms: int, why: str = "after a Redis restart"
    ) -> None:
        """The closed candles opening after ``after_open_ms`` (-1: the last ``stream_maxlen``, the
        retention) and before ``before_ms``, fetched over REST (in the background, a page of 1,000
        at a time, each handed to the writer only while it is nearly idle: memory stays one page)
        into the kline stream's companion ``@repair`` stream, then a ``repaired`` marker; a
        failure leaves the ``redis_restart`` marker as the record."""
        timeframe = route.channel[6:]
        tf_ms = TIMEFRAME_MS.get(timeframe, 60_000)
        start_ms = max(0, before_ms - self.options.stream_maxlen * tf_ms, after_open_ms + 1)
        heads = self._repair_heads[id(route)]
        written, cursor = 0, start_ms
        while cursor < before_ms:
            end_ms = min(before_ms - 1, cursor + KLINE_PAGE * tf_ms - 1)
            try:
                rows = await self.kline_rest.klines(route.symbol, timeframe, cursor, end_ms, background=True)
            except CollectorError as exc:
                self.metrics.rest_errors += 1
                log.warning("could not refill %s %s klines %s: %s", route.symbol, timeframe, why, exc)
                return
            now = time.time()
            written += self._write_repaired(
                route, rows, before_ms + 1, int(now * 1000), now, heads, cursor - 1
            )
            cursor = end_ms + 1
            depth = self.writer.queue_depth
            if depth > WRITER_IDLE_DEPTH:  # low priority, as the trade repair: live entries first
                await asyncio.sleep(min(0.5, depth * 1e-5))
        marker = GapMarker(
            route.stream_key,
            route.channel,
            route.symbol,
            start_ms,
            before_ms,
            "repaired",
            count=written,
            repaired=written,
        )
        self.writer.submit_gap(marker)

    def _check_kline_seam(self, route: Route, due_open: int, first_open: int) -> None:
        """The first live candle after a (re)connect opens at ``first_open``; the repair before it
        left the candles from ``due_open`` on to the live feed. Candles between the two closed
        after the repair's cutoff but before the venue began sending: when a subscription takes
        effect only after the connection opened (OKX's ``op: subscribe``), a candle can close in
        between, and neither the repair nor the live feed carries it. Fetch them into the
        companion stream (they are older than the live top)."""
        if due_open <= 0 or first_open <= due_open or self._closed:
            return
        # Marked first, in the same write as the live candle that revealed it (markers go first):
        # a process killed before its refill lands leaves the seam open, and the next one fills
        # it (:meth:`_resume_open_repairs`); the live candle above it would hide it otherwise.
        self.writer.submit_gap(
            GapMarker(route.stream_key, route.channel, route.symbol, due_open, first_open, KLINE_SEAM)
        )
        self._fill_kline_seam(route, due_open, first_open, "after a late subscription")

    def _fill_kline_seam(self, route: Route, due_open: int, first_open: int, why: str) -> None:
        """Fetch the candles opening in ``[due_open, first_open)`` into the companion stream, in
        the background; its ``repaired`` marker has the seam marker's bounds."""
        task = asyncio.get_running_loop().create_task(
            self._refill_klines(route, due_open - 1, first_open, why), name=f"kline-seam:{route.symbol}"
        )
        self._seam_fills.add(task)
        task.add_done_callback(self._seam_fills.discard)

    async def _repair_klines(self, kline_routes: list[Route]) -> None:
        semaphore = asyncio.Semaphore(REPAIR_CONCURRENCY)
        kline_rest = self.kline_rest

        async def fetch(route: Route, cutoff_ms: int) -> list[list[Any]]:
            timeframe = route.channel[6:]
            last = self._last_closed_open.get((route.symbol, timeframe))
            start = next_open_ms(last, timeframe) if last else candle_open_ms(route.last_ms, timeframe)
            async with semaphore:
                try:
                    return await kline_rest.klines(route.symbol, timeframe, start, cutoff_ms)
                except CollectorError as exc:
                    self.metrics.rest_errors += 1
                    log.warning("could not repair %s %s klines after a gap: %s", route.symbol, timeframe, exc)
                    return []

        # Candles count as closed by the exchange's clock, which may differ from ours. One that
        # closes after the new connection opened may also arrive on it: it has the same entry id
        # and is then rejected by Redis as a duplicate.
        # Frames wait unread meanwhile, so the repair is bounded; what it misses stays marked in
        # the gaps stream for the backfill.
        # A live close can land while REST answers (a minute boundary during the repair): the
        # candles it overtook are older than the live stream's top, which Redis refuses, so they
        # go to the kline's companion stream, which the reader merges.
        seen = {id(r): self._last_closed_open.get((r.symbol, r.channel[6:]), 0) for r in kline_routes}
        try:
            async with asyncio.timeout(REPAIR_TIMEOUT_S):
                try:
                    cutoff_ms = await kline_rest.server_time()
                except CollectorError:
                    cutoff_ms = int(time.time() * 1000)
                results = await asyncio.gather(*(fetch(r, cutoff_ms) for r in kline_routes))
        except TimeoutError:
            self.metrics.rest_errors += 1
            log.warning("kline repair after a gap took over %.0f s; left to the backfill", REPAIR_TIMEOUT_S)
            return
        now = time.time()
        recv_ms = int(now * 1000)
        for route, rows in zip(kline_routes, results, strict=True):
            live_last = self._last_closed_open.get((route.symbol, route.channel[6:]), 0)
            heads = self._repair_heads.get(id(route))
            if live_last > seen[id(route)] and heads is not None:
                overtaken = [row for row in rows if _opens_before(row, live_last)]
                self._write_repaired(route, overtaken, cutoff_ms, recv_ms, now, heads, seen[id(route)])
            self._write_repaired(route, rows, cutoff_ms, recv_ms, now)

    def _write_repaired(
        self,
        route: Route,
        rows: list[list[Any]],
        to_ms: int,
        recv_ms: int,
        now: float,
        heads: tuple[bytes, bytes] | None = None,
        after_open_ms: int | None = None,
    ) -> int:
        """Write the closed candles of ``rows`` that close before ``to_ms`` and open after
        ``after_open_ms`` (default: the newest closed one seen) to ``heads`` (default: the live
        stream); how many."""
        timeframe = route.channel[6:]
        last = (
            self._last_closed_open.get((route.symbol, timeframe), 0)
            if after_open_ms is None
            else after_open_ms
        )
        xadd_head, set_head = heads or (route.xadd_head, route.set_head)
        written = 0
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
            self.writer.submit((xadd_head, set_head, entry_id, msgpack.packb(event), recv_ms, now))
            self.metrics.repaired_klines += 1
            written += 1
            self._on_closed_kline(route.symbol, timeframe, event)
        return written

    def order_book(self, symbol: str) -> dict[str, Any] | None:
        """The full local book of ``symbol`` while in sync, else ``None``."""
        if self.books is None:
            return None
        return self.books.snapshot(symbol)

    async def _stop_heartbeat(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._heartbeat is not None:
            # A clean stop removes the key (bounded by the socket timeout when Redis is down).
            await self._heartbeat.close()
        if self._heartbeat_client is not None:
            with contextlib.suppress(Exception):
                await self._heartbeat_client.aclose()
        self._heartbeat = self._heartbeat_client = self._heartbeat_task = None

    async def close(self) -> None:
        """Stop the connections, flush Redis (bounded), close everything; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in (self._resolver, self._refill, *self._seam_fills):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._stop_heartbeat()
        for conn in self.connections:
            await conn.close()
        await self.repairer.close()  # what is still queued stays marked as a gap
        if self.holds is not None:
            self.holds.close()  # held live entries go on before the writer's last flush
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.books is not None:
            await self.books.close()
        await self.writer.close(self._writer_task, self.options.close_timeout_s)
        if self.funding is not None:
            await self.funding.close()
        if self.trades is not None:  # before the candle sink, which owns the store
            await self.trades.close()
        if self.candles is not None:
            await self.candles.close()
        await self.rest.close()
