"""The generic streaming adapter: any ccxt.pro exchange, through its ``watch_*_for_symbols``.

One :class:`CcxtProConnection` per kind of data (``trades``, ``ohlcv``, ``books``) owns a ccxt.pro
exchange of its own and loops on ``watch_trades_for_symbols``, ``watch_ohlcv_for_symbols`` or
``watch_order_book_for_symbols``; the results become the same events as the native adapters'
(:mod:`data_collector.streaming.normalize`) and go through the same writer and batching.

Slower and weaker than the native adapters, and documented so in the README:

- every message goes through ccxt's parsing, caches and futures (several times the CPU);
- no sequence is exposed, so a loss is only known at an exception or a silence of
  ``watchdog_s``: the exchange is then closed and opened anew, and the first event after it closes
  a ``reconnect`` gap marker (from the last event stored); a loss without an exception is not seen;
- trades with numeric ids keep ``<time>-<id>`` entry ids (a replay is refused by Redis); other ids
  get local ones (no protection against a replay);
- a kline counts as closed when one with a later open arrives (ccxt has no ``closed`` flag): its
  values are the last ones seen, which may miss the final trades of the candle;
- books: only the top N goes to Redis (``book`` key), as ccxt keeps it; whether ccxt verifies a
  venue's checksum or sequence depends on the venue's ccxt code. No ``depth`` diffs are streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from data_collector.backoff import backoff_delay
from data_collector.errors import UsageError
from data_collector.streaming import normalize as base
from data_collector.streaming.connection import Feed, Route, deliver
from data_collector.streaming.normalize import Event, MalformedEvent, kline_entry_id, kline_event
from data_collector.streaming.order_book import BookKeeper

log = logging.getLogger(__name__)

#: kind -> the ccxt.pro method it needs.
METHODS = {
    "trades": "watchTradesForSymbols",
    "ohlcv": "watchOHLCVForSymbols",
    "books": "watchOrderBookForSymbols",
}


def route_key(channel: str, symbol: str) -> str:
    return f"{channel}:{symbol}"


def check_methods(exchange_class: Any, kinds: list[str]) -> None:
    """``UsageError`` naming the first ``watch_*_for_symbols`` the exchange lacks."""
    has = exchange_class().has  # merged with the base class's only in an instance (no I/O)
    for kind in kinds:
        if not has.get(METHODS[kind]):
            raise UsageError(
                f"ccxt.pro {exchange_class.__name__} has no {METHODS[kind]}: the generic streamer "
                f"cannot stream its {kind}; drop that channel from streaming.channels"
            )


def _trade_key(trade: dict[str, Any]) -> tuple[int, Any]:
    raw_id = trade.get("id")
    trade_id: Any = int(raw_id) if isinstance(raw_id, str) and raw_id.isdigit() else str(raw_id)
    return int(trade.get("timestamp") or 0), trade_id


class CcxtBookKeeper(BookKeeper):
    """Publishes the books ccxt.pro keeps (top N, at most every interval)."""

    def __init__(self, symbols: list[str], **kwargs: Any) -> None:
        super().__init__(symbols, rest=None, snapshot_limit=0, **kwargs)

    def on_book(self, symbol: str, ob: dict[str, Any], recv_ms: int) -> None:
        book = self.books[symbol]
        book.bids = {float(p): float(q) for p, q, *_ in ob["bids"] if q}
        book.asks = {float(p): float(q) for p, q, *_ in ob["asks"] if q}
        book.last_update_id = int(ob.get("nonce") or 0)
        book.event_ms = int(ob.get("timestamp") or recv_ms)
        if book.bids and book.asks and max(book.bids) >= min(book.asks):
            log.warning("%s: ccxt's book is crossed; not published", symbol)
            self.invalidate(symbol)
            return
        if not book.synced:
            book.synced = True
            self._last_publish.pop(symbol, None)
        self._schedule_publish(symbol)


class CcxtProConnection(Feed):
    """One ccxt.pro watch loop for a set of routes, reconnecting with a capped backoff."""

    def __init__(
        self,
        name: str,
        label: str,
        kind: str,
        exchange_factory: Callable[[], Any],
        routes: dict[str, Route],
        *,
        books: CcxtBookKeeper | None = None,
        **hooks: Any,
    ) -> None:
        """``hooks``: :class:`Feed`'s keyword arguments (submit, metrics, settings, ...)."""
        super().__init__(name, routes, **hooks)
        #: The venue label of the events.
        self.label = label
        self.kind = kind
        self._factory = exchange_factory
        self._books = books
        self.symbols = list(dict.fromkeys(r.symbol for r in routes.values()))
        self.timeframes = sorted({r.channel[6:] for r in routes.values() if r.channel.startswith("kline_")})
        self._exchange: Any = None
        self._ids: dict[str, base._LocalIds] = {}
        #: (symbol, timeframe) -> the newest candle seen (not yet emitted as closed).
        self._forming: dict[tuple[str, str], list[Any]] = {}
        #: symbol -> ``(time, id)`` of the newest trade emitted.
        self._last_trade: dict[str, tuple[int, Any]] = {}
        #: symbol -> what identified the last book published from ccxt's cache.
        self._book_marks: dict[str, tuple[Any, ...]] = {}

    async def _watch(self, exchange: Any) -> Any:
        if self.kind == "trades":
            return await exchange.watch_trades_for_symbols(self.symbols)
        if self.kind == "ohlcv":
            return await exchange.watch_ohlcv_for_symbols(
                [[s, tf] for s in self.symbols for tf in self.timeframes]
            )
        return await exchange.watch_order_book_for_symbols(self.symbols)

    async def run(self) -> None:
        """Watch, reconnect, forever (until cancelled)."""
        attempt = 0
        settings = self._settings
        markets: Any = None
        while True:
            exchange = self._exchange = self._factory()
            try:
                async with asyncio.timeout(settings.open_timeout_s):
                    if markets is None:
                        markets = await exchange.load_markets()
                    else:
                        exchange.set_markets(markets)
                while True:
                    async with asyncio.timeout(settings.watchdog_s):
                        result = await self._watch(exchange)
                    recv_ms = int(time.time() * 1000)
                    self.last_rx_ms = recv_ms
                    if not self.connected:
                        await self._connected()
                        attempt = 0
                    self._handle(exchange, result, recv_ms)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                log.warning("%s silent for %.1f s; reconnecting", self.name, settings.watchdog_s)
            except Exception as exc:  # ccxt's NetworkError, ExchangeError, a bug: reconnect
                log.warning("%s: %s: %s", self.name, type(exc).__name__, exc)
            finally:
                if self.connected:
                    self.connected = False
                    self._on_disconnect(self)
                self._exchange = None
                with contextlib.suppress(Exception):
                    await exchange.close()
            delay = backoff_delay(attempt, settings.min_backoff_s, settings.max_backoff_s)
            self.backoffs.append((attempt, delay))
            attempt += 1
            await asyncio.sleep(delay)

    def _handle(self, exchange: Any, result: Any, recv_ms: int) -> None:
        """Take what is new in ccxt's caches of every symbol, not only the one ``result`` names.

        A ``watch_*_for_symbols`` call resolves with one symbol's update; updates of other
        symbols that arrive before the next call resolve nothing and would wait (books: be lost)
        until their symbol updates again. ccxt keeps them in its caches, so each wake-up reads
        those, and remembers per symbol what it has emitted.
        """
        if self.kind == "trades":
            caches = exchange.trades
            for symbol in self.symbols:
                cache = caches.get(symbol)
                if cache:
                    self._new_trades(symbol, cache, recv_ms)
        elif self.kind == "ohlcv":
            for symbol in self.symbols:
                by_tf = exchange.ohlcvs.get(symbol) or {}
                for timeframe in self.timeframes:
                    cache = by_tf.get(timeframe)
                    if cache:
                        self._new_candles(symbol, timeframe, cache, recv_ms)
        elif self._books is not None:
            for symbol in self.symbols:
                ob = exchange.orderbooks.get(symbol)
                if ob is None:
                    continue
                mark = (ob.get("nonce"), ob.get("timestamp"), len(ob["bids"]), len(ob["asks"]))
                if ob is result or self._book_marks.get(symbol) != mark:
                    self._book_marks[symbol] = mark
                    self._books.on_book(symbol, ob, recv_ms)

    def _new_trades(self, symbol: str, cache: Any, recv_ms: int) -> None:
        last = self._last_trade.get(symbol)
        fresh = []
        for trade in reversed(cache):
            key = _trade_key(trade)
            if last is not None and key <= last:
                break
            fresh.append(trade)
        for trade in reversed(fresh):
            self._emit("trade", symbol, self._trade, trade, recv_ms)
        if fresh:
            self._last_trade[symbol] = _trade_key(fresh[0])

    def _new_candles(self, symbol: str, timeframe: str, cache: Any, recv_ms: int) -> None:
        forming = self._forming.get((symbol, timeframe))
        start = len(cache)
        while start > 0 and (forming is None or cache[start - 1][0] >= forming[0]):
            start -= 1
            if forming is None:
                break
        for candle in list(cache)[start:]:
            if forming is not None and list(candle) == forming:
                continue
            self._candle(symbol, timeframe, candle, recv_ms)

    def _emit(self, channel: str, symbol: Any, build: Callable[..., tuple[str, Event]], *args: Any) -> None:
        """Build ``build(route, *args)`` for the route of ``(channel, symbol)`` and queue it."""
        route = self.routes.get(route_key(channel, str(symbol)))
        self._metrics.received += 1
        if route is None:
            self._metrics.malformed += 1
            return
        try:
            entry_id, event = build(route, *args)
        except (MalformedEvent, ValueError, KeyError, TypeError, IndexError):
            self._metrics.malformed += 1
            return
        deliver(route, entry_id, event, time.time(), self._submit, self._on_resume)

    def _trade(self, route: Route, trade: dict[str, Any], recv_ms: int) -> tuple[str, Event]:
        trade_ms = base._ts(int(trade["timestamp"]), recv_ms)
        raw_id = trade["id"]
        side = trade["side"]
        if side not in ("buy", "sell"):
            raise MalformedEvent(f"trade side {side!r}")
        event: Event = {
            "exchange": self.label,
            "symbol": route.symbol,
            "channel": "trade",
            "event_ms": trade_ms,
            "recv_ms": recv_ms,
            "id": int(raw_id) if isinstance(raw_id, str) and raw_id.isdigit() else raw_id,
            "trade_ms": trade_ms,
            "price": base._price(trade["price"]),
            "amount": base._qty(trade["amount"]),
            "side": side,
        }
        if type(event["id"]) is int:
            return f"{trade_ms}-{event['id']}", event
        return self._ids.setdefault(route.stream_key, base._LocalIds()).next(trade_ms), event

    def _candle(self, symbol: str, timeframe: str, candle: list[Any], recv_ms: int) -> None:
        key = (symbol, timeframe)
        previous = self._forming.get(key)
        if previous is not None and candle[0] > previous[0]:
            self._emit(f"kline_{timeframe}", symbol, self._kline, timeframe, previous, recv_ms, True)
        if previous is not None and candle[0] < previous[0]:
            return  # an older candle than one already seen: already emitted
        self._forming[key] = list(candle)
        self._emit(f"kline_{timeframe}", symbol, self._kline, timeframe, candle, recv_ms, False)

    def _kline(
        self, route: Route, timeframe: str, c: list[Any], recv_ms: int, closed: bool
    ) -> tuple[str, Event]:
        open_ms = int(c[0])
        event = kline_event(
            self.label,
            route.symbol,
            timeframe,
            open_ms=open_ms,
            values=(c[1], c[2], c[3], c[4], c[5] or 0.0, 0.0),
            trades=0,
            closed=closed,
            event_ms=recv_ms,
            recv_ms=recv_ms,
        )
        return kline_entry_id(open_ms, timeframe, recv_ms, closed), event

    async def close(self) -> None:
        """Close the exchange now (the owner cancels :meth:`run`); idempotent."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            with contextlib.suppress(Exception):
                await exchange.close()


def build_connections(
    protocol: str,
    config: dict[str, Any],
    label: str,
    symbols: list[str],
    channels: list[str],
    route_for: Callable[[str, str], Route],
    books: CcxtBookKeeper | None,
    **hooks: Any,
) -> list[CcxtProConnection]:
    """One watch loop per kind of data asked for (each with its own ccxt.pro exchange).

    Raises:
        UsageError: the exchange lacks a ``watch_*_for_symbols`` a channel needs.
    """
    import ccxt.pro  # only the generic adapter loads ccxt

    exchange_class = getattr(ccxt.pro, protocol)
    groups: dict[str, list[str]] = {}
    for channel in channels:
        kind = "trades" if channel == "trade" else "books" if channel == "depth" else "ohlcv"
        groups.setdefault(kind, []).append(channel)
    check_methods(exchange_class, list(groups))

    def factory() -> Any:
        return exchange_class(copy.deepcopy(config))

    out = []
    for kind, kind_channels in groups.items():
        routes = {route_key(c, s): route_for(s, c) for s in symbols for c in kind_channels}
        out.append(
            CcxtProConnection(
                f"ccxt-{protocol}-{kind}",
                label,
                kind,
                factory,
                routes,
                books=books if kind == "books" else None,
                **hooks,
            )
        )
    return out
