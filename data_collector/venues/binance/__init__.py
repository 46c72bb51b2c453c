"""Binance (spot ``binance`` and USDⓈ-M ``binanceusdm``): everything Binance-specific."""
