"""The generic adapter: any other ccxt.pro exchange, through its ``watch_*_for_symbols`` methods."""
