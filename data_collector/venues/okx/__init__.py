"""OKX v5 (``okx``, ``myokx``, ``okxus``): the adapter, and everything OKX-specific in one folder.

- :mod:`.rules`: the backfill's rules: per-endpoint rate limits over 2 s windows (no weight
  header; a 429 answers ``{"code": "50011"}``), newest-first candle paging at most 100 a page,
  newest-first funding pages, the listing time from the instrument, the data types collected;
- :mod:`.trades`: ``history-trades`` walked back by trade id (the trades ``PairFetch``);
- :mod:`.protocol`: the streamer's endpoints (``/ws/v5/public``, ``/ws/v5/business``), instrument
  ids, the channel map, ``op: subscribe`` messages and the payload -> event normalisers;
- :mod:`.book`: the ``books`` rules (``seqId``/``prevSeqId`` continuity and the CRC32 checksum of
  the best 25 levels, verified on every message) and the resync on a break;
- :mod:`.connection`: one OKX WebSocket (subscribe, text ``ping``/``pong`` keepalive, routing);
- :mod:`.parts`: what a streamer builds from these (book keeper, connections, normalisers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from data_collector.errors import TransientError
from data_collector.venues.base import Guarantees, VenueAdapter
from data_collector.venues.okx import rules
from data_collector.venues.stream import StreamVenue

if TYPE_CHECKING:
    from data_collector.streaming.trade_sources import TradeSource
    from data_collector.venues.binance.rest import BinanceRest

#: Instrument types the streamer may name (spot and perpetual swaps).
INST_TYPES = ("SPOT", "SWAP")


def inst_id(symbol: str) -> str:
    """:func:`.protocol.inst_id`, imported when first used (the protocol needs the streamer)."""
    from data_collector.venues.okx.protocol import inst_id as of

    return of(symbol)


def rest_base(urls: Mapping[str, Any]) -> str | None:
    """The REST base URL of ccxt-style ``urls`` (``{"api": {"rest": ...}}``), if any."""
    api = urls.get("api")
    rest = api.get("rest") if isinstance(api, Mapping) else api if isinstance(api, str) else None
    return rest.rstrip("/") if isinstance(rest, str) else None


async def listed_ids(config: Mapping[str, Any], venue: StreamVenue) -> tuple[str, set[str]]:
    """``/api/v5/public/instruments`` (SPOT and SWAP): where it asked, and the instrument ids."""
    import aiohttp

    base = rest_base(config.get("urls") or {}) or venue.default_rest_url
    ids: set[str] = set()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session:
            for inst_type in INST_TYPES:
                url = f"{base}{venue.rest_api}/public/instruments"
                async with session.get(url, params={"instType": inst_type}) as response:
                    body = await response.json(content_type=None)
                if response.status != 200 or not isinstance(body, dict) or body.get("code") != "0":
                    raise TransientError(f"GET {url}?instType={inst_type}: HTTP {response.status}")
                ids.update(str(i["instId"]) for i in body.get("data") or [] if isinstance(i, dict))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise TransientError(f"GET {base}{venue.rest_api}/public/instruments: {exc!r}") from None
    return f"the exchange at {base}", ids


def _trade_sources(rest: BinanceRest) -> tuple[TradeSource, ...]:
    # Imported when a streamer starts: the config reads this registry, and the streaming
    # package (which these modules import) reads the config.
    from data_collector.venues.okx.trade_source import OkxHistoryTrades

    return (OkxHistoryTrades(rest),)


def _kline_rest(rest: BinanceRest) -> Any:
    from data_collector.venues.okx.rest import OkxKlineRest  # imported late: see _trade_sources

    return OkxKlineRest(rest)


#: OKX v5 (spot and swaps on one connection).
STREAM = StreamVenue(
    protocol="okx",
    market_type="spot",
    rest_api="/api/v5",
    default_rest_url="https://www.okx.com",
    default_ws_url="wss://ws.okx.com:8443/ws/v5",
    channels=("trade", "bookTicker", "ticker", "depth"),
    chained_by_pu=False,
    kind="okx",
    one_connection=True,
    trade_sources=_trade_sources,
    kline_rest=_kline_rest,
    stored_trades="trade",
    trade_job_limits={"market/history-trades": rules.HISTORY_TRADES_JOB_PER_2S},
    listed_ids=listed_ids,
    native_id=inst_id,
    parts="data_collector.venues.okx.parts:PARTS",
)


OKX = VenueAdapter(
    name="okx",
    ids=rules.OKX_IDS,
    guarantees=Guarantees(
        book="seqId/prevSeqId chain and CRC32 of the top 25 levels on every message; resync by resubscribing",
        gap_markers="on a broken book chain or checksum, a reconnect and a restart",
        trade_repair="trade: lost ids fetched back from history-trades into trade@repair",
        archives="none (REST only)",
        rate_limit="per endpoint in 2 s windows, from ccxt's cost table (no weight header)",
    ),
    ohlcv_page_limit=rules.PAGE_LIMIT,
    ohlcv_page_reason=(
        "the most candles one OKX history-candles answer holds (OKX answers newest first, so a "
        "larger page would lose its start)"
    ),
    data_types=rules.DATA_TYPES,
    endpoint_limits=rules.endpoint_limits,
    listing_ms=rules.listing_ms,
    one_client=True,
    funding_params=rules.funding_params,
    funding_page_limit=rules.FUNDING_PAGE_LIMIT,
    funding_span=rules.funding_page_span,
    trade_pair="data_collector.venues.okx.trades:OkxTradePair",
    streams={rules.OKX_IDS[0]: STREAM},
)
