"""The collector's venues: spot through the ``exchange`` client, perpetuals through the futures one.

Binance budgets spot and USDⓈ-M futures separately (6,000 and 2,400 weight a minute), so each
venue has its own :class:`ExchangeClient` and hence its own rate limiter. The futures client is
opened on first use (a spot-only run never connects to it), from ``futures_exchange`` or what
:meth:`~data_collector.config.Config.futures_venue` derives. Each venue has its own label
(``instruments.exchange``): a perpetual's rows never pass for a spot pair's.

OKX is one API for spot and swaps, with one set of per-endpoint limits: its perpetuals go
through the spot client (one limiter) and carry its label (the symbols, ``BTC/USDT`` and
``BTC/USDT:USDT``, keep them apart), unless a ``futures_exchange`` section says otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from data_collector.backfill.exchange import ExchangeClient, ExchangeSettings
from data_collector.backfill.monitor import CollectorMonitor
from data_collector.config import Config, with_exchange
from data_collector.errors import InvalidSymbolError
from data_collector.markets import is_perpetual_symbol
from data_collector.venues import adapter_for


class Venues:
    """The spot client (given or built) and the futures client (given, or built on first use).

    Whoever builds a client here closes it in :meth:`close`; given clients stay the caller's.
    """

    def __init__(
        self,
        config: Config,
        monitor: CollectorMonitor,
        *,
        spot: ExchangeClient | None = None,
        futures: ExchangeClient | None = None,
        source_address: str | None = None,
        budget_for: Callable[[str, ExchangeClient], Any] | None = None,
    ) -> None:
        self.config = config
        #: Issue 17: the local address of this worker's requests, and the budget each client it
        #: builds shares with workers behind the same IP: ``budget_for(label, client)`` (a
        #: ``SharedWeightBudget``, ``SharedEndpointWindows`` or ``None``), asked once per client
        #: (spot and futures apart).
        self.source_address = source_address
        self.budget_for = budget_for
        self.monitor = monitor
        self.given = {c for c in (spot, futures) if c is not None}
        self.given_futures = futures
        self.spot: ExchangeClient | None = spot
        self.futures: ExchangeClient | None = futures
        self._futures_opened = False
        self._lock = asyncio.Lock()
        #: One client (and label) for spot and perpetuals: a venue with one API for both (OKX).
        self.one_client = adapter_for(config.exchange.id).one_client and config.futures_exchange is None

    async def open_spot(self) -> ExchangeClient:
        if self.spot is None:
            settings = replace(ExchangeSettings.from_config(self.config), source_address=self.source_address)
            self.spot = self._shared(
                self.config.exchange.name, ExchangeClient(settings, monitor=self.monitor)
            )
        if self.spot.monitor is None:
            self.spot.monitor = self.monitor
        await self.spot.open()
        return self.spot

    async def open_futures(self) -> ExchangeClient:
        async with self._lock:
            if self.futures is None:
                settings = replace(
                    ExchangeSettings.from_config(with_exchange(self.config, self.futures_section())),
                    section="futures_exchange",
                    source_address=self.source_address,
                )
                futures = ExchangeClient(settings, monitor=self.monitor)
                self.futures = self._shared(self.config.futures_venue().name, futures)
            if self.futures.monitor is None:
                self.futures.monitor = self.monitor
            if not self._futures_opened:
                await self.futures.open()
                self._futures_opened = True
            return self.futures

    def _shared(self, label: str, client: ExchangeClient) -> ExchangeClient:
        if self.budget_for is not None:
            client.shared_budget = self.budget_for(label, client)
        return client

    def futures_section(self) -> dict[str, object]:
        section = self.config.futures_venue().model_dump()
        for secret in ("api_key", "secret"):
            value = section.get(secret)
            section[secret] = value.get_secret_value() if value is not None else None
        return section

    async def client_for(self, symbol: str) -> ExchangeClient:
        """The client of ``symbol``'s venue, opened."""
        if is_perpetual_symbol(symbol) and not self.one_client:
            return await self.open_futures()
        return await self.open_spot()

    def label(self, symbol: str) -> str:
        """The venue label rows of ``symbol`` carry."""
        if is_perpetual_symbol(symbol) and not self.one_client:
            return self.config.futures_venue().name
        return self.config.exchange.name

    def opened(self) -> list[ExchangeClient]:
        """The clients open now (for request figures)."""
        out = [self.spot] if self.spot is not None else []
        if self.futures is not None and self._futures_opened:
            out.append(self.futures)
        return out

    async def listed(self, symbols: Sequence[str]) -> list[str]:
        """The ``symbols`` their venue lists; the others fail as pairs, and the rest go on.

        Raises:
            InvalidSymbolError: no venue lists any of them.
        """
        clients = {s: await self.client_for(s) for s in symbols}
        listed = [s for s in symbols if s in clients[s].markets]
        if not listed and symbols:
            unknown = ", ".join(repr(s) for s in symbols)
            which = "it" if len(symbols) == 1 else "any of them"
            names = sorted({c.id for c in clients.values()})
            raise InvalidSymbolError(f"unknown symbol {unknown}: {' / '.join(names)} does not list {which}")
        return listed

    async def close(self) -> None:
        """Close the clients built here; safe to call twice."""
        spot, futures, self.spot, self.futures = self.spot, self.futures, None, None
        for client in (spot, futures):
            if client is not None and client not in self.given:
                await client.close()
