"""A local, deterministic Binance exchange (spot and USDⓈ-M perpetuals, REST + WebSocket) for tests, benchmarks and demos."""

from __future__ import annotations

from data_collector.simulator.limits import Faults, SimClock
from data_collector.simulator.market import SymbolMarket
from data_collector.simulator.perp import PerpMarket
from data_collector.simulator.server import CCXT_OPTIONS, FUTURES_VENUE_NAME, SimulatedExchange
from data_collector.simulator.usdm import FuturesVenue

__all__ = [
    "CCXT_OPTIONS",
    "FUTURES_VENUE_NAME",
    "Faults",
    "FuturesVenue",
    "PerpMarket",
    "SimClock",
    "SimulatedExchange",
    "SymbolMarket",
]
