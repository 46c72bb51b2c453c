"""The S3-style listing of the simulator's archive tree: ``GET /?prefix=...&delimiter=/&marker=...``.

Real tools discover data.binance.vision's files through its bucket's ListObjects (v1) answer
(``s3-ap-northeast-1.amazonaws.com/data.binance.vision?prefix=data/spot/daily/klines/BTCUSDT/1m/
&delimiter=/``): a ``ListBucketResult`` XML with up to ``max-keys`` (1,000) ``Contents`` (key,
last modified, ETag, size) in key order, ``CommonPrefixes`` for the "directories" below the prefix
when a delimiter is given, and ``IsTruncated`` / ``NextMarker`` for the next page (``marker``).

The simulator answers two levels: a series' directory (``.../<SYM>/<tf>/`` or
``.../aggTrades/<SYM>/``: its published files and their ``.CHECKSUM``, by the same availability
rule as the files themselves) and a kind's directory (``.../klines/``: one prefix per symbol).
Other prefixes list nothing. Sizes are 0 and ETags empty: computing them would build every zip.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from aiohttp import web

from data_collector.markets import DAY_MS
from data_collector.simulator.archives import ARCHIVE_INTERVALS, period_range

if TYPE_CHECKING:
    from data_collector.simulator.archives import ArchiveServer
    from data_collector.simulator.market import SymbolMarket

_SERIES = re.compile(
    r"^data/(?P<tree>spot|futures/um)/(?P<period>daily|monthly)/(?P<kind>[A-Za-z]+)/"
    r"(?P<sym>[A-Z0-9]+)/(?:(?P<tf>[0-9a-z]+)/)?"
)
_KIND = re.compile(r"^data/(?P<tree>spot|futures/um)/(?P<period>daily|monthly)/(?P<kind>[A-Za-z]+)/$")
MAX_KEYS = 1000


def _dates(market: SymbolMarket, period: str, now_ms: int) -> list[str]:
    """The dates of ``market``'s files of ``period`` from its listing up to ``now_ms`` (unfiltered)."""
    lo = market.listing_ms // DAY_MS * DAY_MS
    days = range(lo, now_ms, DAY_MS)
    fmt = "%Y-%m-%d" if period == "daily" else "%Y-%m"
    return sorted({datetime.fromtimestamp(d / 1000, UTC).strftime(fmt) for d in days})


def series_keys(server: ArchiveServer, prefix: str) -> list[str]:
    """The keys (zips and CHECKSUMs) published under a series' directory ``prefix``."""
    m = _SERIES.match(prefix)
    if m is None or len(prefix) != m.end():
        return []
    futures = m["tree"] != "spot"
    venue = server.sim.futures if futures else server.sim
    market = None if venue is None else venue.market_by_id.get(m["sym"])
    trades = m["kind"] == "aggTrades"
    if market is None or trades == (m["tf"] is not None):
        return []
    tf = "aggTrades" if trades else {v: k for k, v in ARCHIVE_INTERVALS.items()}.get(m["tf"] or "")
    if tf is None:
        return []
    now = server.sim.clock.now_ms()
    keys = []
    for date in _dates(market, m["period"], now):
        _, start, end = period_range(date)
        if not server.available(m["period"], end, now) or not len(market.candles("1d", start, end, now)):
            continue
        path = server.url(market, tf, m["period"], date, m["kind"] if futures else "")
        keys += [path.lstrip("/"), path.lstrip("/") + ".CHECKSUM"]
    return sorted(keys)


def kind_prefixes(server: ArchiveServer, prefix: str) -> list[str]:
    """The symbol directories under a kind's directory ``prefix`` (``data/spot/daily/klines/``)."""
    m = _KIND.match(prefix)
    if m is None:
        return []
    venue = server.sim.futures if m["tree"] != "spot" else server.sim
    return [] if venue is None else sorted(f"{prefix}{sym}/" for sym in venue.market_by_id)


def listing_xml(
    prefix: str, marker: str, delimiter: str, keys: list[str], prefixes: list[str], max_keys: int
) -> bytes:
    """A ListObjects (v1) ``ListBucketResult`` page of ``keys`` and ``prefixes`` after ``marker``."""
    items = sorted([(k, False) for k in keys] + [(p, True) for p in prefixes])
    items = [i for i in items if i[0] > marker][: max_keys + 1]
    truncated = len(items) > max_keys
    items = items[:max_keys]
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
        "<Name>data.binance.vision</Name>",
        f"<Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker>",
        f"<MaxKeys>{max_keys}</MaxKeys>",
        f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "",
        f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
    ]
    if truncated and delimiter:
        parts.append(f"<NextMarker>{escape(items[-1][0])}</NextMarker>")
    for key, is_prefix in items:
        if is_prefix:
            parts.append(f"<CommonPrefixes><Prefix>{escape(key)}</Prefix></CommonPrefixes>")
        else:
            parts.append(
                f"<Contents><Key>{escape(key)}</Key><LastModified>2020-01-01T00:00:00.000Z</LastModified>"
                '<ETag>""</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass></Contents>'
            )
    parts.append("</ListBucketResult>")
    return "".join(parts).encode()


async def handle_listing(server: ArchiveServer, request: web.Request) -> web.Response:
    """``GET /?prefix=&delimiter=&marker=&max-keys=``."""
    q = request.query
    prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
    try:
        max_keys = max(1, min(MAX_KEYS, int(q.get("max-keys", MAX_KEYS))))
    except ValueError:
        max_keys = MAX_KEYS
    server.stats["listing_requests"] += 1
    keys = series_keys(server, prefix)
    prefixes = kind_prefixes(server, prefix) if delimiter == "/" else []
    body = listing_xml(prefix, marker, delimiter, keys, prefixes, max_keys)
    return web.Response(body=body, content_type="application/xml")
