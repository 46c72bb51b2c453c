"""Backfill as jobs: a run cut into (venue, market, data type, timeframe, window) jobs.

Each job is one procrastinate job of the task :data:`TASK` with the job's fields as its
arguments. Its queueing lock is the job's key, so the same window enqueued twice while the first
waits is one job; a job run twice (a re-run, a dead worker's job retried) is harmless, as the
writes are idempotent and the coverage record skips what is stored.

Windows are fixed spans counted from the epoch (:func:`windows`), so two plans of the same range
cut it at the same places and give the same keys; a timeframe's span is whole pages of it (the
``window_days`` asked for, rounded), so windows add no partial pages inside the range.

Every job carries the producer's config version (:func:`config_version`), and its queue name
holds it (:func:`queue_name`): a worker started with another config never takes the job (its
queue is another), and says so in one line at start (:mod:`data_collector.distributed.worker`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from data_collector.config import Config
from data_collector.datatypes import CANDLE_PRICES, OPEN_INTEREST
from data_collector.markets import DAY_MS, TIMEFRAME_MS, is_perpetual_symbol
from data_collector.venues import adapter_for

#: The procrastinate task name of a backfill job.
TASK = "dc_backfill_window"
#: Queues of backfill jobs are ``QUEUE_PREFIX + <config version>``.
QUEUE_PREFIX = "dc-backfill-"
#: Data types with no timeframe are keyed with this one.
NO_TIMEFRAME = "-"

#: The settings producer and workers must agree on: where the rows go and what they are.
_VERSIONED = {
    "exchange": ("id", "name", "urls", "options", "ohlcv_page_limit", "source"),
    "database": ("db_schema",),
}


@dataclass(frozen=True, slots=True)
class WindowJob:
    """One job: ``[start_ms, end_ms)`` of one (venue, symbol, data type, timeframe)."""

    run_id: str
    venue: str
    symbol: str
    data_type: str
    timeframe: str
    start_ms: int
    end_ms: int
    config_version: str

    @property
    def key(self) -> str:
        """The job's identity (its queueing lock): the same window of the same series."""
        return "|".join(
            (self.venue, self.symbol, self.data_type, self.timeframe, str(self.start_ms), str(self.end_ms))
        )

    def args(self) -> dict[str, Any]:
        """The job's arguments in the queue (JSON)."""
        return asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> WindowJob:
        return cls(**args)


def config_version(config: Config) -> str:
    """12 hex digits naming the settings producer and workers must share (venues, URLs, schema).

    With ``venues``, every venue's exchange and futures sections count (in order): a worker whose
    venues differ is refused like one with another ``exchange``. Secrets and the database URL are
    left out: hosts reach the same database by other names.
    """
    picked: dict[str, Any] = {}
    for section, keys in _VERSIONED.items():
        values = getattr(config, section)
        picked[section] = {k: getattr(values, k) for k in keys}
    picked["futures"] = _exchange_keys(config.futures_venue())
    if config.venues:  # absent without venues: one-exchange configs keep their version
        picked["venues"] = [
            {"exchange": _exchange_keys(c.exchange), "futures": _exchange_keys(c.futures_venue())}
            for _, c in config.venue_configs()
        ]
    text = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _exchange_keys(section: Any) -> dict[str, Any]:
    return {k: getattr(section, k) for k in _VERSIONED["exchange"]}


def queue_name(version: str) -> str:
    return f"{QUEUE_PREFIX}{version}"


def windows(start_ms: int, end_ms: int, window_ms: int) -> list[tuple[int, int]]:
    """``[start_ms, end_ms)`` cut at multiples of ``window_ms`` from the epoch."""
    out: list[tuple[int, int]] = []
    s = start_ms
    while s < end_ms:
        e = min((s // window_ms + 1) * window_ms, end_ms)
        out.append((s, e))
        s = e
    return out


def _whole_pages(span_ms: int, timeframe: str, page_limit: int) -> int:
    """``span_ms`` rounded to whole pages of ``timeframe`` (at least one page), so a window's pages
    are full ones: cut at arbitrary spans, every window ends in a partial page (measured: 10% more
    requests than one range, ``python -m benchmarks distributed``)."""
    if timeframe not in TIMEFRAME_MS:
        return span_ms
    page_ms = TIMEFRAME_MS[timeframe] * page_limit
    return max(1, round(span_ms / page_ms)) * page_ms


def _one_client(config: Config) -> bool:
    return adapter_for(config.exchange.id).one_client and config.futures_exchange is None


def venue_of(config: Config, symbol: str) -> str:
    """The venue label of ``symbol``'s rows (the spot or the futures venue; one label where the
    venue serves both from one client, as :class:`~data_collector.backfill.venues.Venues` does).

    ``config`` is one venue's (an entry of :meth:`~data_collector.config.Config.venue_configs`)."""
    if is_perpetual_symbol(symbol) and not _one_client(config):
        return config.futures_venue().name
    return config.exchange.name


def venue_labels(config: Config) -> dict[str, int]:
    """Every venue label the jobs of ``config`` may name -> the index of its venue in
    :meth:`~data_collector.config.Config.venue_configs` (a Binance venue has two labels, spot
    and USDⓈ-M; OKX one)."""
    out: dict[str, int] = {}
    for i, (_, venue) in enumerate(config.venue_configs()):
        out[venue.exchange.name] = i
        if not _one_client(venue):
            out[venue.futures_venue().name] = i
    return out


def cut_jobs(
    config: Config,
    run_id: str,
    symbols: list[str],
    timeframes: list[str],
    data_types: list[str],
    start_ms: int,
    end_ms: int,
    window_days: float,
    version: str | None = None,
) -> list[WindowJob]:
    """The jobs of one run: every symbol, data type (each timeframe of OHLCV) and window.

    ``config`` is one venue's; ``version`` the whole config's (default: ``config``'s own).
    """
    version = version if version is not None else config_version(config)
    span = max(1, int(window_days * DAY_MS))
    jobs: list[WindowJob] = []
    for symbol in symbols:
        venue = venue_of(config, symbol)
        for data_type in data_types:
            per_tf = data_type in CANDLE_PRICES or data_type == OPEN_INTEREST
            tfs = timeframes if per_tf else [NO_TIMEFRAME]
            for tf in tfs:
                for s, e in windows(
                    start_ms, end_ms, _whole_pages(span, tf, config.exchange.ohlcv_page_limit)
                ):
                    jobs.append(WindowJob(run_id, venue, symbol, data_type, tf, s, e, version))
    return jobs
