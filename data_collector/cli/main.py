"""``data-collector``: the installed command, one subcommand per script in ``scripts/``.

    data-collector collect [...]    backfill OHLCV into the configured database (scripts/optimized_collection.py)
    data-collector worker [...]     take backfill jobs of `collect --distributed` runs (issue 17)
    data-collector demo [...]       the backfill against the in-process simulator (collect --demo)
    data-collector stream [...]     live market data into Redis (scripts/stream_market_data.py)
    data-collector health [...]     check a deployment (scripts/health_check.py)
    data-collector simulate [...]   serve the exchange simulator (scripts/simulate_exchange.py)
    data-collector coverage [...]   the coverage map of the store: text, --png, --html
    data-collector archive [...]    move closed months to the Parquet tier (--older-than 90d [--prune])
    data-collector migrate-partitions [...]  move plain ohlcv and trades tables into monthly partitions (resumable)
    data-collector --version

``data-collector COMMAND --help`` shows a command's options. Each command keeps its script's exit
codes: 0 done, 1 runtime failure, 2 usage or configuration error, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from data_collector import __version__
from data_collector.cli.parser import OneLineParser
from data_collector.echo import shown_input

PROG = "data-collector"


def _collect(argv: list[str]) -> int:
    from data_collector.cli.optimized_collection import main

    return main(argv, prog=f"{PROG} collect")


def _worker(argv: list[str]) -> int:
    from data_collector.cli.distributed import worker_main

    return worker_main(argv, prog=f"{PROG} worker")


def _demo(argv: list[str]) -> int:
    from data_collector.cli.optimized_collection import main

    return main(["--demo", *argv], prog=f"{PROG} demo")


def _stream(argv: list[str]) -> int:
    from data_collector.cli.stream import main

    return main(argv, prog=f"{PROG} stream")


def _health(argv: list[str]) -> int:
    from data_collector.cli.health import main

    return main(argv, prog=f"{PROG} health")


def _simulate(argv: list[str]) -> int:
    from data_collector.cli.simulate import main

    return main(argv, prog=f"{PROG} simulate")


def _coverage(argv: list[str]) -> int:
    from data_collector.cli.coverage import main

    return main(argv, prog=f"{PROG} coverage")


def _archive(argv: list[str]) -> int:
    from data_collector.cli.archive import main

    return main(argv, prog=f"{PROG} archive")


def _migrate_partitions(argv: list[str]) -> int:
    from data_collector.cli.migrate import main

    return main(argv, prog=f"{PROG} migrate-partitions")


#: Subcommand -> runner. Each imports its module on use, so ``--version`` and ``--help`` stay quick.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "collect": _collect,
    "worker": _worker,
    "demo": _demo,
    "stream": _stream,
    "health": _health,
    "simulate": _simulate,
    "coverage": _coverage,
    "archive": _archive,
    "migrate-partitions": _migrate_partitions,
}


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {__version__}", help="print the version and exit"
    )
    parser.add_argument("command", metavar="COMMAND", choices=COMMANDS, help=", ".join(COMMANDS))
    parser.add_argument("args", metavar="ARGS", nargs="*", help="the command's own options (COMMAND --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``data-collector COMMAND ...``; return the command's exit code (2 on bad usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not args:
        parser.error(f"give a command: {', '.join(COMMANDS)}")
    if args[0] in ("-h", "--help", "--version"):
        parser.parse_args(args[:1])  # prints and exits 0
    if args[0].startswith("-"):
        parser.error(f"unknown option {shown_input(args[0])}; give a command first: {', '.join(COMMANDS)}")
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        parser.error(f"unknown command {shown_input(command)}; use one of {', '.join(COMMANDS)}")
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
