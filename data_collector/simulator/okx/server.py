"""The OKX side of a simulator: one aiohttp server (REST under ``/api/v5``, WebSocket under
``/ws/v5/public`` and ``/ws/v5/business``) on its own port, over an :class:`OkxVenue`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from data_collector.simulator.okx.rest import LIMITS, EndpointLimiter, OkxRestApi
from data_collector.simulator.okx.venue import OkxVenue
from data_collector.simulator.okx.ws import OkxHub

if TYPE_CHECKING:
    from data_collector.simulator.server import SimulatedExchange


@dataclass
class OkxSettings:
    """How a simulator's OKX venue behaves (``SimulatedExchange(okx=OkxSettings(...))``).

    Spot instruments are the simulator's ``symbols``; ``swaps`` adds perpetual swaps
    (``BTC/USDT`` or ``BTC/USDT:USDT``). The other fields are :class:`OkxServer`'s.
    """

    swaps: list[str] = field(default_factory=list)
    port: int = 0
    limits: dict[str, int] | None = None
    history_candles_max: int = 100
    idle_timeout_s: float = 30.0
    sliding_limits: bool = False


#: ccxt options that keep ``okx.load_markets`` to two requests (SPOT and SWAP instruments).
OKX_CCXT_OPTIONS: dict[str, Any] = {"fetchMarkets": {"types": ["spot", "swap"]}}


class OkxServer:
    """Serves one :class:`OkxVenue` for a :class:`SimulatedExchange` (``sim.okx``).

    Args:
        sim: the owning simulator (outages, host).
        venue: the instruments.
        port: TCP port, 0 for any free one.
        limits: per-endpoint requests per 2 s window and client IP, over :data:`LIMITS`.
        history_candles_max: the most candles one ``history-candles`` answer holds.
        idle_timeout_s: a WebSocket with no traffic either way this long is closed (OKX: 30).
        sliding_limits: count the limits over the 2 s before each request, not fixed 2 s windows.
    """

    def __init__(
        self,
        sim: SimulatedExchange,
        venue: OkxVenue,
        port: int = 0,
        limits: dict[str, int] | None = None,
        history_candles_max: int = 100,
        idle_timeout_s: float = 30.0,
        sliding_limits: bool = False,
    ) -> None:
        self.sim = sim
        self.venue = venue
        self.port = port
        self.limiter = EndpointLimiter({**LIMITS, **(limits or {})}, sliding=sliding_limits)
        self.history_candles_max = history_candles_max
        self.hub = OkxHub(self, idle_timeout_s=idle_timeout_s)
        self.stats: Counter[str] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.status_429: Counter[str] = Counter()
        #: Requests and 429s by client IP (the limits count per IP).
        self.by_ip: Counter[str] = Counter()
        self.status_429_by_ip: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        api = OkxRestApi(self)
        app = web.Application(middlewares=[api.middleware])
        api.add_routes(app)
        app.router.add_get("/ws/v5/public", self._ws_public)
        app.router.add_get("/ws/v5/business", self._ws_business)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.sim.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.hub.start()

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _ws_public(self, request: web.Request) -> web.StreamResponse:
        return await self.hub.handle(request, business=False)

    async def _ws_business(self, request: web.Request) -> web.StreamResponse:
        return await self.hub.handle(request, business=True)

    @property
    def rest_url(self) -> str:
        return f"http://{self.sim.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port/ws/v5`` (ccxt.pro appends ``/public`` or ``/business``)."""
        return f"ws://{self.sim.host}:{self.port}/ws/v5"

    def ccxt_config(self) -> dict[str, Any]:
        """Constructor config for ``ccxt.async_support.okx`` and ``ccxt.pro.okx``."""
        return {
            "urls": {"api": {"rest": self.rest_url, "ws": self.ws_url}},
            "options": {"fetchMarkets": {"types": ["spot", "swap"]}},
            "enableRateLimit": True,
        }

    def requests(self) -> dict[str, Any]:
        """Counters: requests, 429s (total, per endpoint and per client IP), requests per endpoint
        and per client IP."""
        return {
            "requests": self.stats["requests"],
            "429": self.stats["429"],
            "429_by_endpoint": dict(self.status_429),
            "429_by_ip": dict(self.status_429_by_ip),
            "endpoints": dict(self.by_endpoint),
            "by_ip": dict(self.by_ip),
        }
