#!/usr/bin/env python3
"""Check that a data_collector deployment is healthy: ``--help`` for the options.

The command lives in :mod:`data_collector.cli.health`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_collector.cli.health import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
