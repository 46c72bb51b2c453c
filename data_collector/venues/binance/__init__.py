"""Binance (spot ``binance``, ``binanceus``; USDⓈ-M futures ``binanceusdm``): the adapter.

- :mod:`.venue`: the streaming protocols (hosts, channels, the depth-diff book rule, snapshot
  sizes, the symbol list from ``exchangeInfo``);
- :mod:`.connection`: the combined-stream connection (URL, ``SUBSCRIBE``, frames);
- :mod:`.normalize`: its payloads -> the shared event shapes and entry ids;
- :mod:`.parts`: what a streamer builds (the depth-diff book keeper, combined-stream
  connections, normalisers);
- :mod:`.rest`: the streamer's REST calls (depth snapshots, kline and aggTrade repair, funding);
- ``archive_*``: data.binance.vision's monthly and daily files as a backfill source
  (:mod:`.archive_plan` -> :mod:`.archive_fetch` -> :mod:`.archive_run`; :mod:`.archive_trades`,
  :mod:`.archive_listing`, :mod:`.archive_cross_check`).

The backfill's rules are the fields of :data:`BINANCE`: requests are paced by the
``X-MBX-USED-WEIGHT`` header and the documented weights, pages are oldest first with ccxt's
``features`` maximum, and klines and aggTrades skip ccxt's per-field parsing.
"""

from __future__ import annotations

from data_collector.venues.base import Guarantees, VenueAdapter
from data_collector.venues.binance.venue import STREAMS

BINANCE = VenueAdapter(
    name="binance",
    ids=("binance", "binanceus", "binanceusdm"),
    guarantees=Guarantees(
        book="update ids: U/u chain (spot), pu chain (USDⓈ-M); resync from a REST snapshot",
        gap_markers="on a skipped trade or depth id, a reconnect and a restart",
        trade_repair="aggTrade gaps fetched back by id (aggTrades?fromId)",
        archives="data.binance.vision monthly and daily files, checksummed",
        rate_limit="weight header (X-MBX-USED-WEIGHT) and request weights",
    ),
    weight_headers=True,
    raw_rows=True,
    futures_ids=("binanceusdm",),
    archives="data_collector.venues.binance.archive_run:ArchiveSource",
    streams=STREAMS,
)
