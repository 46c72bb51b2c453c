"""The command line: argument parsing, printing, logging set-up, exit codes and signals.

The library never imports this package; ``scripts/`` are thin shims over it.
"""
