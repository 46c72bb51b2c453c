"""A local, deterministic Binance exchange (spot and USDⓈ-M perpetuals, REST + WebSocket), and OKX v5 beside it, for tests, benchmarks and demos."""

from __future__ import annotations

from data_collector.simulator.limits import Faults, SimClock
from data_collector.simulator.market import SymbolMarket
from data_collector.simulator.okx import OkxSettings
from data_collector.simulator.perp import PerpMarket
from data_collector.simulator.server import CCXT_OPTIONS, FUTURES_VENUE_NAME, SimulatedExchange
from data_collector.simulator.usdm import FuturesVenue

__all__ = [
    "CCXT_OPTIONS",
    "FUTURES_VENUE_NAME",
    "Faults",
    "FuturesVenue",
    "OkxSettings",
    "PerpMarket",
    "SimClock",
    "SimulatedExchange",
    "SymbolMarket",
]
