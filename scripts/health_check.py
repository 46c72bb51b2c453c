#!/usr/bin/env python3
"""Check that a data_collector deployment is healthy: ``--help`` for the options.

The command lives in :mod:`data_collector.cli.health`.

A thin shim: it imports the installed package (``pip install -r requirements.txt`` in the
checkout installs it, editable), with no ``sys.path`` edits. Installed, the same command is
``data-collector health``.
"""

from __future__ import annotations

import sys

from data_collector.cli.health import main

if __name__ == "__main__":
    sys.exit(main())
