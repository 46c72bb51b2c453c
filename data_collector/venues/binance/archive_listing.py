"""Reading the archive bucket's S3-style listing (ListObjects v1 ``?prefix=&delimiter=/&marker=``).

data.binance.vision's files are listed by its bucket (``s3-ap-northeast-1.amazonaws.com/
data.binance.vision``), 1,000 keys a page, ``IsTruncated`` and ``NextMarker`` (or the last key)
for the next. :func:`list_archive` pages through one prefix; :func:`archive_dates` turns a series'
keys into the dates of the files published. The backfill planner does not need it (the lag rule
asks only for files that should exist, and a missing one is a 404 handed to REST); it is here for
tools that want to see what a venue publishes, and is tested against the simulator's listing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import aiohttp

from data_collector.venues.binance.archive_fetch import ArchiveFailure

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_DATE = re.compile(r"-(\d{4}-\d{2}(?:-\d{2})?)\.zip$")
#: Pages of one listing at most (1,000 keys each): a series of daily files for 20 years is 15.
MAX_PAGES = 1000


@dataclass(slots=True)
class Listing:
    """Keys and common prefixes under one prefix."""

    keys: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


def parse_listing(body: bytes) -> tuple[Listing, str | None]:
    """One ``ListBucketResult`` page: its keys and prefixes, and the marker of the next page (or None)."""
    try:
        # The standard library's parser: expat resolves no external entities, and from 2.4.1
        # (what Python 3.11 ships) refuses entity-expansion bombs, so a hostile answer cannot blow up.
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ArchiveFailure(f"unreadable listing ({exc})") from None
    if root.tag != _NS + "ListBucketResult":
        raise ArchiveFailure(f"not a bucket listing ({root.tag})")
    page = Listing(
        [k.text or "" for k in root.iter(_NS + "Key")],
        [p.text or "" for p in root.findall(f"{_NS}CommonPrefixes/{_NS}Prefix")],
    )
    if (root.findtext(_NS + "IsTruncated") or "").lower() != "true":
        return page, None
    following = root.findtext(_NS + "NextMarker") or max([*page.keys, *page.prefixes], default="")
    return page, following or None


async def list_archive(session: aiohttp.ClientSession, bucket_url: str, prefix: str) -> Listing:
    """Every key and common prefix directly under ``prefix`` (``delimiter=/``), all pages."""
    out = Listing()
    marker = ""
    for _ in range(MAX_PAGES):
        params = {"prefix": prefix, "delimiter": "/", "marker": marker}
        try:
            async with session.get(bucket_url.rstrip("/") + "/", params=params) as resp:
                if resp.status != 200:
                    raise ArchiveFailure(f"listing HTTP {resp.status}")
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ArchiveFailure(f"listing failed ({type(exc).__name__})") from None
        page, following = parse_listing(body)
        out.keys += page.keys
        out.prefixes += page.prefixes
        if following is None or following <= marker:
            return out
        marker = following
    raise ArchiveFailure(f"listing of {prefix} longer than {MAX_PAGES} pages")


def archive_dates(keys: list[str]) -> list[str]:
    """The dates (``YYYY-MM-DD`` or ``YYYY-MM``) of the zips among ``keys`` (CHECKSUMs left out)."""
    return sorted({m[1] for k in keys if (m := _DATE.search(k)) is not None})
