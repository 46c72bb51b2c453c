"""Aggregate trades through the exchange client: pages by ``fromId``, and the id at a time.

Every request goes through :meth:`ExchangeClient.call` (the shared rate limiter, the timeout and
the retry policy) with ccxt's ``fetch_trades``, which maps ``params={"fromId": ...}`` and
``limit`` to Binance's ``aggTrades``, and ``since`` / ``params={"until": ...}`` to its
``startTime`` / ``endTime`` (never both with ``fromId``: Binance refuses that). Every answer is
validated (:func:`~data_collector.backfill.validate.validate_trades`) before anything uses it: a
malformed page is retried, never written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from data_collector.backfill.validate import MalformedPageError, validate_trades
from data_collector.markets import HOUR_MS
from data_collector.storage.trades import Trade

if TYPE_CHECKING:
    from data_collector.backfill.exchange import ExchangeClient

#: Request weight of Binance spot ``aggTrades`` (the simulator's and Binance's documented 4; ccxt's
#: table still says 2). The server's ``X-MBX-USED-WEIGHT-1M`` header corrects the count either way.
AGG_TRADES_WEIGHT = 4
#: Request weight of Binance USDⓈ-M ``/fapi/v1/aggTrades`` (Binance's futures docs and ccxt's
#: ``fapiPublicGetAggTrades`` cost: 20), counted in the futures venue's budget.
FAPI_AGG_TRADES_WEIGHT = 20
#: Binance's most aggregate trades per answer.
TRADES_PAGE_LIMIT = 1000
#: ``startTime``..``endTime`` may span at most one hour; ``endTime`` is inclusive.
WINDOW_MS = HOUR_MS - 1


async def _fetch(client: ExchangeClient, symbol: str, **kwargs: Any) -> list[Trade]:
    """One validated ``fetch_trades`` call; ``kwargs`` go to ccxt, and bound the validation."""
    since, limit, params = kwargs.get("since"), kwargs.get("limit"), dict(kwargs.get("params", {}))
    start_ms, end_ms = (since, params.get("until")) if since is not None else (None, None)

    async def fetch() -> list[Trade]:
        try:
            rows = await client.exchange.fetch_trades(symbol, since, limit, params)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            client.stats.malformed += 1
            raise MalformedPageError(f"unparsable trades page: {exc}") from None
        try:
            return validate_trades(rows, from_id=params.get("fromId"), start_ms=start_ms, end_ms=end_ms)
        except MalformedPageError:
            client.stats.malformed += 1
            raise

    return await client.call(fetch, weight=agg_trades_weight(client))


def agg_trades_weight(client: ExchangeClient) -> int:
    """The weight one ``aggTrades`` request costs on ``client``'s venue."""
    return FAPI_AGG_TRADES_WEIGHT if client.futures else AGG_TRADES_WEIGHT


async def fetch_trades_from(client: ExchangeClient, symbol: str, from_id: int, limit: int) -> list[Trade]:
    """The first ``limit`` aggregate trades with ids at or after ``from_id``, by id."""
    return await _fetch(client, symbol, limit=limit, params={"fromId": from_id})


async def first_id_at(
    client: ExchangeClient,
    symbol: str,
    at_ms: int,
    *,
    not_before_ms: int | None,
    delisted_ms: int | None = None,
) -> int:
    """The id of the first aggregate trade at or after ``at_ms``; the next id to come if none yet.

    Windows of an hour are asked from ``at_ms`` on (from ``not_before_ms``, the listing, if
    later) until one holds a trade. A full window may be the first or the last trades of the
    hour (Binance documents neither), so the trade found is walked back by ``fromId`` pages to
    the first one at or after ``at_ms``. Past the exchange's clock, or past ``delisted_ms`` (no
    trade follows a delisting), the latest trade (the last before the delisting) says where ids
    stand.
    """
    limit = TRADES_PAGE_LIMIT
    window = max(at_ms, not_before_ms or at_ms)
    while window <= client.server_now_ms() and (delisted_ms is None or window < delisted_ms):
        found = await _fetch(client, symbol, since=window, limit=limit, params={"until": window + WINDOW_MS})
        if found and len(found) < limit:
            return found[0][0]
        if found:
            return await _walk_back(client, symbol, found[0][0], at_ms)
        window += HOUR_MS
    if delisted_ms is not None:
        return await _id_after_last(client, symbol, delisted_ms, not_before_ms or 0)
    latest = await _fetch(client, symbol, limit=1)
    if latest and latest[-1][1] >= at_ms:
        return await _walk_back(client, symbol, latest[-1][0], at_ms)
    return latest[-1][0] + 1 if latest else 0


async def _walk_back(client: ExchangeClient, symbol: str, candidate: int, at_ms: int) -> int:
    """The first id at or after ``at_ms``, from ``candidate`` (a trade at or after it) backwards."""
    limit = TRADES_PAGE_LIMIT
    while candidate > 0:
        page = await fetch_trades_from(client, symbol, max(0, candidate - limit), limit)
        earlier = [t for t in page if t[0] < candidate]
        later = [t for t in earlier if t[1] >= at_ms]
        if later:
            candidate = later[0][0]
        if not earlier or len(later) < len(earlier):
            return candidate
    return candidate


async def _id_after_last(client: ExchangeClient, symbol: str, end_ms: int, not_before_ms: int) -> int:
    """The id after the last trade before ``end_ms`` (a delisting: no trade follows it).

    Hour windows are asked backwards from ``end_ms`` until one holds a trade; a full window is
    paged on by ``fromId`` to its last trade. Binance answers a delisted symbol's "latest
    trades" from what it still keeps, which need not reach back to the delisting.
    """
    limit = TRADES_PAGE_LIMIT
    window_end = end_ms
    while window_end > not_before_ms:
        start = max(window_end - HOUR_MS, not_before_ms)
        found = await _fetch(client, symbol, since=start, limit=limit, params={"until": window_end - 1})
        if found:
            last = found[-1][0]
            while len(found) == limit:
                found = await fetch_trades_from(client, symbol, last + 1, limit)
                last = found[-1][0] if found else last
            return last + 1
        window_end = start
    return 0
