"""The OKX v5 venue of the simulator (REST and WebSocket) over the shared market model."""

from data_collector.simulator.okx.server import OKX_CCXT_OPTIONS, OkxServer, OkxSettings
from data_collector.simulator.okx.venue import OkxVenue

__all__ = ["OKX_CCXT_OPTIONS", "OkxServer", "OkxSettings", "OkxVenue"]
