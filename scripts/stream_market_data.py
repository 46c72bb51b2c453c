"""Stream live market data into Redis (streaming only: no backfill, no ccxt, no pandas).

    python scripts/stream_market_data.py --symbols SOL/USDT,BTC/USDT --channels trade,depth
    python scripts/stream_market_data.py --demo --duration 30     # the simulator, in-process

Ctrl-C stops it and prints a metrics summary.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _list(text: str) -> list[str]:
    return [part for chunk in text.split(",") for part in chunk.split() if part]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad input: one line on stderr (``--help`` shows the usage), exit code 2."""
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog="stream_market_data.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--symbols", type=_list, help="comma-separated, e.g. SOL/USDT,BTC/USDT (default: config)"
    )
    parser.add_argument(
        "--channels", type=_list, help="trade, aggTrade, bookTicker, depth, kline_<tf> (default: config)"
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
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    if args.status_interval < 0:
        parser.error("--status-interval must be >= 0")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be within 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"error: unknown --log-level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from data_collector.cli.stream import run_stream_main

    return run_stream_main(
        config=args.config,
        symbols=args.symbols,
        channels=args.channels,
        demo=args.demo,
        status_interval_s=args.status_interval,
        duration_s=args.duration,
        metrics_port=args.metrics_port,
    )


if __name__ == "__main__":
    sys.exit(main())
