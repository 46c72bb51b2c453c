import sys

from benchmarks.harness import run_cli

sys.exit(run_cli())
