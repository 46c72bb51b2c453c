"""The project's configuration: ``config.yaml`` plus ``DC__*`` environment overrides, validated.

A config may be given as a path, a dict, a :class:`Config` or ``None`` (the defaults plus the
environment). Environment variables override the file: ``DC__DATABASE__URL=...`` sets
``database.url``, ``DC__PERFORMANCE__DB_POOL_SIZE=10`` sets ``performance.db_pool_size``.

Any unknown key or bad value raises :class:`~data_collector.errors.ConfigError` with one line that
names the key, e.g. ``config.yaml: performance.db_pool_size: must be a positive integer``.

Long because every section's model, its validators and the file and environment loading share
one way of naming a key and its source in an error; a split would be a candidate for later.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from data_collector.datatypes import DEFAULT_DATA_TYPES, validate_data_types
from data_collector.echo import one_line, shown_input
from data_collector.errors import ConfigError, UsageError
from data_collector.markets import DEFAULT_TIMEFRAMES, normalize_symbol_entry, validate_timeframe
from data_collector.redis.keys import key_part
from data_collector.redis.url import parse_redis_url
from data_collector.storage.url import parse_database_url
from data_collector.venues import adapter_for

ENV_PREFIX = "DC__"
DEFAULT_CONFIG_PATH = Path("config.yaml")
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/crypto_data"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Largest config file read: a config is a few kB, and this bounds the parser's memory and time.
MAX_CONFIG_BYTES = 1024 * 1024
#: Most values (scalars, lists, mappings) and nesting levels in a config file.
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 64

_RELATIVE_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_RELATIVE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Venue labels starting with this are simulated data (the demo, the simulator); never a real venue.
SIMULATED_VENUE_PREFIX = "sim-"


def _checked_url(parse: Callable[..., object], value: SecretStr) -> SecretStr:
    """``value`` once ``parse`` (the URL's one parser) accepts it; its error becomes pydantic's."""
    try:
        parse(value.get_secret_value(), key=None)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: Candles per futures klines request by default: the most that still weighs 2 (see futures_venue).
FUTURES_PAGE_LIMIT = 499


class ArchiveConfig(_Section):
    """Binance's public data archives (data.binance.vision) as a backfill source."""

    #: Base URL of the archive tree; ``None``: data.binance.vision for Binance, none for a simulated venue.
    url: str | None = None
    #: Verify each zip against its ``.CHECKSUM`` (sha256) before storing a row. ``false`` stores
    #: rows of a zip whose checksum is wrong or missing: a silently damaged file goes into the table.
    verify: bool = True
    #: Files downloading at once, over all pairs (bounds the bytes in memory with the write queue).
    downloads_in_flight: int = Field(default=4, ge=1, le=64)
    #: Timeout of one file download.
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    #: A day's file is asked for once this many hours have passed since the day ended.
    daily_lag_h: float = Field(default=12.0, ge=0)
    #: A month's file is asked for once this many days have passed since the month ended.
    monthly_lag_days: float = Field(default=7.0, ge=0)
    #: Candles of each archive month (its first file in a run) compared with REST, at random, one
    #: request each; a difference sends the file's range to REST and the report names it. 0: off.
    cross_check: int = Field(default=0, ge=0, le=10_000)


class ExchangeConfig(_Section):
    """Which exchange to talk to, through ccxt."""

    #: The ccxt class (``ccxt.binance``): how to talk to the exchange.
    id: str = "binance"
    #: The venue label every stored row and Redis key carries (``instruments.exchange``,
    #: ``dc:stream:<name>:...``); default: ``id``. Labels starting with ``sim-`` are reserved for
    #: simulated data: the demo and the simulator use ``sim-binance``, so their rows and keys never
    #: mix with a real venue's.
    name: str = "binance"
    #: Extra ccxt options (merged into ``options``), e.g. ``{"fetchMarkets": {"types": ["spot"]}}``.
    options: dict[str, Any] = Field(default_factory=dict)
    #: Overrides of ccxt's ``urls`` (the simulator sets these), e.g. ``{"api": {"public": ...}}``.
    urls: dict[str, Any] = Field(default_factory=dict)
    #: WebSocket base URL for the streamer; ``None`` means the exchange's own.
    ws_url: str | None = None
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    #: Timeout of one HTTP request to the exchange.
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Request weight per minute the exchange allows; ``None`` reads it from the exchange
    #: (Binance's exchangeInfo ``rateLimits``, 6000) or, without weight headers, uses ccxt's rateLimit.
    weight_limit: int | None = Field(default=None, ge=1, le=1_000_000)
    #: Fraction of the weight budget left unused, for other clients on the same IP and clock error.
    rate_limit_margin: float = Field(default=0.01, ge=0, lt=0.5)
    #: Retries of a failed request (network, 5xx, 429, timeouts, malformed pages) before the pair fails.
    max_retries: int = Field(default=7, ge=0, le=100)
    #: Candles per OHLCV request: at most the exchange's maximum (1000 on Binance spot), which the
    #: collector checks against ccxt's fetchOHLCV ``limit`` feature when it starts.
    ohlcv_page_limit: int = Field(default=1000, ge=1, le=10_000)
    #: Where backfilled candles come from: ``rest``; ``archive`` (the venue's public data archives
    #: only, a pair fails where they fail); ``auto`` (archives where published, REST for the rest
    #: and for any archive that fails verification; REST only on venues without archives).
    source: Literal["auto", "rest", "archive"] = "auto"
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    #: Requests per 2 s window of named endpoints (``market/history-candles: 10``), on venues
    #: that count per endpoint (OKX), over the limits read from ccxt's table.
    endpoint_limits: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None:
            data = {**data, "name": data.get("id", "binance")}
        if isinstance(data, dict) and "ohlcv_page_limit" not in data:
            # A venue whose answers cap a page (OKX: newest first, 100 a history-candles answer).
            cap = adapter_for(str(data.get("id"))).ohlcv_page_limit
            if cap is not None:
                data = {**data, "ohlcv_page_limit": cap}
        return data

    @field_validator("endpoint_limits")
    @classmethod
    def _endpoint_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for endpoint, limit in value.items():
            if limit < 1:
                raise ValueError(f"{endpoint}: must allow at least 1 request per window")
        return value

    @field_validator("id")
    @classmethod
    def _known_exchange(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]{2,32}$", value):
            raise ValueError("must be a ccxt exchange id such as 'binance'")
        return value

    @field_validator("name")
    @classmethod
    def _venue_label(cls, value: str) -> str:
        try:
            return key_part("venue name", value)
        except UsageError:
            raise ValueError(
                "must be a venue label such as 'binance': 1-64 letters, digits, '_', '.', '@' or '-'"
            ) from None

    @property
    def simulated(self) -> bool:
        """Whether :attr:`name` labels simulated data (``sim-...``)."""
        return is_simulated_venue(self.name)


class VenueConfig(ExchangeConfig):
    """One entry of ``venues``: an ``exchange`` section plus what to collect there.

    ``symbols`` (exact names) are required; ``data_types`` and ``timeframes`` default to the
    top-level ones; ``futures_exchange`` is the venue's perpetuals section (Binance; OKX serves
    spot and swaps through one client). The venue has its own client, rate limiter and label.
    Its ``id`` is checked against ccxt's by the backfill command (the streamer never imports ccxt).
    """

    symbols: list[str]
    data_types: list[str] | None = None
    timeframes: list[str] | None = None
    futures_exchange: ExchangeConfig | None = None

    @field_validator("symbols")
    @classmethod
    def _venue_symbols(cls, value: list[str]) -> list[str]:
        return Config._symbols(value)

    @field_validator("timeframes")
    @classmethod
    def _venue_timeframes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else Config._timeframes(value)

    @field_validator("data_types")
    @classmethod
    def _venue_data_types(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else Config._data_types(value)

    @model_validator(mode="after")
    def _types_the_venue_has(self) -> VenueConfig:
        _check_venue_has(self.id, self.data_types or [])
        return self


def _check_venue_has(exchange_id: str, data_types: list[str]) -> None:
    """Refuse data types the venue lacks (its adapter's ``data_types``), one line."""
    adapter = adapter_for(exchange_id)
    lacking = adapter.lacking(data_types)
    if lacking:
        raise ValueError(
            f"data_types: {', '.join(lacking)} not collected from {exchange_id} by this version; "
            f"it collects {', '.join(adapter.data_types or ())}"
        )


def is_simulated_venue(name: str) -> bool:
    """Whether venue label ``name`` is reserved for simulated data (it starts with ``sim-``)."""
    return name.startswith(SIMULATED_VENUE_PREFIX)


class DatabaseConfig(_Section):
    """Where candles are stored: PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

    url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    #: PostgreSQL schema that holds the tables (tests use one schema each).
    db_schema: str = Field(default="public", alias="schema")
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Bound on any single statement or COPY, enforced from outside the driver as well.
    command_timeout_s: float = Field(default=60.0, gt=0, le=3600)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: SecretStr) -> SecretStr:
        return _checked_url(parse_database_url, value)

    @field_validator("db_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENT_RE.match(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, _)")
        return value


class RedisConfig(_Section):
    """Redis, for the streamer, the cache and the health heartbeat."""

    url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    #: First part of every key the project writes (``dc:...``); tests use one prefix each.
    prefix: str = "dc"
    socket_timeout_s: float = Field(default=2.0, gt=0, le=60)
    connect_timeout_s: float = Field(default=2.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        # Only its shape: the query's files are checked when a client is built from it.
        return _checked_url(parse_redis_url, value)

    @field_validator("prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError("must be 1-64 characters of letters, digits, '_', '.', '-'")
        return value


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    file: str | None = "logs/optimized_collection.log"
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    backup_count: int = Field(default=5, ge=0)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class PerformanceConfig(_Section):
    """The user's tuning keys, with their defaults. Each does what its name says."""

    db_pool_size: int = Field(default=20, ge=1, le=1000)
    db_max_overflow: int = Field(default=40, ge=0, le=1000)
    db_pool_recycle: int = Field(default=3600, ge=-1)
    redis_pool_size: int = Field(default=50, ge=1, le=10000)
    ws_batch_size: int = Field(default=10, ge=1, le=100_000)
    ws_batch_interval: float = Field(default=0.1, gt=0, le=60)
    #: Symbols being planned and fetched at once, each with all its timeframes. It does not bound
    #: the requests: ``requests_in_flight`` and ``pages_in_flight`` do, whatever this is.
    concurrent_symbols: int = Field(default=5, ge=1, le=1000)
    #: HTTP requests to the exchange in flight at once, over all pairs: enough to hide the latency.
    requests_in_flight: int = Field(default=32, ge=1, le=1000)
    #: Pages between their request and the write queue, over all pairs: bounds parsed pages in memory.
    pages_in_flight: int = Field(default=32, ge=1, le=1000)
    #: Pages of one (symbol, timeframe) pair fetched at once.
    pages_in_flight_per_pair: int = Field(default=16, ge=1, le=1000)
    #: Requests per minute, a cap on top of the exchange's own weight budget; ``None`` (or
    #: ``"auto"``) lets the exchange's budget govern alone. The guide's old 1200 predates Binance's
    #: 6,000-weight budget and would hold a backfill to about a fifth of it.
    api_rate_limit: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("api_rate_limit", mode="before")
    @classmethod
    def _auto_rate_limit(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("auto", "null", "none", ""):
            return None
        return value


class CacheConfig(_Section):
    compression: Literal["lz4", "zlib", "none"] = "lz4"
    #: Values whose packed size is at least this many bytes are compressed.
    compress_threshold: int = Field(default=1024, ge=0)
    namespace: str = "cache"
    #: After a failed call, answer misses at once for this long before trying Redis again.
    down_backoff_s: float = Field(default=1.0, ge=0, le=300)


class StreamingConfig(_Section):
    #: ``native``: Binance's or OKX's own protocol; ``ccxt``: the generic ccxt.pro adapter (any
    #: ccxt.pro exchange; an ``exchange.id`` with no native adapter uses it anyway).
    adapter: Literal["native", "ccxt"] = "native"
    channels: list[str] = Field(default_factory=lambda: ["trade", "bookTicker", "kline_1m", "depth"])
    #: Redis stream length bound (``XADD MAXLEN ~``).
    stream_maxlen: int = Field(default=100_000, ge=1)
    #: Messages kept in memory while Redis is unreachable; the oldest are dropped past this.
    buffer_max: int = Field(default=100_000, ge=1)
    #: Reconnect a connection that has been silent this long.
    watchdog_s: float = Field(default=30.0, gt=0)
    reconnect_max_backoff_s: float = Field(default=30.0, gt=0)
    book_depth: int = Field(default=20, ge=1, le=5000)
    book_publish_interval_ms: int = Field(default=100, ge=0)
    #: Levels asked for in the REST depth snapshot a book is rebuilt from.
    book_snapshot_limit: int = Field(default=1000, ge=5, le=5000)
    #: First reconnect delay; it doubles (with jitter) up to ``reconnect_max_backoff_s``.
    reconnect_min_backoff_s: float = Field(default=0.5, gt=0)
    #: Streams on one WebSocket connection (Binance allows 1024).
    max_streams_per_connection: int = Field(default=1024, ge=1, le=1024)
    #: Most entries written in one Redis round trip when messages queue up faster than round trips.
    max_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    #: Frames larger than this are counted as malformed and skipped.
    max_frame_bytes: int = Field(default=1_048_576, ge=1024)
    #: The widest aggTrade or trade gap fetched back over REST (0: none are); wider ones stay marked.
    repair_max_ids: int = Field(default=100_000, ge=0)
    #: Request weight the REST repairs (trades, klines after a Redis restart) may spend a minute;
    #: they go out only while no live request (depth snapshot, kline repair) waits.
    repair_weight_per_min: int = Field(default=1200, ge=1)
    #: Where repaired trades go: ``companion`` (the ``<channel>@repair`` stream the reader merges)
    #: or ``hold`` (the live stream itself; its live entries wait meanwhile, issue 15's option (a),
    #: :mod:`data_collector.streaming.repair_hold`).
    repair_mode: Literal["companion", "hold"] = "companion"
    #: Repair mode ``hold``: live entries one held stream keeps at most, and the widest gap held
    #: for; past it the gap goes to the companion stream.
    repair_hold_max: int = Field(default=10_000, ge=1)
    #: Repair mode ``hold``: longest a stream is held; past it the gap goes to the companion stream.
    repair_hold_max_s: float = Field(default=2.0, gt=0)
    #: Write the streamed trades (Binance aggTrades, OKX trades; the repaired ones too) to the
    #: database's trades table, and close its holes with the trade backfill
    #: (:mod:`data_collector.streaming.trades_store`).
    store_trades: bool = False
    #: Trades waiting for the database at most; past it new ones are dropped and left as a hole
    #: for the trade backfill.
    store_trades_queue: int = Field(default=200_000, ge=10, le=10_000_000)
    #: Sharded streaming (``stream --shard-group``): symbols per shard, in the configured order.
    shard_symbols: int = Field(default=1, ge=1, le=1024)
    #: Sharded streaming: a shard's lease. A dead host's shards move on within this plus a third
    #: of it; a live host renews every third and stops writing once two thirds passed unrenewed.
    shard_lease_s: float = Field(default=3.0, ge=0.3, le=600)


class MetricsConfig(_Section):
    #: Port of the Prometheus ``/metrics`` endpoint; ``None`` switches it off.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Address the ``/metrics`` endpoint listens on (``0.0.0.0`` inside a container).
    host: str = "127.0.0.1"
    #: Heartbeat key TTL; a beat every third of it. The health check calls a heartbeat stale once
    #: two beats are missed; the key is gone (the writer died) once the TTL passes.
    heartbeat_ttl_s: int = Field(default=60, ge=1)
    #: This process's name in its heartbeat key (``<prefix>:heartbeat:<component>:<instance>``),
    #: so that two collectors on one Redis prefix keep a heartbeat each; ``None``: ``<host>-<pid>``.
    instance: str | None = None
    #: The health check warns when the newest stream message is older than this.
    stream_stale_s: float = Field(default=60.0, gt=0)
    #: Slack on top of two timeframes before the health check calls stored candles stale.
    freshness_margin_s: float = Field(default=300.0, ge=0)
    #: Bound on each single health check (connect + query).
    check_timeout_s: float = Field(default=5.0, gt=0, le=300)

    @field_validator("instance")
    @classmethod
    def _instance_label(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return key_part("instance", value)
        except UsageError:
            raise ValueError("must be 1-64 letters, digits, '_', '.', '@' or '-'") from None


class UniverseConfig(_Section):
    """How ``symbols`` patterns become symbols (:mod:`data_collector.backfill.universe`)."""

    #: Keep the N trading pattern matches with the highest 24 h quote volume; ``None``: all.
    top: int | None = Field(default=None, ge=1, le=100_000)
    #: Collect delisted (not trading) symbols up to their end, rather than skip (a pattern's
    #: matches) or refuse (an exact name) them.
    include_delisted: bool = False


class ParquetTierConfig(_Section):
    """The Parquet tier (:mod:`data_collector.storage.archive`)."""

    #: The Parquet dataset: a local directory (relative: to the current directory), or an object
    #: store URI (``s3://bucket/prefix?endpoint_override=host:port&scheme=http``, pyarrow's options).
    path: str = "data/archive"
    #: What ``data-collector archive`` moves by default: closed months ending before this.
    older_than: str = "90d"
    #: Rows per Parquet row group.
    row_group_rows: int = Field(default=1_048_576, ge=1024)


class Config(BaseSettings):
    """The whole configuration. Build one with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
    )

    exchange: ExchangeConfig = Field(default_factory=ExchangeConfig)
    #: The venue of perpetual symbols (``BTC/USDT:USDT``), with its own weight budget and label;
    #: ``None``: derived from ``exchange`` (see :meth:`futures_venue`).
    futures_exchange: ExchangeConfig | None = None
    #: Several venues collected in one run, each with its own symbols, data types, client, rate
    #: limiter and label (see :meth:`venue_configs`); empty: the one venue of ``exchange``.
    venues: list[VenueConfig] = Field(default_factory=list)
    #: Exact symbols (``SOL/USDT``) and patterns (``*/USDT``), resolved at the start of each run.
    symbols: list[str] = Field(default_factory=lambda: ["BTC/USDT", "ETH/USDT", "SOL/USDT"])
    universe: UniverseConfig = Field(default_factory=UniverseConfig)
    timeframes: list[str] = Field(default_factory=lambda: list(DEFAULT_TIMEFRAMES))
    #: What to collect per symbol: ``ohlcv`` (every timeframe), ``trades`` (aggregate trades);
    #: for perpetuals also ``funding_rates``, ``open_interest``, ``mark_ohlcv``, ``index_ohlcv``
    #: and ``premium_ohlcv`` (see :mod:`data_collector.datatypes`).
    data_types: list[str] = Field(default_factory=lambda: list(DEFAULT_DATA_TYPES))
    #: ISO date/datetime, or a relative form like ``180d`` (before now).
    start: str = "30d"
    #: ISO date/datetime, a relative form, or ``None`` for now.
    end: str | None = None
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    archive: ParquetTierConfig = Field(default_factory=ParquetTierConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, as twelve-factor deployments expect.
        return (env_settings, init_settings)

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: list[str]) -> list[str]:
        try:
            out = [normalize_symbol_entry(s) for s in value]
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if not out:
            raise ValueError("list at least one symbol, e.g. ['SOL/USDT']")
        return list(dict.fromkeys(out))

    @field_validator("timeframes")
    @classmethod
    def _timeframes(cls, value: list[str]) -> list[str]:
        try:
            out = [validate_timeframe(tf) for tf in value]
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if not out:
            raise ValueError("list at least one timeframe, e.g. ['1m', '1h']")
        return list(dict.fromkeys(out))

    @field_validator("data_types")
    @classmethod
    def _data_types(cls, value: list[str]) -> list[str]:
        try:
            out = validate_data_types(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        if not out:
            raise ValueError("list at least one data type, e.g. ['ohlcv']")
        return out

    @field_validator("start", "end", mode="before")
    @classmethod
    def _yaml_dates(cls, value: object) -> object:
        # YAML reads an unquoted 2024-01-01 as a date; config.yaml documents that form.
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        if isinstance(value, date):
            return value.isoformat()
        return value

    @field_validator("start", "end")
    @classmethod
    def _time_spec(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_time_ms(value)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return value

    def futures_venue(self) -> ExchangeConfig:
        """The ``futures_exchange`` section, or one derived from ``exchange``: ccxt ``binanceusdm``
        labelled ``<exchange.name>usdm`` (``binanceusdm``), with the spot section's timeouts and
        retries and 499 candles per page (Binance futures weigh klines by ``limit``: 499 costs 2,
        1000 costs 5, so 499 fetches the most candles per unit of weight; 499 is also the page of
        a ``futures_exchange`` section that does not set ``ohlcv_page_limit``)."""
        if self.futures_exchange is not None:
            if "ohlcv_page_limit" in self.futures_exchange.model_fields_set:
                return self.futures_exchange
            return self.futures_exchange.model_copy(update={"ohlcv_page_limit": FUTURES_PAGE_LIMIT})
        spot = self.exchange
        same = ("timeout_s", "max_retries", "rate_limit_margin", "api_key", "secret")
        return ExchangeConfig(
            id="binanceusdm",
            name=f"{spot.name}usdm",
            ohlcv_page_limit=FUTURES_PAGE_LIMIT,
            **{k: getattr(spot, k) for k in same},
        )

    @model_validator(mode="after")
    def _venue_labels_unique(self) -> Config:
        labels = [v.name for v in self.venues]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"venues: the label {twice[0]!r} is given twice; give each venue its own 'name'")
        if not self.venues:
            _check_venue_has(self.exchange.id, self.data_types)
        return self

    def venue_configs(self) -> list[tuple[str, Config]]:
        """One config per venue, as a one-venue run reads it: ``(where, config)``.

        With ``venues``, each entry becomes the ``exchange`` (and ``futures_exchange``) section,
        with its ``symbols`` and its ``data_types`` and ``timeframes`` or the top-level ones;
        without, the config itself (``exchange`` is the one-venue shorthand).
        """
        if not self.venues:
            return [("exchange", self)]
        out: list[tuple[str, Config]] = []
        own = ("symbols", "data_types", "timeframes", "futures_exchange")
        for i, venue in enumerate(self.venues):
            config = self.model_copy(deep=True)
            config.venues = []
            section = venue.model_dump(exclude=set(own))
            for secret in ("api_key", "secret"):
                value = getattr(venue, secret)
                section[secret] = value.get_secret_value() if value is not None else None
            config.exchange = ExchangeConfig(**section)
            config.futures_exchange = venue.futures_exchange
            config.symbols = venue.symbols
            config.data_types = venue.data_types or self.data_types
            config.timeframes = venue.timeframes or self.timeframes
            out.append((f"venues[{i}] ({venue.name})", config))
        return out

    def start_ms(self, now_ms: int | None = None) -> int:
        return parse_time_ms(self.start, now_ms)

    def end_ms(self, now_ms: int | None = None) -> int:
        return parse_time_ms(self.end, now_ms) if self.end is not None else _now_ms(now_ms)


def with_exchange(config: Config, section: Mapping[str, Any]) -> Config:
    """A copy of ``config`` whose ``exchange`` section is updated by ``section`` (validated).

    ``section`` without a ``name`` keeps the venue label only when it keeps the ``id`` too.
    """
    merged = {**config.exchange.model_dump(), **section}
    if "name" not in section and "id" in section:
        merged.pop("name")
    out = config.model_copy(deep=True)
    out.exchange = ExchangeConfig(**merged)
    return out


def _now_ms(now_ms: int | None) -> int:
    return now_ms if now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)


def to_ms(value: datetime | date | int | float | str) -> int:
    """Convert a datetime, date, ms integer or time spec to UTC milliseconds.

    Timezone-naive datetimes are taken as UTC.
    """
    if isinstance(value, bool):
        raise UsageError(f"not a time: {shown_input(value)}")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        return parse_time_ms(value)
    raise UsageError(f"not a time: {shown_input(value)}; use a datetime, an ISO date or a form like '30d'")


def parse_time_ms(spec: str, now_ms: int | None = None) -> int:
    """Parse an ISO date/datetime or a relative ``<n><s|m|h|d|w>`` (ago) into UTC milliseconds."""
    text = spec.strip()
    match = _RELATIVE_RE.match(text)
    if match:
        try:
            delta = timedelta(**{_RELATIVE_UNITS[match.group(2)]: int(match.group(1))})
        except OverflowError:
            raise UsageError(
                f"invalid time {shown_input(spec)}: that is further back than any date"
            ) from None
        return _now_ms(now_ms) - int(delta.total_seconds() * 1000)
    if text.lower() == "now":
        return _now_ms(now_ms)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid time {shown_input(spec)}: use an ISO date like 2024-01-01 or a relative form like 180d"
        ) from None
    return to_ms(parsed)


def _shown_key(part: object) -> str:
    # A key is the user's text: keep the error one readable line whatever it holds.
    return shown_input(part, 40, quoted=False)


def _env_name(loc: tuple[int | str, ...]) -> str | None:
    """The ``DC__*`` variable that set the value at ``loc``, if one did (the environment wins)."""
    name = ENV_PREFIX + "__".join(str(part) for part in loc).upper()
    # pydantic-settings matches variable names case-insensitively.
    return next((key for key in os.environ if key.upper() == name), None) if len(loc) > 0 else None


def setting_source(loc: tuple[str, ...], origin: str) -> str:
    """Where the value at ``loc`` came from, for an error: ``environment: DC__X__Y (x.y)`` or ``<file>: x.y``."""
    dotted = ".".join(_shown_key(part) for part in loc)
    env = _env_name(loc)
    return f"environment: {env} ({dotted})" if env is not None else f"{origin}: {dotted}"


def config_origin(source: object) -> str:
    """How :func:`load_config` names ``source`` in its errors: the file's path, or ``config``."""
    if source is None:
        return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else "config"
    return str(source) if isinstance(source, (str, os.PathLike)) else "config"


def _check_env_sections() -> None:
    """Refuse a ``DC__*`` variable whose first part names no section: pydantic-settings ignores it.

    A misspelled section (``DC__DATABSE__URL``) would otherwise leave the setting at its default
    without a word; a misspelled key inside a known section is refused by the section's model.
    """
    fields = set(Config.model_fields)
    for name in sorted(os.environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in fields:
            raise ConfigError(
                f"environment: {_shown_key(name)}: unknown section {_shown_key(section)!r}; "
                f"use one of {', '.join(sorted(fields))}"
            )


def _format_validation_error(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    loc = ".".join(_shown_key(part) for part in first["loc"]) or "(top level)"
    env = _env_name(first["loc"])
    if env is not None:
        origin, loc = "environment", f"{env} ({loc})"
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'; check its spelling against config.yaml"
    message = first["msg"]
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.replace(noise, "")
    extra = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{origin}: {loc}: {message}{extra}"


#: libyaml when installed: the pure-Python parser needs about a minute for 1 MB of ``[1,1,...]``.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)


@dataclass
class _Frame:
    """One open mapping or sequence while walking YAML events: where the next node goes."""

    mapping: bool
    key: str = ""
    index: int = 0
    at_key: bool = True

    def label(self) -> str | None:
        if not self.mapping:
            return str(self.index)
        return None if self.at_key else self.key

    def advance(self, node: yaml.Event) -> None:
        if not self.mapping:
            self.index += 1
        elif self.at_key:
            self.key = node.value if isinstance(node, yaml.ScalarEvent) else "?"
            self.at_key = False
        else:
            self.at_key = True


def _check_shape(text: str, origin: str) -> None:
    """Refuse YAML aliases, and more nodes or nesting than a config has, before building anything.

    An alias (``*name``) lets a few bytes expand into a structure of any size (10^8 leaves from
    1 kB) or into one that contains itself, which every later walk over it (pydantic, ccxt's
    ``deep_extend``) follows until ``RecursionError``; a config never needs one. Walking the
    parser's events costs little memory and stops at the first problem, naming its key.
    """
    frames: list[_Frame] = []
    nodes = 0

    def key() -> str:
        path = ".".join(_shown_key(label) for f in frames if (label := f.label()) is not None)
        return shown_input(path, 100, quoted=False) if path else "(top level)"

    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, _NODE_EVENTS):
            nodes += 1
            if nodes > MAX_CONFIG_NODES:
                raise ConfigError(
                    f"{origin}: {key()}: more than {MAX_CONFIG_NODES:,} values; a config has a few hundred"
                )
            if isinstance(event, yaml.AliasEvent):
                line = f" (line {event.start_mark.line + 1})" if event.start_mark is not None else ""
                raise ConfigError(
                    f"{origin}: {key()}: YAML aliases such as *{_shown_key(event.anchor)}{line} are "
                    "not supported; write the value out"
                )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(frames) >= MAX_CONFIG_DEPTH:
                raise ConfigError(f"{origin}: {key()}: nested too deeply to be a config file")
            frames.append(_Frame(mapping=isinstance(event, yaml.MappingStartEvent)))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frames.pop()
            if frames:
                frames[-1].advance(event)
        elif isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)) and frames:
            frames[-1].advance(event)


def _read_text(path: Path) -> str:
    """The text of a config file: a regular file of at most :data:`MAX_CONFIG_BYTES`, UTF-8.

    Opened without blocking and checked on the open descriptor, so a FIFO cannot hang the
    process and a device (``/dev/zero``) or a huge file is refused before anything is read.
    """
    shown = shown_input(str(path), 120, quoted=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {shown}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {shown}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ConfigError(f"config file {shown} is {kind}; give a YAML file")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {shown}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {shown} is larger than {MAX_CONFIG_BYTES // 1024 // 1024} MB; "
            "a config file is a few kB"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    shown = shown_input(str(path), 120, quoted=False)
    try:
        _check_shape(text, shown)
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506  (a SafeLoader: plain data only)
    except RecursionError:
        raise ConfigError(f"{shown}: nested too deeply to be a config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{shown}: not valid YAML{where}; fix the syntax") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors let these through, e.g. for a date like 2024-13-01.
        reason = str(exc).split(";")[0]
        raise ConfigError(one_line(f"{shown}: a value YAML cannot read ({reason}); quote it")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: the top level must be a mapping of sections (exchange:, database:, ...)")
    odd = next((key for key in data if not isinstance(key, str)), None)
    if odd is not None:
        raise ConfigError(f"{shown}: unknown key {shown_input(odd, 40)}; check it against config.yaml")
    return data


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike[str] | None = None) -> Config:
    """Build a validated :class:`Config`.

    Args:
        source: a ``Config`` (returned as is), a dict of settings, a path to a YAML file, or
            ``None`` for ``./config.yaml`` when it exists, else the defaults. ``DC__*``
            environment variables override whatever the source says.

    Raises:
        ConfigError: one line naming the key that is wrong and what to fix.
    """
    if isinstance(source, Config):
        return source
    _check_env_sections()
    origin = "config"
    data: dict[str, Any]
    if source is None:
        data = _read_yaml(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else {}
        origin = str(DEFAULT_CONFIG_PATH) if data else "config"
    elif isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        data = _read_yaml(path)
        origin = str(path)
    else:
        raise ConfigError(f"config must be a path, a dict or a Config, not {type(source).__name__}")
    try:
        return Config(**data)
    except ValidationError as exc:
        raise ConfigError(one_line(_format_validation_error(exc, origin))) from None
    except UsageError as exc:
        raise ConfigError(one_line(f"{origin}: {exc}")) from None
    except (ValueError, TypeError) as exc:
        # pydantic-settings raises SettingsError (a ValueError) for unparsable env values.
        raise ConfigError(one_line(f"{origin}: {exc}")) from None
