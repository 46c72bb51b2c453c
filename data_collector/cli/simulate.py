"""Command line of the simulator: parse arguments, run until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import errno
import sys
from collections.abc import Sequence

from data_collector.cli.exits import EXIT_OK, EXIT_USAGE, install_stop_signals, remove_signals
from data_collector.errors import CollectorError
from data_collector.markets import normalize_symbols
from data_collector.picking import pick
from data_collector.simulator.limits import Faults
from data_collector.simulator.server import SimulatedExchange


class ArgumentError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgumentError(message)


def build_parser(prog: str = "simulate_exchange.py") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Serve a local, deterministic Binance-compatible exchange (REST + WebSocket).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0 picks a free one)")
    p.add_argument("--symbols", default="BTC/USDT,SOL/USDT", help="comma-separated BASE/QUOTE symbols")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--weight-limit", type=int, default=6000, help="request weight per minute")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of a 5xx answer")
    p.add_argument("--reset-rate", type=float, default=0.0, help="probability of a connection reset")
    p.add_argument("--hang-rate", type=float, default=0.0, help="probability of a request that hangs")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="probability of a malformed body")
    p.add_argument("--ws-rate", type=float, default=10.0, help="messages/s per trade and bookTicker stream")
    p.add_argument("--no-gaps", action="store_true", help="no maintenance gaps")
    return p


def parse_args(
    argv: Sequence[str] | None, prog: str = "simulate_exchange.py"
) -> tuple[argparse.Namespace, dict[str, object]]:
    """Parse and validate; raise ``ArgumentError`` with a one-line reason."""
    args = build_parser(prog).parse_args(argv)
    try:
        symbols = normalize_symbols(s for s in args.symbols.split(",") if s.strip())
        if not symbols:
            raise ArgumentError("--symbols: give at least one symbol, e.g. BTC/USDT")
        rates = ("error_rate", "reset_rate", "hang_rate", "malformed_rate")
        faults = Faults(**pick(args, "latency_ms", "jitter_ms", *rates)).validate()
    except CollectorError as exc:
        raise ArgumentError(str(exc)) from None
    if not 0 <= args.port <= 65535:
        raise ArgumentError(f"--port must be in 0..65535, got {args.port}")
    if args.weight_limit <= 0:
        raise ArgumentError(f"--weight-limit must be > 0, got {args.weight_limit}")
    if args.ws_rate < 0:
        raise ArgumentError(f"--ws-rate must be >= 0, got {args.ws_rate}")
    kwargs: dict[str, object] = {
        "symbols": symbols,
        "seed": args.seed,
        "weight_limit": args.weight_limit,
        "host": args.host,
        "port": args.port,
        "ws_rate": args.ws_rate,
        "faults": faults,
        "gaps": {} if args.no_gaps else None,
    }
    return args, kwargs


async def serve(kwargs: dict[str, object]) -> None:
    """Run a simulator until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = install_stop_signals(loop, stop.set)
    sim = SimulatedExchange(**kwargs)  # type: ignore[arg-type]
    try:
        await sim.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ArgumentError(f"port {kwargs['port']} on {kwargs['host']} is already in use") from None
        raise ArgumentError(f"cannot listen on {kwargs['host']}:{kwargs['port']}: {exc.strerror}") from None
    try:
        print(f"REST {sim.rest_url}", flush=True)
        print(f"WS   {sim.ws_url}", flush=True)
        await stop.wait()
    finally:
        await sim.close()
        remove_signals(loop, installed)


def main(argv: Sequence[str] | None = None, prog: str = "simulate_exchange.py") -> int:
    """Entry point: exit code 0 on Ctrl-C, 2 on bad input; ``prog`` names it in ``--help``."""
    try:
        _args, kwargs = parse_args(argv, prog)
        asyncio.run(serve(kwargs))
    except ArgumentError as exc:
        print(f"simulate_exchange: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK
