"""``OptimizedWebSocketStreamer``: live Binance streams into Redis, fast and without silent loss.

::

    from data_collector.optimized_websocket import OptimizedWebSocketStreamer
    streamer = OptimizedWebSocketStreamer(symbols=['SOL/USDT'], redis_client=redis_client, batch_size=10)
    streamer.start()
    metrics = streamer.get_metrics()

``start()`` returns at once: inside a running event loop it schedules the streamer on that loop,
outside one it runs it in a background thread with its own loop (uvloop when installed).
``stop()`` / ``await astop()`` flush and close; ``await run()`` runs in the foreground;
``async with OptimizedWebSocketStreamer(...)`` is also supported. The work itself is done by
:mod:`data_collector.streaming` (see its modules for the Redis layout and the guarantees).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from data_collector.config import Config, load_config
from data_collector.errors import ClosedError, UsageError
from data_collector.markets import is_perpetual
from data_collector.picking import pick
from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.candles import CandleSink
from data_collector.streaming.connection import ConnectionSettings
from data_collector.streaming.metrics import BatchHook, EventHook, StreamMetrics
from data_collector.streaming.service import ServiceOptions, StreamService
from data_collector.streaming.trades_store import check_store_trades, trade_store_sink
from data_collector.streaming.writer import WriteLease
from data_collector.venues import stream_venue
from data_collector.venues.binance.rest import rest_base_from_urls

__all__ = ["OptimizedWebSocketStreamer"]

log = logging.getLogger(__name__)


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def monitor_hook(monitor: Any) -> BatchHook:
    """A batch hook feeding a PerformanceMonitor every latency of each batch (so its percentiles
    are exact) in one ``record_ws_messages`` call; a monitor with only ``record_ws_message`` gets
    the count and the batch's worst latency."""
    batch = getattr(monitor, "record_ws_messages", None)
    if batch is not None:

        def hook(written: int, latencies: list[float]) -> None:
            batch(latencies, count=written)

        return hook

    def worst(written: int, latencies: list[float]) -> None:
        monitor.record_ws_message(max(latencies) if latencies else None, count=written)

    return worst


def monitor_events(monitor: Any) -> EventHook:
    """An event hook feeding a PerformanceMonitor the streamer's reconnects, gaps, dropped
    entries and heartbeats (``record_reconnects``, ``record_gaps``, ``record_dropped``,
    ``record_heartbeat``); kinds the monitor has no method for are left out."""
    names = {"reconnects": "record_reconnects", "gaps": "record_gaps", "dropped": "record_dropped"}
    counters = {kind: getattr(monitor, name, None) for kind, name in names.items()}
    heartbeat = getattr(monitor, "record_heartbeat", None)

    def hook(kind: str, n: int) -> None:
        record = heartbeat if kind == "heartbeat" else counters.get(kind)
        if record is not None:
            record(n)

    return hook


def _chain(first: BatchHook | None, second: BatchHook | None) -> BatchHook | None:
    if first is None or second is None:
        return first or second

    def both(written: int, latencies: list[float]) -> None:
        first(written, latencies)
        second(written, latencies)

    return both


class OptimizedWebSocketStreamer:
    """Streams trades, book tickers, klines and depth from Binance into Redis; from Binance
    USDⓈ-M futures also mark prices (with funding) and liquidations.

    Args:
        symbols: canonical symbols (``['SOL/USDT']``), or perpetuals (``['BTC/USDT:USDT']``) when
            ``exchange.id`` is ``binanceusdm``; default: the config's ``symbols``.
        redis_client: a ``redis.asyncio.Redis``, a sync ``redis.Redis`` (its connection settings
            are reused) or a URL; default: the config's ``redis.url``.
        batch_size: flush a batch at this many entries; default ``performance.ws_batch_size``.
        channels: any of ``trade``, ``aggTrade``, ``bookTicker``, ``depth``, ``kline_<tf>``, and
            for perpetuals ``markPrice``, ``markPrice@1s`` and ``forceOrder`` (liquidations);
            default ``streaming.channels``.
        batch_interval: flush a batch at most this many seconds after its first entry; default
            ``performance.ws_batch_interval``.
        ws_url: WebSocket base URL; default ``exchange.ws_url``, else Binance's (spot's or
            USDⓈ-M's, after ``exchange.id``).
        rest_url: REST base URL (depth snapshots, kline repair); default from ``exchange.urls``
            (``api.public``, or ``api.fapiPublic`` for ``binanceusdm``), else Binance's.
        config: a path, dict or :class:`~data_collector.config.Config` (``streaming.*``,
            ``redis.*`` and the two ``performance.ws_*`` keys apply).
        exchange: the venue label in keys and events; default ``exchange.name`` (``sim-binance``
            for the simulator's config, ``sim-binanceusdm`` for its futures). The protocol is
            ``exchange.id``: ``binance`` (spot) or ``binanceusdm`` (USDⓈ-M perpetuals).
        candle_store: an open ``CandleStore`` for closed klines (the caller keeps owning it).
        store_candles: write closed klines to the database; default: when ``candle_store`` is
            given or the config names a ``database``.
        store_funding: write each settled funding rate of the perpetuals to the database's
            ``funding`` table (the backfill's rows, see :mod:`data_collector.streaming.funding`);
            default: as ``store_candles``, for perpetuals streamed with a ``markPrice`` channel.
        on_batch: called after each Redis round trip with ``(entries written, event->Redis
            latencies in ms)``.
        monitor: a ``utils.performance_monitor.PerformanceMonitor`` fed once per round trip with
            the batch's count and every event->Redis latency in it (``record_ws_messages``), and
            with each reconnect, gap, dropped entry and heartbeat as it happens.
        heartbeat: refresh ``<prefix>:heartbeat:streamer:<instance>`` (TTL ``metrics.heartbeat_ttl_s``)
            while running, for ``data_collector.health``; it never holds streaming back.
        adapter: ``native`` (Binance's or OKX's own protocol) or ``ccxt`` (any ccxt.pro exchange
            through ``watch_*_for_symbols``: slower, weaker guarantees, see README); default
            ``streaming.adapter``. An ``exchange.id`` with no native adapter always uses ``ccxt``.
        store_trades: write the streamed trades to the database's trades table (Binance's
            aggTrades, spot or perpetuals; OKX's trades, spot or swaps) and close its holes with
            the trade backfill (:mod:`data_collector.streaming.trades_store`); default
            ``streaming.store_trades``. Needs the config's ``database`` (a ``candle_store`` alone
            is not enough: the backfill job connects itself) and the ``aggTrade`` channel
            (``trade`` on OKX).
        on_mark_price: called on the streamer's loop with every ``markPrice`` event (mark and
            index price, ``funding_rate``, ``next_funding_ms``): the hook for a funding store.
            It must not block.
        lease: the shard lease of a sharded run (:mod:`data_collector.distributed.shards`):
            nothing is written to Redis once it is no longer valid, and every stream entry
            carries its stamp (field ``o``).
    """

    def __init__(
        self,
        symbols: Sequence[str] | None = None,
        redis_client: Any = None,
        batch_size: int | None = None,
        *,
        channels: Sequence[str] | None = None,
        batch_interval: float | None = None,
        ws_url: str | None = None,
        rest_url: str | None = None,
        config: Config | dict[str, Any] | str | None = None,
        exchange: str | None = None,
        candle_store: Any = None,
        store_candles: bool | None = None,
        on_batch: BatchHook | None = None,
        monitor: Any = None,
        heartbeat: bool = True,
        on_mark_price: Callable[[dict[str, Any]], None] | None = None,
        store_funding: bool | None = None,
        adapter: str | None = None,
        store_trades: bool | None = None,
        lease: WriteLease | None = None,
    ) -> None:
        cfg = load_config(config)
        adapter = adapter or cfg.streaming.adapter
        venue = stream_venue(cfg.exchange.id, adapter)
        self.config = cfg
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_interval is not None and not batch_interval > 0:
            raise UsageError(f"batch_interval must be positive seconds, got {batch_interval!r}")
        st = cfg.streaming
        target = redis_client if redis_client is not None else cfg.redis.url.get_secret_value()
        endpoint = RedisEndpoint.from_any(
            target, socket_timeout_s=cfg.redis.socket_timeout_s, connect_timeout_s=cfg.redis.connect_timeout_s
        )
        options = ServiceOptions(
            symbols=list(symbols) if symbols is not None else list(cfg.symbols),
            channels=list(channels) if channels is not None else list(st.channels),
            exchange=exchange or cfg.exchange.name,
            protocol=cfg.exchange.id,
            prefix=cfg.redis.prefix,
            ws_url=ws_url or cfg.exchange.ws_url or venue.default_ws_url,
            rest_url=rest_url
            or rest_base_from_urls(cfg.exchange.urls, venue.rest_api)
            or venue.default_rest_url,
            rest_timeout_s=cfg.exchange.timeout_s,
            batch_size=int(batch_size) if batch_size is not None else cfg.performance.ws_batch_size,
            batch_interval_s=float(batch_interval)
            if batch_interval is not None
            else cfg.performance.ws_batch_interval,
            **pick(st, "max_batch", "buffer_max", "stream_maxlen", "max_streams_per_connection"),
            **pick(st, "book_depth", "book_publish_interval_ms", "book_snapshot_limit", "repair_max_ids"),
            repair_weight_per_min=st.repair_weight_per_min,
            **pick(st, "repair_mode", "repair_hold_max", "repair_hold_max_s"),
            connection=ConnectionSettings(
                **pick(st, "watchdog_s", "max_frame_bytes"),
                **pick(st, min_backoff_s="reconnect_min_backoff_s", max_backoff_s="reconnect_max_backoff_s"),
            ),
            heartbeat_ttl_s=cfg.metrics.heartbeat_ttl_s if heartbeat else None,
            instance=cfg.metrics.instance,
            adapter=adapter,
            ccxt_config={
                "urls": cfg.exchange.urls,
                "options": cfg.exchange.options,
                "enableRateLimit": True,
                "timeout": int(cfg.exchange.timeout_s * 1000),
            },
            lease=lease,
        )
        self.metrics = StreamMetrics()
        self.metrics.on_batch = _chain(on_batch, monitor_hook(monitor) if monitor is not None else None)
        self.metrics.on_event = monitor_events(monitor) if monitor is not None else None
        if store_candles is None:
            store_candles = candle_store is not None or "database" in cfg.model_fields_set
        marks = any(c.startswith("markPrice") for c in options.channels)
        if store_funding is None:
            store_funding = store_candles and marks and venue.market_type == "swap"
        elif store_funding and not (marks and venue.market_type == "swap"):
            raise UsageError(
                "store_funding needs perpetuals (exchange.id 'binanceusdm') and a markPrice or "
                "markPrice@1s channel: add one to streaming.channels"
            )
        options.store_klines, options.store_funding = bool(store_candles), bool(store_funding)
        market_type = venue.market_type
        if venue.one_connection:  # one OKX or ccxt.pro streamer carries spot and swaps alike
            perps = {is_perpetual(s) for s in options.symbols}
            if store_candles and len(perps) > 1:
                raise UsageError(
                    "a streamer that stores candles streams spot symbols or perpetuals, not both: "
                    "run one streamer for each (or set store_candles=False)"
                )
            market_type = "swap" if perps == {True} else "spot"
        if store_trades is None:
            store_trades = st.store_trades
        if store_trades:
            check_store_trades(venue, options.channels, "database" in cfg.model_fields_set)
        sink = None
        if store_candles or store_funding or store_trades:
            # Here, not at the top: a streamer that stores no candles never loads the storage code.
            from data_collector.storage.store import StoreSettings

            sink = CandleSink(
                options.exchange,
                self.metrics,
                store=candle_store,
                store_settings=StoreSettings.from_config(cfg) if candle_store is None else None,
                market_type=market_type,
            )
        trades = None
        if store_trades and sink is not None:
            trades = trade_store_sink(
                cfg, venue, options.exchange, options.symbols, market_type, sink, self.metrics
            )
        self._service = StreamService(options, endpoint, self.metrics, sink, on_mark_price, trades)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_event = asyncio.Event()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        #: Set once the service has started (or failed to): ``start()`` waits for it.
        self._started = threading.Event()
        #: What stopped the streamer's thread or task, re-raised by start/get_metrics/stop.
        self._error: BaseException | None = None
        self._state = "new"

    @property
    def symbols(self) -> list[str]:
        return list(self._service.symbols)

    @property
    def channels(self) -> list[str]:
        return list(self._service.channels)

    @property
    def connected(self) -> bool:
        """True while every WebSocket connection and the Redis writer are up."""
        return self._service.connected

    @property
    def last_message_ms(self) -> int | None:
        """Wall-clock ms of the newest WebSocket message received (None: none yet)."""
        return self._service.last_message_ms

    def _claim(self) -> None:
        if self._state == "closed":
            raise ClosedError("this streamer was stopped; create a new one")
        if self._state != "new":
            raise UsageError("this streamer is already running")
        self._state = "running"

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._service.start()
            self._started.set()
            await self._stop_event.wait()
        except Exception as exc:
            self._error = exc
            raise
        finally:
            self._started.set()
            await self._service.close()
            self._state = "closed"
            if not self._done.done():
                self._done.set_result(None)

    def start(self) -> None:
        """Start streaming and return at once.

        Inside a running event loop the streamer becomes a task on that loop (stop it with
        ``await astop()``); otherwise it runs in a daemon thread with its own loop.
        """
        self._claim()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._main(), name="OptimizedWebSocketStreamer")
            return

        def thread_main() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(loop.create_task(self._main()))
            except BaseException:
                log.exception("the streamer thread stopped")
            finally:
                self._started.set()
                if not self._done.done():
                    self._done.set_result(None)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=thread_main, name="OptimizedWebSocketStreamer", daemon=True)
        self._thread.start()
        self._started.wait(timeout=10)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        """Re-raise what stopped the streamer's thread or task, so its death is never silent."""
        if self._error is not None:
            raise self._error

    async def run(self) -> None:
        """Stream in the foreground until :meth:`astop` is called or the task is cancelled."""
        self._claim()
        await self._main()

    def _request_stop(self) -> None:
        self._stop_event.set()

    async def astop(self) -> None:
        """Stop, flush what is queued to Redis (bounded by a timeout) and close; idempotent."""
        if self._state == "new":
            self._state = "closed"
            await self._service.close()
            return
        loop = self._loop
        current = asyncio.get_running_loop()
        if loop is None or loop is current:
            self._request_stop()
            await asyncio.wrap_future(self._done)
            self._raise_if_failed()
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(self._request_stop)
        await asyncio.wrap_future(self._done)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        self._raise_if_failed()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop from synchronous code; blocks until flushed and closed (at most ``timeout_s``).

        Called on the streamer's own event loop thread it cannot block: it then only requests
        the stop (use ``await astop()`` there).
        """
        if self._state == "new":
            self._state = "closed"
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self._raise_if_failed()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._request_stop()
            return
        loop.call_soon_threadsafe(self._request_stop)
        try:
            self._done.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            log.warning("the streamer did not stop within %.0f s", timeout_s)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._raise_if_failed()

    async def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """Wait until every connection is up (on any loop); False on timeout."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.connected:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def get_metrics(self) -> dict[str, Any]:
        """Counters and latencies; see the README's "Live streams to Redis" for each key.

        Raises:
            Exception: what stopped the streamer, if it died.
        """
        self._raise_if_failed()
        return self.metrics.snapshot(self._service.writer.queue_depth)

    def order_book(self, symbol: str) -> dict[str, Any] | None:
        """The full local order book of ``symbol`` while in sync (else ``None``)."""
        return self._service.order_book(symbol)

    async def __aenter__(self) -> OptimizedWebSocketStreamer:
        self.start()
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()
