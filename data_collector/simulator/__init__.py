"""A local, deterministic Binance spot exchange (REST + WebSocket) for tests, benchmarks and demos."""

from __future__ import annotations

from data_collector.simulator.limits import Faults, SimClock
from data_collector.simulator.market import SymbolMarket
from data_collector.simulator.server import CCXT_OPTIONS, SimulatedExchange

__all__ = ["CCXT_OPTIONS", "Faults", "SimClock", "SimulatedExchange", "SymbolMarket"]
