#!/usr/bin/env python3
"""Backfill historical OHLCV candles into the configured database: ``--help`` for the options.

The command lives in :mod:`data_collector.cli.optimized_collection`.

A thin shim: it imports the installed package (``pip install -r requirements.txt`` in the
checkout installs it, editable), with no ``sys.path`` edits. Installed, the same command is
``data-collector collect``.
"""

from __future__ import annotations

import sys

from data_collector.cli.optimized_collection import main

if __name__ == "__main__":
    sys.exit(main())
