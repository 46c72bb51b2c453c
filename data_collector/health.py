"""Health checks for a deployment: servers, the exchange, data freshness, heartbeats, disk.

``scripts/health_check.py`` (:mod:`data_collector.cli.health`, which adds the table and the
``--continuous`` loop) is a thin shell over :func:`run_checks`; anything else (a web handler, a
test) can call it too.

Checks, each bounded by ``metrics.check_timeout_s``:

==================  ===========================================================================
``postgresql``      connects through the store (``database.url``) and reports the server's
                    version (``SHOW server_version``); latency. With a SQLite URL the check is
                    called ``sqlite``: the file opens and reports SQLite's version.
``redis``           ``PING``; latency.
``exchange``        ``GET <exchange.urls.api.public>/ping`` (the exchange's own REST URL when not
                    overridden), so it works against the simulator.
``freshness``       newest stored candle per configured symbol and timeframe of the venue
                    ``exchange.name`` (asked of the store, so any schema the config accepts
                    works; demo rows, labelled ``sim-...``, never count); stale when older than
                    two timeframes plus ``metrics.freshness_margin_s`` (against ``end`` when the
                    config sets one).
``stream``          newest message among the configured streams of ``exchange.name`` (Redis
                    stream IDs) or that venue's streamer heartbeat; stale after
                    ``metrics.stream_stale_s``.
``heartbeat:<c>``   one row per running collector and streamer, ``heartbeat:<c>:<instance>``
                    (``metrics.instance``; a shard host's ``<group>@<host id>``); ``warn`` when
                    none runs, when one is stale (two beats missed, by Redis's clock: dead or
                    stuck; its key expires at its TTL) or another venue's (e.g. the demo's
                    ``sim-binance``).
``disk``            free space where the data lives.
==================  ===========================================================================

A result is ``ok``, ``warn`` or ``fail``. Servers that cannot be reached and a nearly full disk
``fail``; stale or missing data, streams and heartbeats ``warn`` (a deployment may run only the
backfill, or only the streamer). The report is healthy when nothing failed.

Every database question goes through the store (:mod:`data_collector.storage`), never opened with
``initialize()``: a health check reads; it creates no database, schema or table.

Long because each check names its own failure reasons (refused, timed out, TLS, auth) in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import psutil
import redis
import redis.asyncio as aioredis

from data_collector.config import Config
from data_collector.errors import (
    CollectorError,
    ConfigError,
    ServerUnavailableError,
    StoreNotInitializedError,
    UsageError,
)
from data_collector.heartbeat import beat_interval_s, read_heartbeats, since_beat_s
from data_collector.markets import DAY_MS, TIMEFRAME_MS
from data_collector.redis.client import RedisSettings, async_client
from data_collector.redis.keys import stream_key
from data_collector.redis.url import parse_redis_url
from data_collector.storage import CandleStore, open_store
from data_collector.storage.pg_connect import PgTarget, pg_target
from data_collector.storage.url import parse_database_url

Status = Literal["ok", "warn", "fail"]
CHECKS = ("database", "redis", "exchange", "freshness", "stream", "heartbeat", "disk")
COMPONENTS = ("collector", "streamer")
#: What ``skip`` takes: a check's name, or the name its table row shows (the database check's row
#: is named after its backend, a heartbeat's after its component).
SKIP_NAMES = (*CHECKS, "postgresql", "sqlite", *(f"heartbeat:{c}" for c in COMPONENTS))
_DATABASE_NAMES = {"database", "postgresql", "sqlite"}
_RANK: dict[str, int] = {"ok": 0, "warn": 1, "fail": 2}
_STATUSES: tuple[Status, Status, Status] = ("ok", "warn", "fail")
_DISK_FAIL_FRACTION = 0.02
_DISK_WARN_FRACTION = 0.10


@dataclass
class CheckResult:
    """One line of the report."""

    name: str
    status: Status
    detail: str
    latency_ms: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass
class HealthReport:
    checks: list[CheckResult]
    ts_ms: int

    @property
    def healthy(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def status(self) -> Status:
        worst = max((_RANK[c.status] for c in self.checks), default=0)
        return _STATUSES[worst]

    def failures(self, include_warnings: bool = False) -> list[CheckResult]:
        bad = {"fail", "warn"} if include_warnings else {"fail"}
        return [c for c in self.checks if c.status in bad]

    def exit_code(self, fail_on_warn: bool = False) -> int:
        return 1 if self.failures(include_warnings=fail_on_warn) else 0

    def summary_line(self, fail_on_warn: bool = False) -> str:
        bad = self.failures(include_warnings=fail_on_warn)
        if not bad:
            return "healthy" + (" (with warnings)" if self.status == "warn" else "")
        return "UNHEALTHY: " + "; ".join(c.line() for c in bad)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts_ms": self.ts_ms,
            "healthy": self.healthy,
            "status": self.status,
            "checks": [asdict(c) for c in self.checks],
        }


def _now_ms() -> int:
    return int(time.time() * 1000)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _reason(exc: BaseException) -> str:
    """A short cause: 'connection refused', 'timed out', or the error's own words."""
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, redis.TimeoutError)):
        return "timed out"
    text = str(exc)
    if "Connect call failed" in text or "Connection refused" in text or "ECONNREFUSED" in text:
        return "connection refused"
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _is_sqlite(config: Config) -> bool:
    return parse_database_url(config.database.url.get_secret_value()).get_backend_name() == "sqlite"


def _pg_target(config: Config) -> tuple[PgTarget, str]:
    """The server ``database.url`` names (TLS settings included) and ``host:port`` for messages."""
    target = pg_target(config.database.url.get_secret_value())
    return target, f"{target.url.host or 'localhost'}:{target.url.port or 5432}"


def _sqlite_path(config: Config) -> Path:
    return Path(parse_database_url(config.database.url.get_secret_value()).database or "")


def _down(reason: str, where: str) -> str:
    return (
        f"DOWN ({reason} {where})"
        if reason in ("connection refused", "timed out")
        else f"DOWN ({reason}; {where})"
    )


@contextlib.asynccontextmanager
async def _opened_store(config: Config) -> AsyncIterator[CandleStore]:
    """The configured store, never initialised (a health check creates nothing); closed after."""
    store = open_store(config)
    try:
        yield store
    finally:
        await store.close()


async def check_postgresql(config: Config) -> CheckResult:
    try:
        _, where = _pg_target(config)
    except ConfigError as exc:
        return CheckResult("postgresql", "fail", str(exc))
    started = time.perf_counter()
    try:
        async with _opened_store(config) as store:
            version = await store.server_version()
    except ServerUnavailableError as exc:
        return CheckResult("postgresql", "fail", _down(exc.detail, where))
    except CollectorError as exc:  # TLS refused or unverifiable, login refused: say what to fix
        return CheckResult("postgresql", "fail", f"DOWN ({exc})")
    return CheckResult("postgresql", "ok", f"up {where}, {version}", _elapsed_ms(started))


async def check_sqlite(config: Config) -> CheckResult:
    path = _sqlite_path(config)
    if not path.exists():  # checked first: opening the store would create the file
        return CheckResult("sqlite", "warn", f"no database file yet at {path}")
    started = time.perf_counter()
    try:
        async with _opened_store(config) as store:
            version = await store.server_version()
    except CollectorError as exc:
        return CheckResult("sqlite", "fail", f"DOWN ({exc})")
    return CheckResult("sqlite", "ok", f"opens {path}, {version}", _elapsed_ms(started))


async def check_redis(config: Config, client: aioredis.Redis) -> CheckResult:
    parts = parse_redis_url(config.redis.url.get_secret_value())
    place = f"{parts.hostname or 'localhost'}:{parts.port or 6379}" if parts.scheme != "unix" else parts.path
    try:
        await client.ping()  # connects
        started = time.perf_counter()
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        return CheckResult("redis", "fail", _down(_reason(exc), place))
    return CheckResult("redis", "ok", f"PONG from {place}", _elapsed_ms(started))


def exchange_ping_url(config: Config) -> str:
    """``<api.public>/ping`` for Binance-style REST roots, else the public root itself."""
    api = config.exchange.urls.get("api")
    base = api.get("public") if isinstance(api, dict) else api
    if not isinstance(base, str):
        import ccxt  # imported late: only needed when the config does not name the URL

        exchange = getattr(ccxt, config.exchange.id)()
        default = exchange.urls.get("api")
        base = default.get("public") if isinstance(default, dict) else default
        if not isinstance(base, str):
            raise UsageError(
                f"no REST URL known for exchange {config.exchange.id!r}: set exchange.urls.api.public"
            )
    base = base.rstrip("/")
    return f"{base}/ping" if base.endswith(("/api/v3", "/v3", "/api")) else base


async def check_exchange(config: Config) -> CheckResult:
    try:
        url = exchange_ping_url(config)
    except (UsageError, AttributeError) as exc:
        return CheckResult("exchange", "warn", f"not checked: {exc}")
    timeout = aiohttp.ClientTimeout(total=min(config.exchange.timeout_s, config.metrics.check_timeout_s))
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return CheckResult("exchange", "fail", f"UNREACHABLE ({_reason(exc)} {url})")
    latency = _elapsed_ms(started)
    if status in (418, 429):
        return CheckResult("exchange", "warn", f"rate limited (HTTP {status}) at {url}", latency)
    if status >= 400:
        return CheckResult("exchange", "fail", f"HTTP {status} from {url}", latency)
    return CheckResult("exchange", "ok", f"HTTP {status} from {url}", latency)


def _timeframe_ms(timeframe: str) -> int:
    return TIMEFRAME_MS.get(timeframe, 31 * DAY_MS)


async def check_freshness(config: Config, now_ms: int) -> CheckResult:
    not_created = CheckResult("freshness", "warn", "no data yet (tables not created)")
    if _is_sqlite(config) and not _sqlite_path(config).exists():
        return not_created  # opening the store would create the file
    try:
        async with _opened_store(config) as store:
            newest = await store.newest_candles(config.exchange.name, config.symbols, config.timeframes)
    except StoreNotInitializedError:
        return not_created
    except ServerUnavailableError as exc:
        return CheckResult("freshness", "warn", f"unknown: database unreachable ({exc.detail})")
    except CollectorError as exc:  # database.url unusable, TLS refused, a query refused
        return CheckResult("freshness", "warn", f"unknown: {exc}")
    reference_ms = min(now_ms, config.end_ms(now_ms)) if config.end is not None else now_ms
    margin_ms = int(config.metrics.freshness_margin_s * 1000)
    ages: dict[str, float | None] = {}
    stale: list[str] = []
    missing: list[str] = []
    for symbol in config.symbols:
        for timeframe in config.timeframes:
            label = f"{symbol} {timeframe}"
            open_ms = newest.get((symbol, timeframe))
            if open_ms is None:
                ages[label] = None
                missing.append(label)
                continue
            age_ms = reference_ms - open_ms
            ages[label] = age_ms / 1000
            if age_ms > 2 * _timeframe_ms(timeframe) + margin_ms:
                stale.append(f"{label} {_age_text(age_ms / 1000)} old")
    total = len(config.symbols) * len(config.timeframes)
    data: dict[str, Any] = {"age_s": ages}
    if len(missing) == total:
        return CheckResult("freshness", "warn", "no data yet", data=data)
    problems = stale + ([f"no data: {', '.join(missing)}"] if missing else [])
    if problems:
        shown = "; ".join(problems[:4]) + (f"; +{len(problems) - 4} more" if len(problems) > 4 else "")
        return CheckResult(
            "freshness", "warn", f"{total - len(stale) - len(missing)}/{total} fresh; {shown}", data=data
        )
    newest_age = min(a for a in ages.values() if a is not None)
    return CheckResult(
        "freshness", "ok", f"{total}/{total} fresh (newest {_age_text(newest_age)} old)", data=data
    )


async def check_stream(config: Config, client: aioredis.Redis, now_ms: int) -> CheckResult:
    keys = [
        stream_key(config.redis.prefix, config.exchange.name, channel, symbol)
        for channel in config.streaming.channels
        for symbol in config.symbols
    ]
    try:
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, count=1)
            entries = await pipe.execute()
        beats = await read_heartbeats(client, config.redis.prefix, "streamer")
    except (redis.RedisError, OSError) as exc:
        return CheckResult("stream", "warn", f"unknown: redis unreachable ({_reason(exc)})")
    newest_ms: int | None = None
    for entry in entries:
        if entry:
            entry_id = entry[0][0]
            ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
            newest_ms = ms if newest_ms is None else max(newest_ms, ms)
    for beat in beats.values():
        # Only a streamer of this venue speaks for its streams (not the demo's 'sim-binance').
        last = beat.get("last_message_ms") if _same_venue(beat, config) else None
        if isinstance(last, int):
            newest_ms = last if newest_ms is None else max(newest_ms, last)
    if newest_ms is None:
        return CheckResult("stream", "warn", "no stream messages yet")
    age_s = max(0.0, (now_ms - newest_ms) / 1000)
    data = {"newest_ms": newest_ms, "age_s": age_s}
    if age_s > config.metrics.stream_stale_s:
        return CheckResult("stream", "warn", f"stale: newest message {_age_text(age_s)} old", data=data)
    return CheckResult("stream", "ok", f"newest message {_age_text(age_s)} old", data=data)


def _same_venue(beat: dict[str, Any], config: Config) -> bool:
    """Whether a heartbeat is of the configured venue (one naming none predates the label)."""
    return bool(beat.get("exchange", config.exchange.name) == config.exchange.name)


async def check_heartbeats(
    config: Config, client: aioredis.Redis, component: str, now_ms: int
) -> list[CheckResult]:
    """One row per running instance of ``component`` (``heartbeat:<component>:<instance>``)."""
    name = f"heartbeat:{component}"
    try:
        beats = await read_heartbeats(client, config.redis.prefix, component)
    except (redis.RedisError, OSError) as exc:
        return [CheckResult(name, "warn", f"unknown: redis unreachable ({_reason(exc)})")]
    if not beats:
        return [CheckResult(name, "warn", f"no heartbeat (is the {component} running?)")]
    return [
        _heartbeat_row(config, f"{name}:{instance}", component, beat, now_ms)
        for instance, beat in beats.items()
    ]


def _heartbeat_row(
    config: Config, name: str, component: str, beat: dict[str, Any], now_ms: int
) -> CheckResult:
    age_s = since_beat_s(beat, now_ms)
    detail = f"pid {beat.get('pid')} on {beat.get('host')}, {_age_text(age_s)} ago"
    interval_s = beat_interval_s(beat, config.metrics.heartbeat_ttl_s)
    if age_s > 2 * interval_s:
        return CheckResult(
            name,
            "warn",
            f"stale: no beat for {_age_text(age_s)} (one every {interval_s:g}s): dead or stuck? ({detail})",
            data=beat,
        )
    if not _same_venue(beat, config):
        venue = f"{beat.get('exchange')!r}, not {config.exchange.name!r}"
        return CheckResult(name, "warn", f"the {component} running is for {venue} ({detail})", data=beat)
    return CheckResult(name, "ok", detail, data=beat)


async def check_disk(config: Config) -> CheckResult:
    path = _sqlite_path(config).parent if _is_sqlite(config) else Path(".")
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = await asyncio.to_thread(psutil.disk_usage, str(path))
    free_fraction = usage.free / usage.total if usage.total else 0.0
    detail = f"{usage.free / 1e9:.1f} GB free ({free_fraction:.0%}) at {path.resolve()}"
    data = {"free_bytes": usage.free, "total_bytes": usage.total}
    if free_fraction < _DISK_FAIL_FRACTION:
        return CheckResult("disk", "fail", f"nearly full: {detail}", data=data)
    if free_fraction < _DISK_WARN_FRACTION:
        return CheckResult("disk", "warn", f"low: {detail}", data=data)
    return CheckResult("disk", "ok", detail, data=data)


def _age_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


async def _bounded(
    name: str, timeout_s: float, on_timeout: Status, check: Awaitable[CheckResult | list[CheckResult]]
) -> list[CheckResult]:
    try:
        async with asyncio.timeout(timeout_s):
            result = await check
    except TimeoutError:
        return [
            CheckResult(
                name,
                on_timeout,
                f"DOWN (timed out after {timeout_s:g}s)"
                if on_timeout == "fail"
                else f"unknown: timed out after {timeout_s:g}s",
            )
        ]
    except Exception as exc:  # one broken check must not hide the others
        return [CheckResult(name, on_timeout, f"check failed: {type(exc).__name__}: {_reason(exc)}")]
    return result if isinstance(result, list) else [result]


async def run_checks(config: Config, *, skip: Iterable[str] = (), now_ms: int | None = None) -> HealthReport:
    """Run every check (concurrently, each bounded) and return the report.

    Args:
        config: the deployment's configuration.
        skip: names from :data:`SKIP_NAMES` to leave out (e.g. ``{"exchange"}`` offline).
        now_ms: the time to judge ages against; now by default.
    """
    skipped = set(skip)
    unknown = skipped - set(SKIP_NAMES)
    if unknown:
        raise UsageError(
            f"unknown check(s) {', '.join(sorted(unknown))}; choose from {', '.join(SKIP_NAMES)}"
        )
    if skipped & _DATABASE_NAMES:
        skipped |= _DATABASE_NAMES
    now = now_ms if now_ms is not None else _now_ms()
    limit = config.metrics.check_timeout_s
    client = async_client(RedisSettings.from_config(config))
    db_name = "sqlite" if _is_sqlite(config) else "postgresql"
    plan: list[tuple[str, str, Status, Callable[[], Awaitable[CheckResult | list[CheckResult]]]]] = [
        (
            "database",
            db_name,
            "fail",
            lambda: check_sqlite(config) if _is_sqlite(config) else check_postgresql(config),
        ),
        ("redis", "redis", "fail", lambda: check_redis(config, client)),
        ("exchange", "exchange", "fail", lambda: check_exchange(config)),
        ("freshness", "freshness", "warn", lambda: check_freshness(config, now)),
        ("stream", "stream", "warn", lambda: check_stream(config, client, now)),
    ]
    for component in COMPONENTS:
        beat = functools.partial(check_heartbeats, config, client, component, now)
        plan.append(("heartbeat", f"heartbeat:{component}", "warn", beat))
    plan.append(("disk", "disk", "fail", lambda: check_disk(config)))
    try:
        rows = await asyncio.gather(
            *(
                _bounded(name, limit, on_timeout, make())
                for key, name, on_timeout, make in plan
                if key not in skipped and name not in skipped
            )
        )
    finally:
        await client.aclose()
    return HealthReport([result for row in rows for result in row], now)


__all__ = [
    "CHECKS",
    "SKIP_NAMES",
    "CheckResult",
    "HealthReport",
    "exchange_ping_url",
    "run_checks",
]
