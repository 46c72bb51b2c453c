"""Run the local Binance-compatible exchange simulator until Ctrl-C.

python scripts/simulate_exchange.py --host 127.0.0.1 --port 8080 --symbols SOL/USDT,BTC/USDT --seed 42
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_collector.cli.simulate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
