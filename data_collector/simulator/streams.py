"""WebSocket market streams: one pump builds each frame once and writes it to every subscriber.

Frames are built as raw WebSocket bytes (server frames are unmasked, we never compress) and all
frames due for a connection in one tick go out in a single ``transport.write``: that is what lets
one Python process push well over 100,000 messages a second to a client.

Long because every stream kind shares the one pump and frame builder defined here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from data_collector.markets import MINUTE_MS, TIMEFRAMES, candle_open_ms, next_open_ms
from data_collector.simulator.book import DepthDiff
from data_collector.simulator.formats import agg_trade_json, decimal8
from data_collector.simulator.fstreams import FUTURES_KINDS, parse_futures, produce_futures
from data_collector.simulator.market import SymbolMarket
from data_collector.simulator.tape import RateTape, pick

if TYPE_CHECKING:
    from data_collector.simulator.book import OrderBook
    from data_collector.simulator.server import SimulatedExchange


class Venue(Protocol):
    """What a hub streams from: the markets by stream name and their books."""

    market_by_stream: dict[str, SymbolMarket]
    books: dict[str, OrderBook]

    def advance_book(self, market: SymbolMarket, now_ms: int) -> None: ...


log = logging.getLogger(__name__)

#: A connection whose backlog (frames queued by a stall plus its socket's send buffer) passes this
#: many bytes is disconnected, as a real exchange drops a consumer that cannot keep up.
MAX_BACKLOG = 4 * 1024 * 1024
_KLINE_PUSH_MS = 2000
#: From this ms of a minute on, the pump computes the next minute's trades ahead (one market a tick).
PREFETCH_FROM_MS = 50_000
#: A tick stops building frames after this long; the streams it did not reach go first next tick.
TICK_BUDGET_S = 0.002
#: Binance's cap on streams per connection.
MAX_STREAMS = 1024


def frame(payload: bytes) -> bytes:
    """An unmasked, final text frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def prefetch_tapes(markets: Iterable[SymbolMarket], now: int) -> None:
    """Near a minute's end, compute one streamed market's next-minute trades ahead of time.

    A minute's trades cost about a millisecond to draw; computing them for every market in
    the first tick of a minute would stall that tick, so it is spread one market per tick.
    """
    if now % MINUTE_MS < PREFETCH_FROM_MS:
        return
    nxt = now // MINUTE_MS + 1
    for market in markets:
        if not market.has_tape(nxt):
            market.minute_tape(nxt)
            return


@dataclass(eq=False)
class Connection:
    """One client socket."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport
    wrapped: bool
    opened_ms: int
    subs: set[str] = field(default_factory=set)
    out: list[bytes] = field(default_factory=list)
    #: Bytes in ``out`` (frames built but not written yet: a stall queues them here).
    queued: int = 0
    closing: bool = False

    def backlog(self) -> int:
        return self.queued + self.transport.get_write_buffer_size()

    def write_now(self, payload: bytes) -> None:
        if not self.closing and not self.transport.is_closing():
            self.transport.write(frame(payload))


@dataclass(eq=False)
class StreamState:
    """A stream with at least one subscriber."""

    name: str
    market: SymbolMarket
    kind: str
    arg: str
    subscribers: set[Connection] = field(default_factory=set)
    last_ms: int = 0
    carry: float = 0.0
    cursor: int = 0
    kline_open: int = -1
    diffs: list[DepthDiff] = field(default_factory=list)


class StreamError(ValueError):
    """A stream name the server does not know."""


class StreamHub:
    """Subscriptions, the pump task and what was sent, for one venue of a simulator.

    Args:
        sim: the simulator (clock, rates, 24 h statistics).
        venue: the markets and books streamed (default: the simulator's spot ones).
        futures: speak USDⓈ-M futures (``pu`` in depth diffs, ``markPrice``, ``forceOrder``).
    """

    def __init__(self, sim: SimulatedExchange, venue: Venue | None = None, futures: bool = False) -> None:
        self.sim = sim
        self.venue: Venue = venue if venue is not None else sim
        self.futures = futures
        self.connections: set[Connection] = set()
        self.streams: dict[str, StreamState] = {}
        self.sent: dict[str, dict[str, int]] = {}
        self.stalled_until_ms = 0
        self.tick_s = 0.005
        self.ping_s = 20.0
        self.max_lifetime_s = 24 * 3600.0
        #: Incoming control messages allowed per second and connection (None: no limit).
        self.max_incoming_per_s: float | None = None
        self.dropped_for_rate = 0
        #: Connections dropped because their backlog passed :attr:`max_backlog`.
        self.dropped_for_backlog = 0
        self.max_backlog = MAX_BACKLOG
        #: (symbol, ``trade`` or ``aggTrade``) -> frames still to lose (``ws_faults.skip_trade_id``):
        #: the trades stay on the tape (and REST), their frames are never sent.
        self.skip_trades: dict[tuple[str, str], int] = {}
        #: The ``trade`` streams' tape: ids are a function of the time, listened to or not.
        self.tape = RateTape(0, sim.ws_rate)
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[bool]] = set()
        self._rng = random.Random(sim.seed)
        self._ref: dict[str, int] = {}
        self._deferred: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for conn in list(self.connections):
            conn.closing = True
            conn.transport.abort()
        self.connections.clear()
        self.streams.clear()

    # -- parsing -----------------------------------------------------------------------------

    def parse(self, name: str) -> tuple[SymbolMarket, str, str]:
        """(market, kind, argument) of a stream name like ``solusdt@kline_1m``."""
        sym, _, rest = name.partition("@")
        market = self.venue.market_by_stream.get(sym)
        if market is None or not rest:
            raise StreamError(name)
        if rest in ("trade", "aggTrade", "bookTicker", "miniTicker", "ticker"):
            return market, rest, ""
        if rest.startswith("kline_") and rest[6:] in TIMEFRAMES:
            return market, "kline", rest[6:]
        if self.futures:
            parsed = parse_futures(market, name, rest)
            if parsed is None:
                raise StreamError(name)
            return parsed
        if rest in ("depth", "depth@1000ms"):
            return market, "depth", "1000"
        if rest == "depth@100ms":
            return market, "depth", "100"
        for n in ("5", "10", "20"):
            if rest in (f"depth{n}", f"depth{n}@1000ms"):
                return market, "partial", n + ":1000"
            if rest == f"depth{n}@100ms":
                return market, "partial", n + ":100"
        raise StreamError(name)

    def subscribe(self, conn: Connection, names: list[str]) -> None:
        """Add streams to ``conn`` (validated first: all or nothing)."""
        parsed = [(n, self.parse(n)) for n in names]
        if len(conn.subs | set(names)) > MAX_STREAMS:
            raise StreamError(f"more than {MAX_STREAMS} streams on one connection")
        now = self.sim.clock.now_ms()
        for name, (market, kind, arg) in parsed:
            state = self.streams.get(name)
            if state is None:
                state = StreamState(name, market, kind, arg, last_ms=now)
                if kind == "aggTrade":
                    state.cursor = now
                if kind == "trade":
                    self.tape.set_rate(self.sim.ws_rate, now)
                    state.cursor = self.tape.count(now)
                if kind in ("depth", "partial"):
                    self.venue.advance_book(market, now)
                    book = self.venue.books[market.symbol]
                    state.cursor = book.update_id
                self.streams[name] = state
            state.subscribers.add(conn)
            conn.subs.add(name)

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            conn.subs.discard(name)
            state = self.streams.get(name)
            if state is not None:
                state.subscribers.discard(conn)
                if not state.subscribers:
                    del self.streams[name]

    def drop(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.subs))
        self.connections.discard(conn)

    # -- the connection handler --------------------------------------------------------------

    async def handle(self, request: web.Request, initial: list[str], wrapped: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=self.ping_s, compress=False, autoping=True)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = Connection(ws, transport, wrapped, self.sim.clock.now_ms())
        self.connections.add(conn)
        self.start()
        try:
            if initial:
                try:
                    self.subscribe(conn, initial)
                except StreamError as exc:
                    conn.write_now(
                        json.dumps({"error": {"code": 2, "msg": f"Invalid request: {exc}"}}).encode()
                    )
                    await ws.close()
                    return ws
            window_start, in_window = 0.0, 0
            loop = asyncio.get_running_loop()
            async for msg in ws:
                if msg.type != web.WSMsgType.TEXT:
                    continue
                if self.max_incoming_per_s is not None:
                    # Binance drops a connection that sends more than 5 messages a second.
                    now_s = loop.time()
                    if now_s - window_start >= 1.0:
                        window_start, in_window = now_s, 0
                    in_window += 1
                    if in_window > self.max_incoming_per_s:
                        self.dropped_for_rate += 1
                        await ws.close(code=1008, message=b"Too many requests")
                        break
                self._control(conn, msg.data)
        finally:
            self.drop(conn)
        return ws

    def _control(self, conn: Connection, text: str) -> None:
        try:
            req = json.loads(text)
            method = req["method"]
            req_id = req.get("id")
            params = req.get("params", [])
        except (ValueError, KeyError, TypeError, AttributeError):
            conn.write_now(b'{"error":{"code":3,"msg":"Invalid JSON: expected a method"}}')
            return
        try:
            if method == "SUBSCRIBE":
                self.subscribe(conn, [str(p) for p in params])
                reply: dict[str, Any] = {"result": None, "id": req_id}
            elif method == "UNSUBSCRIBE":
                self.unsubscribe(conn, [str(p) for p in params])
                reply = {"result": None, "id": req_id}
            elif method == "LIST_SUBSCRIPTIONS":
                reply = {"result": sorted(conn.subs), "id": req_id}
            else:
                reply = {
                    "error": {"code": 2, "msg": f"Invalid request: unknown method {method}"},
                    "id": req_id,
                }
        except StreamError as exc:
            reply = {"error": {"code": 2, "msg": f"Invalid request: unknown stream {exc}"}, "id": req_id}
        # The ack is written before any data of the new streams can be (the pump runs later).
        conn.write_now(json.dumps(reply, separators=(",", ":")).encode())

    def _close_later(self, conn: Connection) -> None:
        """Close ``conn`` with a close frame, in a task the hub keeps until it is done."""
        task = asyncio.get_running_loop().create_task(conn.ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- faults ------------------------------------------------------------------------------

    def drop_all(self) -> int:
        """Abort every connection without a close frame. Returns how many were dropped."""
        n = len(self.connections)
        for conn in list(self.connections):
            conn.closing = True
            conn.transport.abort()
            self.drop(conn)
        return n

    def shutdown_all(self) -> int:
        """Send ``serverShutdown`` then close every connection (a planned drop)."""
        n = 0
        now = self.sim.clock.now_ms()
        for conn in list(self.connections):
            conn.write_now(b'{"e":"serverShutdown","E":%d}' % now)
            conn.closing = True
            self._close_later(conn)
            self.drop(conn)
            n += 1
        return n

    def malformed(self) -> None:
        """Send a frame that is not valid JSON to every connection."""
        for conn in self.connections:
            conn.write_now(b'{"e":"trade","E":')

    # -- producing ---------------------------------------------------------------------------

    def _ref_price(self, market: SymbolMarket, now: int) -> int:
        """The price trades are drawn around: the forming minute's price (a bisect, no recompute)."""
        price = market.last_price(now)
        if price is None:
            price = self._ref.get(market.symbol) or max(1, int(market.price0 * 10**market.price_decimals))
        self._ref[market.symbol] = price
        return price

    def _prefetch(self, now: int) -> None:
        prefetch_tapes((st.market for st in self.streams.values()), now)

    def _count_sent(self, name: str, count: int, last_id: int) -> None:
        entry = self.sent.get(name)
        if entry is None:
            self.sent[name] = {"count": count, "last_id": last_id}
        else:
            entry["count"] += count
            entry["last_id"] = last_id

    def _produce(self, st: StreamState, now: int) -> list[bytes]:
        kind = st.kind
        m = st.market
        sym = m.exchange_symbol
        if kind == "trade":
            return self._trades(st, now)
        if kind == "bookTicker":
            due = self.sim.ws_rate * (now - st.last_ms) / 1000.0 + st.carry
            st.last_ms = now
            n = int(due)
            st.carry = due - n
            if n <= 0:
                return []
            n = min(n, max(1, int(self.sim.ws_rate)))
            self.venue.advance_book(m, now)
            (bp, bq), (ap, aq) = self.venue.books[m.symbol].best()
            uid = self.venue.books[m.symbol].update_id
            pd, qd = m.price_decimals, m.qty_decimals
            head = (
                '{"e":"bookTicker","u":%d,"E":%d,"T":%d,' % (uid, now, now)
                if self.futures
                else '{"u":%d,' % uid
            )
            msg = (
                head
                + '"s":"%s","b":"%s","B":"%s","a":"%s","A":"%s"}'
                % (sym, decimal8(bp, pd), decimal8(bq, qd), decimal8(ap, pd), decimal8(aq, qd))
            ).encode()
            self._count_sent(st.name, n, uid)
            return [msg] * n
        if kind == "aggTrade":
            out = []
            last_id = -1
            head = '{"e":"aggTrade","E":%d,"s":"%s",' % (now, sym)
            for minute in range(st.cursor // MINUTE_MS, now // MINUTE_MS + 1):
                tape = m.minute_tape(minute)
                for t in tape.trades[tape.done(st.cursor) : tape.done(now)]:
                    body = agg_trade_json(t, m)[1:]
                    if self.futures:  # futures aggTrades carry no "M"
                        body = body[: -len(',"M":true}')] + "}"
                    if self.skip_trades and self._skipped(m.symbol, kind):
                        continue
                    out.append((head + body).encode())
                    last_id = t.id
            st.cursor = now
            if out:
                self._count_sent(st.name, len(out), last_id)
            return out
        if kind == "kline":
            tf = st.arg
            cur_open = candle_open_ms(now, tf)
            out = []
            if st.kline_open >= 0 and st.kline_open != cur_open:
                kmsg = self._kline(m, tf, st.kline_open, now, closed=True)
                if kmsg is not None:
                    out.append(kmsg)
                st.kline_open = cur_open
                st.last_ms = now
                kmsg = self._kline(m, tf, cur_open, now, closed=False)
                if kmsg is not None:
                    out.append(kmsg)
            elif st.kline_open < 0 or now - st.last_ms >= _KLINE_PUSH_MS:
                st.kline_open = cur_open
                st.last_ms = now
                kmsg = self._kline(m, tf, cur_open, now, closed=False)
                if kmsg is not None:
                    out.append(kmsg)
            if out:
                self._count_sent(st.name, len(out), st.kline_open)
            return out
        if kind in FUTURES_KINDS:
            return produce_futures(self, st, now)
        if kind in ("miniTicker", "ticker"):
            if now - st.last_ms < 1000 and st.cursor:
                return []
            st.last_ms = now
            st.cursor = 1
            stats = self.sim.rolling_24h(m, now)
            if stats is None:
                return []
            self._count_sent(st.name, 1, now)
            if kind == "ticker":
                tick = self.sim.ticker_24hr(m, now)
                keys = (
                    ("p", "priceChange"),
                    ("P", "priceChangePercent"),
                    ("w", "weightedAvgPrice"),
                    ("x", "prevClosePrice"),
                    ("c", "lastPrice"),
                    ("Q", "lastQty"),
                    ("b", "bidPrice"),
                    ("B", "bidQty"),
                    ("a", "askPrice"),
                    ("A", "askQty"),
                    ("o", "openPrice"),
                    ("h", "highPrice"),
                    ("l", "lowPrice"),
                    ("v", "volume"),
                    ("q", "quoteVolume"),
                    ("O", "openTime"),
                    ("C", "closeTime"),
                    ("F", "firstId"),
                    ("L", "lastId"),
                    ("n", "count"),
                )
                event = {"e": "24hrTicker", "E": now, "s": sym, **{short: tick[long] for short, long in keys}}
                return [json.dumps(event, separators=(",", ":")).encode()]
            return [
                (
                    '{"e":"24hrMiniTicker","E":%d,"s":"%s","c":"%s","o":"%s","h":"%s","l":"%s","v":"%s","q":"%s"}'
                    % (now, sym, stats["c"], stats["o"], stats["h"], stats["l"], stats["v"], stats["q"])
                ).encode()
            ]
        return []

    def _trades(self, st: StreamState, now: int) -> list[bytes]:
        """The tape's trades from the stream's cursor up to ``now``: ``T`` is each trade's time on
        the tape, ``E`` (now, when the frame is built) runs slightly after it, as on the exchange."""
        tape = self.tape
        hi = tape.count(now)
        lo = st.cursor
        if hi <= lo:
            return []
        st.cursor = hi
        m = st.market
        ref = self._ref_price(m, now)
        pd, qd = m.price_decimals, m.qty_decimals
        spread = max(1, ref // 20000)
        prices = [decimal8(max(1, ref + (i - 4) * spread), pd) for i in range(9)]
        unit = max(1, int(m.qty_units))
        qtys = [decimal8(unit * (1 + i) // 4 or 1, qd) for i in range(16)]
        head = '{"e":"trade","E":%d,"s":"%s","t":' % (now, m.exchange_symbol)
        # Trade k's time, inlined for the current segment (tape.time_of, a call per trade, costs
        # about a third of the build at 50,000 msg/s).
        start, base, per = tape.start_ms, tape.base, 1000.0 / tape.rate if tape.rate > 0 else 0.0
        ceil = math.ceil
        time_of = tape.time_of
        skipping = bool(self.skip_trades)
        prev_t, tail_t = -1, ""
        out = []
        last = hi - 1
        for k in range(lo, hi):
            if skipping and self._skipped(m.symbol, "trade"):
                continue
            last = k
            r = ((k * 0x9E3779B1) >> 13) & 0xFF  # tape.pick(k), inlined
            t = start + ceil((k - base + 1) * per) if k >= base else time_of(k)
            if t != prev_t:  # consecutive trades share a millisecond at high rates: one string
                prev_t = t
                tail_t = '","T":%d,"m":' % (t if t < now else now)
            out.append(
                (
                    head
                    + str(k)
                    + ',"p":"'
                    + prices[r % 9]
                    + '","q":"'
                    + qtys[r >> 4]
                    + tail_t
                    + ("true" if r & 1 else "false")
                    + ',"M":true}'
                ).encode()
            )
        if out:
            self._count_sent(st.name, len(out), last)
        return out

    def tape_trades(self, m: SymbolMarket, from_id: int | None, limit: int, now: int) -> list[str]:
        """REST rows (``historicalTrades``) of the ``trade`` tape: ids ``from_id``.. (default: the
        newest ``limit``) up to ``now``, the same ids, times, sizes and sides the stream sends.

        The price is drawn around the reference at the trade's own time; the stream draws it
        around the reference when its frame is built (a tick later), which is the same price
        unless an aggregate trade of the market fell in between.
        """
        self.tape.set_rate(self.sim.ws_rate, now)
        hi = self.tape.count(now)
        lo = max(0, hi - limit) if from_id is None else max(0, from_id)
        pd, qd = m.price_decimals, m.qty_decimals
        unit = max(1, int(m.qty_units))
        rows = []
        for k in range(lo, min(hi, lo + limit)):
            t = self.tape.time_of(k)
            ref = m.last_price(t) or self._ref.get(m.symbol) or max(1, int(m.price0 * 10**m.price_decimals))
            r = pick(k)
            price = max(1, ref + (r % 9 - 4) * max(1, ref // 20000))
            qty = unit * (1 + (r >> 4)) // 4 or 1
            rows.append(
                '{"id":%d,"price":"%s","qty":"%s","quoteQty":"%s","time":%d,"isBuyerMaker":%s,"isBestMatch":true}'
                % (
                    k,
                    decimal8(price, pd),
                    decimal8(qty, qd),
                    f"{price * qty / 10 ** (pd + qd):.8f}",
                    t,
                    "true" if r & 1 else "false",
                )
            )
        return rows

    def _skipped(self, symbol: str, kind: str) -> bool:
        """Whether this ``kind`` frame of ``symbol`` is one an injected fault loses."""
        left = self.skip_trades.get((symbol, kind), 0)
        if left <= 0:
            return False
        self.skip_trades[(symbol, kind)] = left - 1
        return True

    def _kline(self, m: SymbolMarket, tf: str, open_ms: int, now: int, closed: bool) -> bytes | None:
        rows = m.candles(tf, open_ms, next_open_ms(open_ms, tf), now)
        if len(rows) == 0 or int(rows.open_ms[0]) != open_ms:
            return None
        pd, qd = m.price_decimals, m.qty_decimals
        n = int(rows.n[0])
        first = m.trades_before(open_ms // 60000) if n else -1
        last = first + n - 1 if n else -1
        return (
            '{"e":"kline","E":%d,"s":"%s","k":{"t":%d,"T":%d,"s":"%s","i":"%s","f":%d,"L":%d,'
            '"o":"%s","c":"%s","h":"%s","l":"%s","v":"%s","n":%d,"x":%s,"q":"%s","V":"%s","Q":"%s","B":"0"}}'
            % (
                now,
                m.exchange_symbol,
                open_ms,
                next_open_ms(open_ms, tf) - 1,
                m.exchange_symbol,
                tf,
                first,
                last,
                decimal8(int(rows.o[0]), pd),
                decimal8(int(rows.c[0]), pd),
                decimal8(int(rows.h[0]), pd),
                decimal8(int(rows.l[0]), pd),
                decimal8(int(rows.v[0]), qd),
                n,
                "true" if closed else "false",
                decimal8(int(rows.q[0]), 8),
                decimal8(int(rows.tb[0]), qd),
                decimal8(int(rows.tbq[0]), 8),
            )
        ).encode()

    def _depth(self, now: int) -> dict[str, list[bytes]]:
        """Depth and partial-book messages per stream, from the books' pending diffs."""
        out: dict[str, list[bytes]] = {}
        by_symbol: dict[str, list[StreamState]] = {}
        for st in self.streams.values():
            if st.kind in ("depth", "partial"):
                by_symbol.setdefault(st.market.symbol, []).append(st)
        for symbol, book in self.venue.books.items():
            states = by_symbol.get(symbol)
            if not states:
                book.pending.clear()
                continue
            m = states[0].market
            self.venue.advance_book(m, now)
            diffs = list(book.pending)
            book.pending.clear()
            for st in states:
                msgs: list[bytes] = []
                if st.kind == "depth":
                    st.diffs += [d for d in diffs if d.last > st.cursor]
                    if not st.diffs:
                        continue
                    if st.arg == "100":
                        groups = [[d] for d in st.diffs]
                    elif now - st.last_ms >= int(st.arg):
                        groups = [st.diffs]
                    else:
                        continue
                    st.diffs = []
                    st.last_ms = now
                    for g in groups:
                        msgs.append(self._diff_msg(m, g, now, self.futures))
                    st.cursor = groups[-1][-1].last
                    self._count_sent(st.name, len(msgs), st.cursor)
                else:
                    levels, _, ms = st.arg.partition(":")
                    if now - st.last_ms < int(ms):
                        continue
                    st.last_ms = now
                    bids, asks = book.top(int(levels))
                    pd, qd = m.price_decimals, m.qty_decimals
                    msgs.append(
                        json.dumps(
                            {
                                "lastUpdateId": book.update_id,
                                "bids": [[decimal8(p, pd), decimal8(q, qd)] for p, q in bids],
                                "asks": [[decimal8(p, pd), decimal8(q, qd)] for p, q in asks],
                            },
                            separators=(",", ":"),
                        ).encode()
                    )
                    self._count_sent(st.name, 1, book.update_id)
                if msgs:
                    out[st.name] = msgs
        return out

    @staticmethod
    def _diff_msg(m: SymbolMarket, group: list[DepthDiff], now: int, futures: bool = False) -> bytes:
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for d in group:
            bids.update(d.bids)
            asks.update(d.asks)
        pd, qd = m.price_decimals, m.qty_decimals
        event: dict[str, Any] = {"e": "depthUpdate", "E": now}
        if futures:
            event["T"] = group[-1].time_ms
        event |= {"s": m.exchange_symbol, "U": group[0].first, "u": group[-1].last}
        if futures:
            # The final id of the event before: a lost event (skip_depth_id) breaks the chain.
            event["pu"] = group[0].first - 1
        event["b"] = [[decimal8(p, pd), decimal8(q, qd)] for p, q in sorted(bids.items(), reverse=True)]
        event["a"] = [[decimal8(p, pd), decimal8(q, qd)] for p, q in sorted(asks.items())]
        return json.dumps(event, separators=(",", ":")).encode()

    def tick(self) -> None:
        """Produce what is due now and write it out, one write per connection.

        Each stream's messages are stamped with the clock read just before they are built, and
        the tick stops building after :data:`TICK_BUDGET_S`: the streams it did not reach go
        first in the next tick (nothing is lost, rates count from each stream's last build), so
        no tick holds the event loop, or the frames already built, for long. The streams are
        built, and written, in an order that varies from tick to tick.

        The market does not wait for its clients: a stall delays delivery (the frames queue on
        each connection) and a connection whose backlog passes :attr:`max_backlog` bytes, in
        the queue and the socket's send buffer together, is disconnected.
        """
        clock = self.sim.clock
        now = clock.now_ms()
        if self.tape.rate != self.sim.ws_rate:
            self.tape.set_rate(self.sim.ws_rate, now)
        stalled = now < self.stalled_until_ms
        started = time.perf_counter()
        self._prefetch(now)
        now = clock.now_ms()
        batches: dict[str, list[bytes]] = (
            self._depth(now) if any(s.kind in ("depth", "partial") for s in self.streams.values()) else {}
        )
        states = [st for st in self.streams.values() if st.kind not in ("depth", "partial")]
        self._rng.shuffle(states)
        if self._deferred:  # in the order they were left, ahead of those built last tick
            waiting = set(self._deferred)
            first = [self.streams[n] for n in self._deferred if n in self.streams]
            states = first + [st for st in states if st.name not in waiting]
            self._deferred = []
        for i, st in enumerate(states):
            if i and time.perf_counter() - started > TICK_BUDGET_S:
                self._deferred = [s.name for s in states[i:]]
                break
            msgs = self._produce(st, clock.now_ms())
            if msgs:
                batches[st.name] = msgs
        order = list(batches.items())
        self._rng.shuffle(order)
        for name, msgs in order:
            st = self.streams[name]
            raw: bytes | None = None
            wrapped: bytes | None = None
            for conn in st.subscribers:
                if conn.wrapped:
                    if wrapped is None:
                        pre = b'{"stream":"' + name.encode() + b'","data":'
                        wrapped = b"".join([frame(pre + p + b"}") for p in msgs])
                    conn.out.append(wrapped)
                    conn.queued += len(wrapped)
                else:
                    if raw is None:
                        raw = b"".join([frame(p) for p in msgs])
                    conn.out.append(raw)
                    conn.queued += len(raw)
        limit_ms = self.max_lifetime_s * 1000
        now = clock.now_ms()
        for conn in list(self.connections):
            if conn.out and conn.backlog() > self.max_backlog and not conn.closing:
                # A consumer this far behind is cut off (no close frame), not waited for.
                self.dropped_for_backlog += 1
                conn.out.clear()
                conn.queued = 0
                conn.closing = True
                conn.transport.abort()
                self.drop(conn)
                continue
            if conn.out and not stalled:
                if not conn.closing and not conn.transport.is_closing():
                    conn.transport.write(b"".join(conn.out))
                conn.out.clear()
                conn.queued = 0
            if now - conn.opened_ms >= limit_ms and not conn.closing:
                conn.write_now(b'{"e":"serverShutdown","E":%d}' % now)
                conn.closing = True
                self._close_later(conn)
                self.drop(conn)

    async def _pump(self) -> None:
        """Tick every ``tick_s`` on a fixed schedule; right away (after a yield) if work was deferred."""
        sleep: Callable[[float], Any] = asyncio.sleep
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            if self.streams or self.connections:
                try:
                    self.tick()
                except Exception:  # one bad tick must not silence every stream for good
                    log.exception("simulator stream pump tick failed")
                if self._deferred:
                    await sleep(0)
                    continue
                due += self.tick_s
                delay = due - loop.time()
                if delay < 0:  # behind: do not burst to catch up, just yield
                    due, delay = loop.time(), 0.0
                await sleep(delay)
            else:
                await sleep(0.05)
                due = loop.time()
