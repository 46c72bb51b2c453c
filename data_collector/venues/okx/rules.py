"""What the backfill knows of OKX (v5): its rate-limit windows, its candle paging, its data types.

* **Rate limits**: OKX counts requests per endpoint over 2 s windows and sends no weight header
  (a 429 answers ``{"code": "50011"}``). ccxt's okx table gives each endpoint a cost in units of
  its ``rateLimit`` (110 ms: OKX's 100 ms plus ccxt's 10 % tolerance), so an endpoint allows
  ``2000 / (110 * cost)`` requests per window: 36 for ``market/candles`` (OKX documents 40), 18
  for ``market/history-candles`` (20), 9 for ``public/funding-rate-history`` (10). The
  :class:`~data_collector.backfill.rate_limit.RateLimiter` paces each endpoint by that in its
  per-endpoint window mode; ``endpoint_limits`` in a venue's section overrides an endpoint's N.
* **Candles** come newest first: ccxt's ``fetch_ohlcv(since, limit, until)`` asks for
  ``before=since-1``, ``after=until`` and ``limit``, and OKX answers with the *newest* ``limit``
  candles of that span. An answer cut at the server's cap would therefore hold the end of the page,
  not its start (what :func:`~data_collector.backfill.plan.page_coverage` assumes), so a page must
  never be larger than the cap: 100 on ``history-candles`` (older than the newest 1,440 candles,
  where ccxt switches endpoint), which is also every page's size here.
* **Funding** comes newest first too: ``before=since-1`` (ccxt) and ``after=end`` (ours), at
  most 100 a page; a full answer proves from its oldest settlement to the page's end, and the
  older rest of the page is asked next (:func:`funding_page_span`).
* **Trades**: ``history-trades`` walked back by id (:mod:`data_collector.venues.okx.trades`).
* **Listing**: the instrument's ``listTime`` (in the markets already loaded), so no request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from data_collector.datatypes import FUNDING_RATES, OHLCV, TRADES

#: ccxt ids of OKX's API.
OKX_IDS = ("okx", "myokx", "okxus")
#: OKX's rate-limit window.
WINDOW_S = 2.0
#: Candles per page: ``history-candles``' cap (see the module's docstring).
PAGE_LIMIT = 100
#: Settlements per ``funding-rate-history`` answer (OKX's maximum).
FUNDING_PAGE_LIMIT = 100
#: ``market/history-trades``: OKX's requests per 2 s window, and those of them left to the trade
#: backfill job that closes the trades table's holes while the streamer's REST repair runs. The
#: job's windows are not aligned with OKX's, so it may send twice its share in one of them: the
#: repair keeps to 20 - 2 x 2 = 16.
HISTORY_TRADES_PER_2S = 20
HISTORY_TRADES_JOB_PER_2S = 2
#: ``market/history-candles``: OKX's requests per 2 s window; the streamer's kline repair keeps
#: to 20 - 4 = 16, leaving the rest to a backfill that may run at the same time.
HISTORY_CANDLES_REPAIR_PER_2S = 16
#: What the backfill collects from OKX in this version.
DATA_TYPES = (OHLCV, TRADES, FUNDING_RATES)


def is_okx(exchange_id: str) -> bool:
    return exchange_id in OKX_IDS


def endpoint_limits(exchange: Any, window_s: float = WINDOW_S) -> dict[str, int]:
    """Requests per window of each public GET endpoint, from ccxt's cost table and ``rateLimit``."""
    rate_limit_ms = float(getattr(exchange, "rateLimit", 0) or 0) or 100.0
    table = (getattr(exchange, "api", None) or {}).get("public", {}).get("get", {})
    out: dict[str, int] = {}
    for path, config in table.items():
        cost = config.get("cost", 1) if isinstance(config, Mapping) else config
        try:
            cost = float(cost)
        except (TypeError, ValueError):
            continue
        if cost > 0:
            out[path] = max(1, math.floor(window_s * 1000 / (rate_limit_ms * cost)))
    return out


def listing_ms(market: Mapping[str, Any] | None) -> int | None:
    """The instrument's listing time (``info.listTime``), if the market gives one."""
    info = (market or {}).get("info") or {}
    try:
        value = int(info.get("listTime") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def funding_page_span(
    page: tuple[int, int], times: list[int], limit: int
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """What a newest-first funding answer (``times`` ascending) to ``page`` proves, and the rest."""
    start, end = page
    if len(times) < limit:
        return page, None
    oldest = times[0]
    return (oldest, end), ((start, oldest) if start < oldest else None)


def funding_params(end_ms: int) -> dict[str, Any]:
    """``after`` bounds the newest-first answer (ccxt would pass ``until`` through)."""
    return {"after": end_ms}
