"""The streaming command line, as an importable coroutine (scripts only parse arguments).

``python scripts/stream_market_data.py --symbols SOL/USDT --demo`` and the collector's
``--stream`` option both end up in :func:`run_stream_cli`: it runs the streamer until Ctrl-C (or
``duration_s``), prints a one-line status every ``status_interval_s`` and a summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from data_collector.cli.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    install_stop_signals,
    remove_signals,
)
from data_collector.cli.parser import OneLineParser, log_level
from data_collector.cli.stream_shards import run_shard_host, run_until
from data_collector.config import Config, load_config, with_exchange
from data_collector.errors import CollectorError, UsageError
from data_collector.markets import is_perpetual, normalize_markets
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.picking import pick
from data_collector.redis.client import RedisEndpoint
from data_collector.streaming.normalize import validate_channel
from data_collector.venues import StreamVenue, stream_venue
from data_collector.venues.binance.venue import venue_for_symbols

log = logging.getLogger(__name__)

#: Messages per second per trade/bookTicker stream of the ``--demo`` simulator.
DEMO_WS_RATE = 50.0


def status_line(metrics: dict[str, Any]) -> str:
    """One line for a terminal or a log."""
    p99 = metrics["latency_ms"]["event_to_redis"]["p99"]
    return (
        f"{time.strftime('%H:%M:%S')} written {metrics['written']:,} "
        f"({metrics['messages_per_second']:,.0f} msg/s, p99 {'-' if p99 is None else f'{p99:.1f}'} ms) "
        f"queue {metrics['queue_depth']:,} | reconnects {metrics['reconnects']} gaps {metrics['gaps']} "
        f"book resyncs {metrics['book_resyncs']} | dropped {metrics['dropped']:,} "
        f"malformed {metrics['malformed']:,} redis errors {metrics['redis_errors']:,}"
    )


def summary(metrics: dict[str, Any]) -> str:
    """The final multi-line metrics summary."""
    lat = metrics["latency_ms"]
    lines = ["stream summary:"]
    for name in ("event_to_redis", "receive_to_redis"):
        p = lat[name]
        lines.append(
            f"  latency {name.replace('_', ' ')}: p50 {p['p50']} / p95 {p['p95']} / p99 {p['p99']} ms"
        )
    for key, value in metrics.items():
        if key != "latency_ms":
            lines.append(
                f"  {key.replace('_', ' ')}: {value:,}" if isinstance(value, int) else f"  {key}: {value}"
            )
    return "\n".join(lines)


async def run_stream_cli(
    *,
    config: Config | dict[str, Any] | str | None = None,
    symbols: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    demo: bool = False,
    status_interval_s: float = 5.0,
    duration_s: float | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
    monitor: Any = None,
    metrics_port: int | None = None,
    shard_group: str | None = None,
    host_id: str | None = None,
) -> dict[str, Any]:
    """Stream until Ctrl-C/SIGTERM, ``duration_s`` or ``stop``; return the final metrics.

    Args:
        config: the collector's config (path, dict or Config).
        symbols: default: the config's ``symbols``.
        channels: default: ``streaming.channels``.
        demo: stream from an in-process simulator instead of the exchange (its USDⓈ-M futures
            when the symbols are perpetuals, ``BTC/USDT:USDT``).
        status_interval_s: seconds between status lines (0 for none).
        duration_s: stop after this long (``None``: until interrupted).
        out: where status lines go (default stdout).
        stop: an event that ends the run when set.
        monitor: a PerformanceMonitor to feed (see ``OptimizedWebSocketStreamer``); the
            process-wide one when ``/metrics`` is served and none is given.
        metrics_port: serve Prometheus ``/metrics`` on this port (0: any free port), on
            ``metrics.host``; default ``metrics.port`` (unset: not served).
        shard_group: stream as one host of this shard group (:mod:`data_collector.distributed.shards`):
            only the shards of the symbols this host holds a lease on; the final metrics are
            then the sums over its shard streamers.
        host_id: this host's name in the shard group; default ``<hostname>-<pid>``.

    Raises:
        UsageError: bad symbols, channels or config.
        ServerUnavailableError: Redis cannot be reached at start.
    """
    cfg = load_config(config)
    wanted = normalize_markets(symbols or cfg.symbols)
    venue = venue_for_symbols(wanted) if demo else stream_venue(cfg.exchange.id, cfg.streaming.adapter)
    if len({is_perpetual(s) for s in wanted}) > 1 and not venue.one_connection:
        raise UsageError("spot symbols and perpetuals stream in separate runs: one venue per streamer")
    for symbol in wanted:
        venue.check_symbol(symbol)
    if shard_group is not None:
        from data_collector.distributed.shards import heartbeat_instance
        from data_collector.heartbeat import default_instance

        host_id = host_id or default_instance()
        heartbeat_instance(shard_group, host_id)  # refused here, before anything connects
        if demo:
            raise UsageError("--shard-group streams from the configured exchange, not --demo")
    for channel in channels or cfg.streaming.channels:
        try:
            validate_channel(channel, venue.channels)
        except UsageError as exc:
            raise UsageError(f"{venue.protocol}: {exc}") from None
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = install_stop_signals(loop, stop.set)

    endpoint = RedisEndpoint.from_any(
        cfg.redis.url.get_secret_value(),
        socket_timeout_s=cfg.redis.socket_timeout_s,
        connect_timeout_s=cfg.redis.connect_timeout_s,
    )
    probe = await endpoint.connect()
    await probe.close()

    sim: Any = None
    server: Any = None
    try:
        port = metrics_port if metrics_port is not None else cfg.metrics.port
        if port is not None:
            # Imported only when asked for: numpy and prometheus_client cost a streamer ~13 MB.
            from utils.performance_monitor import get_default_monitor, serve_metrics

            monitor = monitor if monitor is not None else get_default_monitor()
            server = serve_metrics(port, monitor, host=cfg.metrics.host)
            if server is not None:
                print(f"metrics at {server.url}", file=out, flush=True)

        if demo:
            from data_collector.simulator import SimulatedExchange

            perpetuals = [s for s in wanted if is_perpetual(s)]
            sim = SimulatedExchange(
                symbols=[s.partition(":")[0] for s in wanted],
                perpetuals=perpetuals,
                seed=42,
                ws_rate=DEMO_WS_RATE,
            )
            await sim.start()
            # The simulator's sections label every key 'sim-binance' (or 'sim-binanceusdm'):
            # demo data never lands under the real venue's keys.
            if perpetuals:
                cfg = with_exchange(cfg, sim.futures_exchange_config())
                print(f"demo: simulator's USDⓈ-M futures at {sim.futures_rest_url}", file=out, flush=True)
            else:
                cfg = with_exchange(cfg, sim.exchange_config())
                print(f"demo: simulator at {sim.rest_url}", file=out, flush=True)
        ccxt_config = {"urls": cfg.exchange.urls, "options": cfg.exchange.options}
        if shard_group is not None:
            listed = [venue.check_symbol(s) for s in wanted]
            await check_listed({**ccxt_config, "timeout": int(cfg.exchange.timeout_s * 1000)}, listed, venue)
            return await run_shard_host(
                cfg,
                endpoint,
                listed,
                channels,
                shard_group,
                host_id,
                stop,
                out,
                status_interval_s,
                duration_s,
            )
        streamer = OptimizedWebSocketStreamer(
            symbols=symbols,
            channels=channels,
            config=cfg,
            store_candles=False if demo else None,
            monitor=monitor,
        )
        await check_listed(
            {**ccxt_config, "timeout": int(cfg.exchange.timeout_s * 1000)}, streamer.symbols, venue
        )
        print(
            f"streaming {', '.join(streamer.channels)} for {', '.join(streamer.symbols)} "
            f"into Redis {endpoint.describe()} under {cfg.redis.prefix}:*:{cfg.exchange.name}:*; Ctrl-C stops",
            file=out,
            flush=True,
        )
        streamer.start()
        try:
            await run_until(
                stop.wait,
                lambda: not stop.is_set(),
                duration_s,
                status_interval_s,
                lambda: status_line(streamer.get_metrics()),
                out,
            )
        finally:
            await streamer.astop()
        metrics = streamer.get_metrics()
        print(summary(metrics), file=out, flush=True)
        return metrics
    finally:
        if sim is not None:
            await sim.close()
        if server is not None:
            server.close()
        remove_signals(loop, installed)


async def check_listed(config: Mapping[str, Any], symbols: Sequence[str], venue: StreamVenue) -> None:
    """Refuse, before connecting, a symbol the exchange does not list (its streams stay silent).

    The venue's adapter says how to ask (``StreamVenue.listed_ids``: Binance's ``exchangeInfo``,
    OKX's ``public/instruments``, ccxt.pro's ``load_markets``). An exchange that cannot be asked now is no reason to refuse:
    the streamer reconnects until it answers, so that is logged and the run goes on.

    Args:
        config: the venue's ccxt constructor config (``urls``, ``options``, ``timeout``).

    Raises:
        UsageError: names the first symbol the exchange does not list.
    """
    if venue.listed_ids is None:
        log.warning("symbols not checked against %s's list before streaming", venue.protocol)
        return
    try:
        where, listed = await venue.listed_ids(config, venue)
    except CollectorError as exc:
        log.warning("symbols not checked against the exchange's list: %s", exc)
        return
    for symbol in symbols:
        if venue.native_id(symbol) not in listed:
            raise UsageError(f"unknown symbol {symbol!r}: {where} does not list it")


def run_stream_main(**kwargs: Any) -> int:
    """Run :func:`run_stream_cli` to the end in a new event loop (uvloop when installed).

    For scripts: errors become one line on stderr and an exit code: 0 done, 1 a server is
    unreachable, 2 bad input, 130 stopped by Ctrl-C/SIGTERM.
    """
    # Set by Ctrl-C/SIGTERM (and by nothing else here): how an interrupted run is told from one
    # that reached its --duration.
    stop = kwargs.setdefault("stop", asyncio.Event())
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run_stream_cli(**kwargs))
        else:
            uvloop.run(run_stream_cli(**kwargs))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if stop.is_set() else EXIT_OK


STREAM_HELP = """Stream live market data into Redis (streaming only: no backfill, no ccxt, no pandas).

    python scripts/stream_market_data.py --symbols SOL/USDT,BTC/USDT --channels trade,depth
    python scripts/stream_market_data.py --demo --duration 30     # the simulator, in-process

Ctrl-C stops it and prints a metrics summary.
"""


def _list(text: str) -> list[str]:
    return [part for chunk in text.split(",") for part in chunk.split() if part]


def parse_args(argv: list[str] | None = None, prog: str = "stream_market_data.py") -> argparse.Namespace:
    parser = OneLineParser(prog=prog, description=STREAM_HELP.split("\n")[0])
    parser.add_argument(
        "--symbols",
        type=_list,
        help="comma-separated, e.g. SOL/USDT,BTC/USDT, or perpetuals BTC/USDT:USDT (default: config)",
    )
    parser.add_argument(
        "--channels",
        type=_list,
        help="trade, aggTrade, bookTicker, depth, kline_<tf>; perpetuals also markPrice, markPrice@1s, "
        "forceOrder (default: config)",
    )
    parser.add_argument("--config", help="config.yaml path (default: ./config.yaml when present)")
    parser.add_argument("--demo", action="store_true", help="stream from an in-process exchange simulator")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--status-interval", type=float, default=5.0, help="seconds between status lines")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default: metrics.port of the config; unset: off)",
    )
    parser.add_argument(
        "--shard-group",
        metavar="NAME",
        help="stream as one host of this shard group: the symbols are shared out over the group's "
        "live hosts by Redis leases (streaming.shard_symbols, streaming.shard_lease_s)",
    )
    parser.add_argument(
        "--host-id", metavar="NAME", help="this host's name in the shard group (default: <hostname>-<pid>)"
    )
    parser.add_argument(
        "--log-level", type=log_level, default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR"
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.status_interval < 0:
        parser.error("--status-interval must be >= 0")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be within 0..65535")
    return args


def main(argv: list[str] | None = None, prog: str = "stream_market_data.py") -> int:
    """Run the stream command; ``prog`` names it in ``--help`` and errors."""
    args = parse_args(argv, prog)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    named = pick(args, "config", "symbols", "channels", "demo", "metrics_port", "shard_group", "host_id")
    return run_stream_main(**named, status_interval_s=args.status_interval, duration_s=args.duration)
