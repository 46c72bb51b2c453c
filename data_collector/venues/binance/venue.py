"""Binance's streaming protocols: spot (``binance``) and USDⓈ-M futures (``binanceusdm``).

:mod:`.parts` builds a streamer's combined-stream connections, book keeper and normalisers from
the shared machinery (:mod:`data_collector.streaming.connection`, ``normalize`` and
``order_book``, written for Binance first).

The venue follows ``exchange.id`` (the ccxt class): ``binance`` streams spot symbols
(``SOL/USDT``) from ``stream.binance.com`` and ``api.binance.com``; ``binanceusdm`` streams
perpetuals (``BTC/USDT:USDT``) from ``fstream.binance.com`` and ``fapi.binance.com``. Everything
that differs between the two lives here, and nowhere else:

- the REST path prefix (``/api/v3`` or ``/fapi/v1``) and the default hosts;
- the channels (futures add ``markPrice``, ``markPrice@1s`` and ``forceOrder``);
- the order-book rule. Spot: the first diff after the snapshot has ``U <= lastUpdateId + 1 <= u``
  and each later one ``U == previous u + 1``. USDⓈ-M (Binance's "How to manage a local order book
  correctly"): drop diffs with ``u < lastUpdateId``, the first has ``U <= lastUpdateId <= u``, and
  each later one carries ``pu`` equal to the previous diff's ``u``;
- the depth snapshot sizes (USDⓈ-M serves 5, 10, 20, 50, 100, 500 or 1000 levels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from data_collector.markets import is_perpetual
from data_collector.venues.stream import StreamVenue

if TYPE_CHECKING:
    from data_collector.streaming.trade_sources import TradeSource
    from data_collector.venues.binance.rest import BinanceRest


async def listed_ids(config: Mapping[str, Any], venue: StreamVenue) -> tuple[str, set[str]]:
    """``<api>/exchangeInfo``: where it asked, and the symbols as Binance spells them (``SOLUSDT``)."""
    from data_collector.venues.binance.rest import BinanceRest, rest_base_from_urls

    url = rest_base_from_urls(dict(config.get("urls") or {}), venue.rest_api) or venue.default_rest_url
    rest = BinanceRest(url, api=venue.rest_api)
    try:
        return f"the exchange at {url}", await rest.listed_symbols()
    finally:
        await rest.close()


def _trade_sources(rest: BinanceRest) -> tuple[TradeSource, ...]:
    # Imported when a streamer starts: the config reads the venue registry, and the streaming
    # package (which the source's module imports) reads the config.
    from data_collector.venues.binance.trade_source import BinanceAggTrades, BinanceHistoricalTrades

    return BinanceAggTrades(rest), BinanceHistoricalTrades(rest)


SPOT = StreamVenue(
    protocol="binance",
    market_type="spot",
    rest_api="/api/v3",
    default_rest_url="https://api.binance.com",
    default_ws_url="wss://stream.binance.com:9443",
    channels=("trade", "aggTrade", "bookTicker", "depth"),
    chained_by_pu=False,
    listed_ids=listed_ids,
    trade_sources=_trade_sources,
)
USDM = replace(
    SPOT,
    protocol="binanceusdm",
    market_type="swap",
    rest_api="/fapi/v1",
    default_rest_url="https://fapi.binance.com",
    default_ws_url="wss://fstream.binance.com",
    channels=(*SPOT.channels, "markPrice", "markPrice@1s", "forceOrder"),
    chained_by_pu=True,
    snapshot_limits=(5, 10, 20, 50, 100, 500, 1000),
)
STREAMS: dict[str, StreamVenue] = {v.protocol: v for v in (SPOT, USDM)}


def venue_for_symbols(symbols: list[str]) -> StreamVenue:
    """The venue a list of canonical markets implies: USDⓈ-M when they are perpetuals."""
    return USDM if symbols and all(is_perpetual(s) for s in symbols) else SPOT
