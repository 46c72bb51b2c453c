"""Run the local Binance-compatible exchange simulator until Ctrl-C.

python scripts/simulate_exchange.py --host 127.0.0.1 --port 8080 --symbols SOL/USDT,BTC/USDT --seed 42

A thin shim: it imports the installed package (``pip install -r requirements.txt`` in the
checkout installs it, editable), with no ``sys.path`` edits. Installed, the same command is
``data-collector simulate``.
"""

from __future__ import annotations

import sys

from data_collector.cli.simulate import main

if __name__ == "__main__":
    sys.exit(main())
