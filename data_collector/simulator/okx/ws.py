"""OKX v5 public WebSocket: ``/ws/v5/public`` (trades, tickers, bbo-tbt, books, books5) and
``/ws/v5/business`` (``candle1m``, ``candle1H``, ``candle1Dutc``, ...).

Protocol as OKX documents it: ``{"op": "subscribe", "args": [{"channel", "instId"}]}`` is acked
with ``{"event": "subscribe", "arg": ..., "connId": ...}`` per argument; errors are
``{"event": "error", "code": "60012"|"60018", ...}``; text ``ping`` gets text ``pong``; a connection
with no traffic either way for ``idle_timeout_s`` (OKX: 30 s) is closed. ``books`` sends a 400-level
snapshot, then updates with ``prevSeqId`` (the ``seqId`` before) and the CRC32 ``checksum`` of the
best 25 levels after the update.

Each connection has a bounded outgoing queue and one writer task, which writes whatever has queued
as one batch of frames. The market does not wait for its clients: a stall holds the writers (the
frames queue, as in the server's send buffer) and a connection whose backlog (queued plus its
socket's send buffer) passes :data:`~data_collector.simulator.streams.MAX_BACKLOG` bytes is
disconnected, as a slow consumer. One pump tick (``tick_s``, 100 ms) builds every message once for
all, the channels in an order that varies from tick to tick. With ``ws_rate`` > 0, ``trades``
carries the venue's tape (:class:`RateTape`, Binance's ``trade`` tape model: ``ws_rate`` trades a
second per instrument, ids a function of the time, listened to or not, the same trades REST
serves) instead of the model's trades, one trade a message; ``trades_sent`` counts what each instrument's went out, ``skip_trade_id`` loses frames
(the trades stay on the tape and REST).

Long because the pump builds every channel from one per-instrument state (book sequence, trade
cursor, candle and ticker clocks, faults) that the connections share.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from data_collector.markets import HOUR_MS, MINUTE_MS
from data_collector.simulator.okx.formats import TIMEFRAME_OF_BAR, checksum, num
from data_collector.simulator.okx.venue import Instrument
from data_collector.simulator.streams import MAX_BACKLOG, frame, prefetch_tapes

if TYPE_CHECKING:
    from data_collector.simulator.okx.server import OkxServer

log = logging.getLogger(__name__)

PUBLIC_CHANNELS = ("trades", "tickers", "bbo-tbt", "books", "books5")
#: Messages a connection may have queued before it is dropped as a slow consumer.
QUEUE_MAX = 100_000
#: Levels of a ``books`` snapshot.
SNAPSHOT_LEVELS = 400
_CANDLE_PUSH_MS = 500
_TICKER_PUSH_MS = 1000


@dataclass(eq=False)
class OkxConnection:
    """One client socket: its subscriptions, queue and last traffic."""

    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    business: bool
    conn_id: str
    #: A text message, or frames already built (a tick's batch).
    queue: asyncio.Queue[str | bytes] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    subs: set[tuple[str, str]] = field(default_factory=set)
    last_traffic: float = 0.0
    #: Bytes in ``queue`` (written out at the tick's end or by the writer, held during a stall).
    queued: int = 0
    #: The writer holds a batch through a stall (the tick leaves the queue to it meanwhile).
    holding: bool = False
    #: instId -> the first tape trade id this connection's ``trades`` subscription may get
    #: (the tape's count when it subscribed: what traded before was not for it).
    trade_from: dict[str, int] = field(default_factory=dict)

    def send(self, text: str | bytes) -> bool:
        """Queue ``text``; False if the queue is full or the backlog passes :data:`MAX_BACKLOG`
        (the caller drops the connection: a slow consumer)."""
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        self.queued += len(text)
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0  # type: ignore[attr-defined]
        return self.queued + buffered <= MAX_BACKLOG


class OkxHub:
    """Every OKX WebSocket connection of one server, and the pump that feeds them."""

    def __init__(self, server: OkxServer, idle_timeout_s: float = 30.0, tick_s: float = 0.1) -> None:
        self.server = server
        self.venue = server.venue
        self.idle_timeout_s = idle_timeout_s
        self.tick_s = tick_s
        self.connections: set[OkxConnection] = set()
        self.sent: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._stalled_until = 0.0
        self._skip: Counter[str] = Counter()
        self._corrupt: Counter[str] = Counter()
        #: instId -> ``trades`` frames still to lose (the trades stay on the tape and REST).
        self._skip_trades: Counter[str] = Counter()
        #: ``(connection, request text)`` of the subscribe requests held (:meth:`hold_subscribes`).
        self.held_subscribes: list[tuple[OkxConnection, str]] | None = None
        #: Connections dropped because their backlog passed MAX_BACKLOG.
        self.dropped_for_backlog = 0
        #: Per instrument: the seqId of the book state the last snapshot or update described.
        self._last_seq: dict[str, int] = {}
        self._trade_cursor: dict[str, int] = {}
        self._rng = random.Random(server.sim.seed)
        #: The tape trade ids of the last ``trades`` batch built (one per message).
        self._batch_ids: list[int] = []
        self._candles: dict[tuple[str, str], tuple[int, int]] = {}
        self._ticker_ms: dict[str, int] = {}
        #: instId -> the book's update id the last ``bbo-tbt`` push described.
        self._bbo_seq: dict[str, int] = {}
        #: instId -> ``[count, first tradeId, last tradeId]`` of the trades sent.
        self.trades_sent: dict[str, list[int]] = {}

    @property
    def ws_rate(self) -> float:
        """Trades a second per instrument on ``trades`` (0: the model's trades); the venue's tape."""
        return self.venue.tape.rate

    @ws_rate.setter
    def ws_rate(self, rate: float) -> None:
        self.venue.tape.set_rate(float(rate), self.venue.clock.now_ms())

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.drop_all()

    # -- faults --------------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Abort every connection without a close frame. Returns how many."""
        conns = list(self.connections)
        for conn in conns:
            self._abort(conn)
        return len(conns)

    def stall(self, seconds: float) -> None:
        """Deliver nothing for ``seconds``: the market goes on, its frames queue on each
        connection (a backlog past MAX_BACKLOG is disconnected) and arrive late."""
        self._stalled_until = asyncio.get_running_loop().time() + seconds

    def malformed(self) -> None:
        """Send one frame that is not valid JSON to every connection."""
        for conn in list(self.connections):
            conn.send('{"arg":{"channel":')

    def skip_seq(self, inst_id: str, count: int = 1) -> None:
        """Lose the next ``count`` book updates of ``inst_id``: the update after them names a
        ``prevSeqId`` the client never saw."""
        self._skip[inst_id] += count

    def skip_trade_id(self, inst_id: str, count: int = 1) -> None:
        """Lose the next ``count`` ``trades`` frames of ``inst_id`` (its ids stay on the tape and
        REST: a client sees an id hole)."""
        self._skip_trades[inst_id] += count

    def hold_subscribes(self) -> None:
        """Take ``subscribe`` requests in but act on them only at :meth:`release_subscribes`, as
        when the venue is slow to process them: the connection is open, nothing is sent yet."""
        if self.held_subscribes is None:
            self.held_subscribes = []

    def release_subscribes(self) -> None:
        """Act on the held ``subscribe`` requests (those of open connections) now, in order."""
        held, self.held_subscribes = self.held_subscribes or [], None
        for conn, text in held:
            if conn in self.connections:
                self._control(conn, text)

    def corrupt_checksum(self, inst_id: str, count: int = 1) -> None:
        """Send the next ``count`` book updates of ``inst_id`` with a wrong checksum."""
        self._corrupt[inst_id] += count

    # -- connections ---------------------------------------------------------------------------

    async def handle(self, request: web.Request, business: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        conn = OkxConnection(
            ws, request.transport, business, "%08x" % next(self._ids), last_traffic=loop.time()
        )
        self.connections.add(conn)
        writer = loop.create_task(self._writer(conn))
        try:
            async for msg in ws:
                conn.last_traffic = loop.time()
                if msg.type == WSMsgType.TEXT:
                    self._control(conn, msg.data)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.connections.discard(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return ws

    async def _writer(self, conn: OkxConnection) -> None:
        """Write what the ticks left queued (control answers between ticks, what came in during a
        stall) as one batch of frames, in order; hold while stalled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                first = await conn.queue.get()
                held = self._stalled_until - loop.time()
                if held > 0:  # a stall: the frames wait (a later stall() is seen on the next batch)
                    conn.holding = True  # the tick's own write must not overtake them
                    try:
                        await asyncio.sleep(held)
                    finally:
                        conn.holding = False
                self._write_queued(conn, first)
        except (ConnectionError, RuntimeError):
            self._abort(conn)

    @staticmethod
    def _write_queued(conn: OkxConnection, first: str | bytes | None = None) -> None:
        """Write ``first`` and everything queued after it as one batch of frames, in order."""
        queue = conn.queue
        items = [] if first is None else [first]
        while not queue.empty() and len(items) < 4096:
            items.append(queue.get_nowait())
        if not items:
            return
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("closed")
        conn.queued -= sum(len(i) for i in items)
        transport.write(  # type: ignore[attr-defined]
            b"".join(frame(i.encode()) if isinstance(i, str) else i for i in items)
        )

    def _abort(self, conn: OkxConnection) -> None:
        self.connections.discard(conn)
        if conn.transport is not None:
            conn.transport.abort()  # type: ignore[attr-defined]

    def _push(self, conn: OkxConnection, text: str | bytes) -> None:
        conn.last_traffic = asyncio.get_running_loop().time()
        if not conn.send(text) and conn in self.connections:
            log.warning("OKX sim: dropping slow connection %s", conn.conn_id)
            self.dropped_for_backlog += 1
            self._abort(conn)

    def _error(self, conn: OkxConnection, code: str, msg: str) -> None:
        self._push(conn, json.dumps({"event": "error", "code": code, "msg": msg, "connId": conn.conn_id}))

    def _control(self, conn: OkxConnection, text: str) -> None:
        if text == "ping":
            self._push(conn, "pong")
            return
        try:
            req = json.loads(text)
            op = req["op"]
            args = req["args"]
            if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
                raise ValueError(op)
        except (ValueError, KeyError, TypeError):
            self._error(conn, "60012", f"Invalid request: {text}")
            return
        if op == "subscribe" and self.held_subscribes is not None:
            self.held_subscribes.append((conn, text))
            return
        for arg in args:
            channel = arg.get("channel") if isinstance(arg, dict) else None
            inst_id = arg.get("instId") if isinstance(arg, dict) else None
            if not self._valid(conn, channel, inst_id):
                self._error(
                    conn,
                    "60018",
                    f"Wrong URL or channel:{channel},instId:{inst_id} doesn't exist. Please use the "
                    "correct URL, channel and parameters referring to API document.",
                )
                continue
            assert isinstance(channel, str) and isinstance(inst_id, str)
            key = (channel, inst_id)
            ack = {"event": op, "arg": {"channel": channel, "instId": inst_id}, "connId": conn.conn_id}
            if op == "unsubscribe":
                conn.subs.discard(key)
                self._push(conn, json.dumps(ack))
                continue
            self._push(conn, json.dumps(ack))
            if channel == "books":  # what changed so far goes to the others: this one starts at a snapshot
                self._flush_book(self.venue.instruments[inst_id], self.venue.clock.now_ms())
            conn.subs.add(key)
            if channel == "trades":
                conn.trade_from[inst_id] = self.venue.tape.count(self.venue.clock.now_ms())
            if channel.startswith("candle"):  # listening from now: the forming candle's close is pushed
                tf = TIMEFRAME_OF_BAR[channel[len("candle") :]]
                now = self.venue.clock.now_ms()
                self._candles.setdefault((inst_id, channel), (self.venue.forming_open(tf, now), 0))
            if channel == "books":
                self._snapshot(conn, self.venue.instruments[inst_id])

    def _valid(self, conn: OkxConnection, channel: Any, inst_id: Any) -> bool:
        if not isinstance(channel, str) or inst_id not in self.venue.instruments:
            return False
        if conn.business:
            return channel.startswith("candle") and channel[len("candle") :] in TIMEFRAME_OF_BAR
        return channel in PUBLIC_CHANNELS

    # -- books ---------------------------------------------------------------------------------

    def _snapshot(self, conn: OkxConnection, inst: Instrument) -> None:
        now = self.venue.clock.now_ms()
        self._flush_book(inst, now)
        bids, asks = self.venue.levels(inst, SNAPSHOT_LEVELS)
        seq = inst.book.update_id
        self._last_seq[inst.inst_id] = seq
        data = {
            "asks": asks,
            "bids": bids,
            "ts": str(now),
            "checksum": checksum([(b[0], b[1]) for b in bids], [(a[0], a[1]) for a in asks]),
            "prevSeqId": -1,
            "seqId": seq,
        }
        msg = {"arg": {"channel": "books", "instId": inst.inst_id}, "action": "snapshot", "data": [data]}
        self._push(conn, json.dumps(msg, separators=(",", ":")))
        self.sent["books"] += 1

    def _flush_book(self, inst: Instrument, now: int) -> None:
        """Step the book and send what changed since the last update to its subscribers."""
        self.venue.advance_book(inst, now)
        book = inst.book
        if not book.pending:
            return
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        while book.pending:
            diff = book.pending.popleft()
            bids.update(diff.bids)
            asks.update(diff.asks)
        subs = [c for c in self.connections if ("books", inst.inst_id) in c.subs]
        prev = self._last_seq.get(inst.inst_id)
        self._last_seq[inst.inst_id] = book.update_id
        if not subs or prev is None:
            return
        if self._skip[inst.inst_id] > 0:
            self._skip[inst.inst_id] -= 1
            return
        pd = inst.market.price_decimals
        top_bids, top_asks = self.venue.levels(inst, 25)
        crc = checksum([(b[0], b[1]) for b in top_bids], [(a[0], a[1]) for a in top_asks])
        if self._corrupt[inst.inst_id] > 0:
            self._corrupt[inst.inst_id] -= 1
            crc ^= 1
        data = {
            "asks": [
                [num(p, pd), inst.size(q), "0", str(1 + q % 7 if q else 0)] for p, q in sorted(asks.items())
            ],
            "bids": [
                [num(p, pd), inst.size(q), "0", str(1 + q % 7 if q else 0)]
                for p, q in sorted(bids.items(), reverse=True)
            ],
            "ts": str(now),
            "checksum": crc,
            "prevSeqId": prev,
            "seqId": book.update_id,
        }
        text = json.dumps(
            {"arg": {"channel": "books", "instId": inst.inst_id}, "action": "update", "data": [data]},
            separators=(",", ":"),
        )
        for conn in subs:
            self._push(conn, text)
        self.sent["books"] += 1

    # -- the pump ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        """Tick every ``tick_s`` on a fixed schedule: a late tick neither delays the ones after it
        nor makes them burst to catch up (a tick's trades count from the last one anyway)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.tick_s
            delay = due - loop.time()
            if delay < 0:
                due, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            try:
                self.tick(loop.time())
            except Exception:  # one bad tick must not end the streams
                log.exception("OKX sim: pump tick failed")

    def tick(self, loop_now: float) -> None:
        """Build everything due now and write it out, one write per connection (as the Binance
        hub does), unless a stall holds delivery."""
        for conn in list(self.connections):
            if loop_now - conn.last_traffic > self.idle_timeout_s:
                self._abort(conn)
        clock = self.venue.clock
        now = clock.now_ms()
        wanted: dict[tuple[str, str], list[OkxConnection]] = {}
        for conn in self.connections:
            for key in conn.subs:
                wanted.setdefault(key, []).append(conn)
        prefetch_tapes((self.venue.instruments[inst_id].market for _, inst_id in wanted), now)
        for inst in self.venue.instruments.values():
            if ("books", inst.inst_id) in wanted:
                self._flush_book(inst, now)
            elif inst.book.pending:
                inst.book.pending.clear()
        for inst_id in [i for i in self._trade_cursor if ("trades", i) not in wanted]:
            del self._trade_cursor[inst_id]  # nobody listens: the next subscriber starts at now
        for inst_id, channel in [k for k in self._candles if (k[1], k[0]) not in wanted]:
            del self._candles[(inst_id, channel)]  # a candle that closed unheard is not replayed
        order = list(wanted.items())
        self._rng.shuffle(order)  # as on the exchange, the channels' order varies from tick to tick
        for (channel, inst_id), conns in order:
            inst = self.venue.instruments[inst_id]
            texts = self._produce(channel, inst, clock.now_ms())  # each stamped as it is built
            if not texts:
                continue
            self.sent[channel] += len(texts)
            batch = b"".join(frame(t.encode()) for t in texts)
            ids = self._batch_ids if channel == "trades" else []
            for conn in conns:
                start = conn.trade_from.get(inst_id, 0)
                if ids and start > ids[0]:  # subscribed after some of these trades
                    late = [t for i, t in zip(ids, texts, strict=True) if i >= start]
                    if late:
                        self._push(conn, b"".join(frame(t.encode()) for t in late))
                    continue
                self._push(conn, batch)
        if loop_now < self._stalled_until:
            return  # a stall: the frames stay queued (the writers hold them)
        for conn in list(self.connections):
            if conn.holding:
                continue
            try:
                self._write_queued(conn)
            except (ConnectionError, RuntimeError):
                self._abort(conn)

    def _produce(self, channel: str, inst: Instrument, now: int) -> list[str]:
        arg = '{"arg":{"channel":"%s","instId":"%s"},' % (channel, inst.inst_id)
        self._batch_ids = []
        if channel == "trades" and self.venue.tape_on():
            return self._tape_trades(inst, now, arg)
        if channel == "trades":
            cursor = self._trade_cursor.get(inst.inst_id, now)
            out = []
            for minute in range(cursor // MINUTE_MS, now // MINUTE_MS + 1):
                tape = inst.market.minute_tape(minute)
                for t in tape.trades[tape.done(cursor) : tape.done(now)]:
                    item = self.venue.trade_json(inst, t)
                    item["count"] = "1"
                    del item["source"]
                    out.append(arg + '"data":[%s]}' % json.dumps(item, separators=(",", ":")))
                    self._count_trade(inst.inst_id, t.id, t.id, 1)
            self._trade_cursor[inst.inst_id] = now
            return out
        if channel.startswith("candle"):
            return self._candle(channel, inst, now, arg)
        if channel in ("bbo-tbt", "books5"):
            self.venue.advance_book(inst, now)
            if channel == "bbo-tbt":  # tick by tick: pushed when the book changed
                if self._bbo_seq.get(inst.inst_id) == inst.book.update_id:
                    return []
                self._bbo_seq[inst.inst_id] = inst.book.update_id
            depth = 1 if channel == "bbo-tbt" else 5
            bids, asks = self.venue.levels(inst, depth)
            data = {"asks": asks, "bids": bids, "ts": str(now), "seqId": inst.book.update_id}
            if channel == "books5":
                data["instId"] = inst.inst_id
            return [arg + '"data":[%s]}' % json.dumps(data, separators=(",", ":"))]
        if channel == "tickers":
            if now - self._ticker_ms.get(inst.inst_id, 0) < _TICKER_PUSH_MS:
                return []
            self._ticker_ms[inst.inst_id] = now
            return [arg + '"data":[%s]}' % json.dumps(self._ticker(inst, now), separators=(",", ":"))]
        return []

    def _count_trade(self, inst_id: str, first_id: int, last_id: int, n: int) -> None:
        sent = self.trades_sent.get(inst_id)
        if sent is None:
            self.trades_sent[inst_id] = [n, first_id, last_id]
        else:
            sent[0] += n
            sent[2] = last_id

    def _tape_trades(self, inst: Instrument, now: int, arg: str) -> list[str]:
        """The tape's trades of ``inst`` since its cursor (the first subscriber's: now), one a message."""
        tape = self.venue.tape
        hi = tape.count(now)
        lo = self._trade_cursor.get(inst.inst_id, hi)
        self._trade_cursor[inst.inst_id] = hi
        if hi <= lo:
            return []
        pd = inst.market.price_decimals
        head = arg + '"data":[{"instId":"%s","tradeId":"' % inst.inst_id
        size = inst.size
        out = []
        skip = self._skip_trades
        out_first = last = -1
        ids = self._batch_ids = []
        for t in self.venue.tape_trades(inst, lo, hi):
            if skip and skip[inst.inst_id] > 0:
                skip[inst.inst_id] -= 1
                continue
            ids.append(t.id)
            out.append(
                head
                + '%d","px":"%s","sz":"%s","side":"%s","count":"1","ts":"%d"}]}'
                % (t.id, num(t.price, pd), size(t.qty), "sell" if t.buyer_maker else "buy", t.time_ms)
            )
            last = t.id
            if out_first < 0:
                out_first = last
        if out:
            self._count_trade(inst.inst_id, out_first, last, len(out))
        return out

    def _candle(self, channel: str, inst: Instrument, now: int, arg: str) -> list[str]:
        timeframe = TIMEFRAME_OF_BAR[channel[len("candle") :]]
        key = (inst.inst_id, channel)
        open_ms = self.venue.forming_open(timeframe, now)
        last_open, last_push = self._candles.get(key, (-1, 0))
        out = []
        if last_open >= 0 and last_open != open_ms:
            out += self.venue.candle_page(inst, timeframe, open_ms, last_open - 1, 1)
        elif last_open == open_ms and now - last_push < _CANDLE_PUSH_MS:
            return []
        out += self.venue.candle_page(inst, timeframe, None, open_ms - 1, 1)
        self._candles[key] = (open_ms, now)
        return [arg + '"data":[%s]}' % json.dumps(c, separators=(",", ":")) for c in out]

    def _ticker(self, inst: Instrument, now: int) -> dict[str, Any]:
        m = inst.market
        self.venue.advance_book(inst, now)
        (bp, bq), (ap, aq) = inst.book.best()
        rows = m.candles("1h", now - 24 * HOUR_MS, now + 1, now)
        pd = m.price_decimals
        last = m.last_price(now) or bp
        vol = int(rows.v.sum()) if len(rows) else 0
        return {
            "instType": inst.inst_type,
            "instId": inst.inst_id,
            "last": num(last, pd),
            "lastSz": inst.size(1),
            "askPx": num(ap, pd),
            "askSz": inst.size(aq),
            "bidPx": num(bp, pd),
            "bidSz": inst.size(bq),
            "open24h": num(int(rows.o[0]) if len(rows) else last, pd),
            "high24h": num(int(rows.h.max()) if len(rows) else last, pd),
            "low24h": num(int(rows.l.min()) if len(rows) else last, pd),
            "volCcy24h": num(int(rows.q.sum()) if len(rows) else 0, 8),
            "vol24h": inst.size(vol) if inst.swap else num(vol, m.qty_decimals),
            "sodUtc0": num(int(rows.o[0]) if len(rows) else last, pd),
            "sodUtc8": num(int(rows.o[0]) if len(rows) else last, pd),
            "ts": str(now),
        }
