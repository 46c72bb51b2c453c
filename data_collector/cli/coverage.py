"""``data-collector coverage``: the coverage map of the configured store, as text, PNG or HTML.

    data-collector coverage [--config config.yaml] [--venue binance] [--symbols SOL/USDT,BTC/USDT]
        [--timeframes 1m,1h] [--since 2024-01-01|180d] [--until ...] [--cell auto|hour|day|week]
        [--no-holes] [--html out.html] [--png out.png]

It prints one summary line per row and writes the files asked for. Exit codes: 0 done; 1 the
database is unreachable; 2 a bad option, a bad config, or an optional package missing
(``--png`` needs matplotlib: ``pip install 'data-collector[coverage]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from data_collector.cli.exits import EXIT_OK, EXIT_USAGE, error_exit_code
from data_collector.cli.parser import OneLineParser
from data_collector.config import Config, load_config
from data_collector.coverage import CoverageMap, build_coverage_map
from data_collector.coverage.render import INSTALL_HINT
from data_collector.errors import CollectorError
from data_collector.storage import open_store


def parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="config file (default: ./config.yaml if present)")
    parser.add_argument(
        "--venue", action="append", default=[], help="venue label (repeatable; default: exchange.name)"
    )
    parser.add_argument("--symbols", help="comma-separated symbols (default: every one with coverage)")
    parser.add_argument("--timeframes", help="comma-separated timeframes (default: every one with coverage)")
    parser.add_argument("--since", help="start: ISO date or relative (180d); default: the oldest coverage")
    parser.add_argument("--until", help="end: ISO date or relative; default: the newest coverage")
    parser.add_argument("--cell", default="auto", choices=("auto", "hour", "day", "week"), help="cell size")
    parser.add_argument(
        "--no-holes", action="store_true", help="read the coverage record only, count no candles"
    )
    parser.add_argument("--html", type=Path, help="write a self-contained HTML map here")
    parser.add_argument("--png", type=Path, help="write a PNG map here (needs matplotlib)")
    return parser.parse_args(argv)


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


async def read_map(config: Config, args: argparse.Namespace) -> CoverageMap:
    """Open the configured store, build the map, close the store."""
    venues = args.venue or [config.exchange.name]
    async with open_store(config) as store:
        return await build_coverage_map(
            store,
            venues,
            symbols=_split(args.symbols),
            timeframes=_split(args.timeframes),
            since=args.since,
            until=args.until,
            cell=args.cell,
            check_holes=not args.no_holes,
        )


def main(argv: list[str] | None = None, prog: str = "data-collector coverage") -> int:
    """Print the map's summary and write the files asked for; return the exit code."""
    args = parse_args(argv, prog)
    # Before anything is read: a missing optional package is one line, not a traceback later.
    if args.png is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"error: --png needs matplotlib, which is not installed: {INSTALL_HINT}", file=sys.stderr)
            return EXIT_USAGE
    try:
        config = load_config(args.config)
        cover = asyncio.run(read_map(config, args))
        print(cover.summary(), flush=True)
        if args.html is not None:
            print(f"wrote {cover.save_html(args.html)}", flush=True)
        if args.png is not None:
            print(f"wrote {cover.save_png(args.png)}", flush=True)
    except CollectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return error_exit_code(exc)
    except OSError as exc:
        print(f"error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
