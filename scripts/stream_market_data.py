"""Stream live market data into Redis: ``--help`` for the options.

The command lives in :mod:`data_collector.cli.stream`.

A thin shim: it imports the installed package (``pip install -r requirements.txt`` in the
checkout installs it, editable), with no ``sys.path`` edits. Installed, the same command is
``data-collector stream``.
"""

from __future__ import annotations

import sys

from data_collector.cli.stream import main

if __name__ == "__main__":
    sys.exit(main())
