"""A Redis cache for notebooks and services: :class:`CacheManager` (sync) and :class:`AsyncCacheManager`.

Both share the value format of :mod:`utils.serialization` (msgpack with exact datetimes,
Decimals and pandas objects; one header byte; lz4/zlib above ``cache.compress_threshold``), so
either reads what the other wrote.

A cache must never take the application down with it. Every call is bounded by
``redis.socket_timeout_s`` / ``redis.connect_timeout_s``; when Redis is unreachable ``get``
returns a miss and ``set`` returns ``False`` (both counted as ``errors``), unless the manager was
made with ``strict=True``, which raises :class:`CacheUnavailableError` instead. After a failure
the manager answers at once, without touching the network, for ``cache.down_backoff_s``; then it
tries again, and reconnects by itself as soon as Redis is back. Commands are never retried, so a
write cannot be applied twice.

Example:
    >>> cache = CacheManager(config)  # doctest: +SKIP
    >>> cache.set("key", {"data": "value"}, ttl=300)  # doctest: +SKIP
    >>> cache.get("key")  # doctest: +SKIP
    {'data': 'value'}

Long because the sync and the async manager mirror each other method for method; side by side,
they stay in step.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

import redis
import redis.asyncio as aioredis

from data_collector.config import Config, load_config
from data_collector.errors import ClosedError, ServerUnavailableError, UsageError
from data_collector.redis.client import RedisSettings, async_pool, sync_pool
from data_collector.redis.keys import cache_key
from utils import serialization
from utils.performance_monitor import LatencyWindow
from utils.serialization import Compression, CorruptValueError, SerializationError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
TTL = int | float | timedelta | None
ConfigSource = Config | Mapping[str, Any] | str | None
#: ``(ok, result, latency_ns)`` of one guarded Redis call.
Outcome = tuple[bool, Any, int]

_SCAN_BATCH = 1000
_LATENCY_WINDOW = 10_000


class CacheUnavailableError(ServerUnavailableError):
    """Redis could not serve a cache call (raised only by managers made with ``strict=True``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("redis (cache)", detail)


class CacheStats:
    """Thread-safe counters behind ``get_stats()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.sets = 0
        self.deletes = 0
        self.errors = 0
        self.bytes_logical = 0
        self.bytes_stored = 0
        self._latency = LatencyWindow(_LATENCY_WINDOW)

    def record(
        self, *, hits: int = 0, misses: int = 0, errors: int = 0, latency_ns: int | None = None
    ) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.errors += errors
            if latency_ns is not None:
                self._latency.add(latency_ns / 1e6)

    def record_sets(self, n: int, logical: int, stored: int, latency_ns: int) -> None:
        with self._lock:
            self.sets += n
            self.bytes_logical += logical
            self.bytes_stored += stored
            self._latency.add(latency_ns / 1e6)

    def record_deletes(self, n: int, latency_ns: int) -> None:
        with self._lock:
            self.deletes += n
            self._latency.add(latency_ns / 1e6)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lookups = self.hits + self.misses
            latency = self._latency.summary()
            return {
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else 0.0,
                "sets": self.sets,
                "deletes": self.deletes,
                "errors": self.errors,
                "bytes_logical": self.bytes_logical,
                "bytes_stored": self.bytes_stored,
                "compression_ratio": self.bytes_logical / self.bytes_stored if self.bytes_stored else 1.0,
                "latency_ms_mean": latency["avg"],
                "latency_ms_p99": latency["p99"],
                "operations": latency["count"],
            }


class _CacheCore:
    """What both managers share: settings, keys, encoding, stats and the 'Redis is down' state."""

    def __init__(self, config: ConfigSource, strict: bool, namespace: str | None) -> None:
        self.config = load_config(config)
        self.strict = strict
        self.prefix = self.config.redis.prefix
        self.namespace = namespace if namespace is not None else self.config.cache.namespace
        cache_key(self.prefix, self.namespace, "probe")  # validates prefix and namespace now
        self.compression: Compression = self.config.cache.compression
        self.threshold = self.config.cache.compress_threshold
        self.down_backoff_s = self.config.cache.down_backoff_s
        self.stats = CacheStats()
        self.closed = False
        self._down_until = 0.0
        self._down_reason = ""
        self._was_down = False

    def key(self, key: str) -> str:
        return cache_key(self.prefix, self.namespace, key)

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError("the cache manager is closed; make a new one")

    def encode(self, value: Any) -> tuple[bytes, int]:
        return serialization.encode(value, self.compression, self.threshold)

    def decode(self, data: bytes, key: str) -> tuple[bool, Any]:
        try:
            return True, serialization.decode(data)
        except CorruptValueError as exc:
            self.stats.record(errors=1)
            log.warning("cache value %r is unreadable, treated as a miss: %s", key, exc)
            if self.strict:
                raise
            return False, None

    def skip_while_down(self) -> bool:
        """True (after counting an error, or raising when strict) while Redis is known down."""
        if self._down_until and time.monotonic() < self._down_until:
            self.stats.record(errors=1)
            if self.strict:
                raise CacheUnavailableError(self._down_reason)
            return True
        return False

    def failed(self, exc: Exception, what: str) -> None:
        """Count a failed call, remember Redis is down; raise when strict."""
        self.stats.record(errors=1)
        reason = f"{what}: {type(exc).__name__}: {exc}"
        if not self._was_down:
            log.warning("cache unavailable, answering misses for now (%s)", reason)
        self._was_down = True
        self._down_reason = reason
        self._down_until = time.monotonic() + self.down_backoff_s
        if self.strict:
            raise CacheUnavailableError(reason) from exc

    def succeeded(self) -> None:
        if self._was_down:
            log.warning("cache reachable again")
            self._was_down = False
            self._down_until = 0.0

    # Every public call is: prepare (here, no I/O), one guarded Redis call (``_call`` of each
    # manager, sync or async), then finish (here). Only the middle differs between the twins.

    def prepare_set(self, key: str, value: Any, ttl: TTL) -> tuple[str, bytes, int, int | None, int | None]:
        self.check_open()
        full = self.key(key)
        data, logical = self.encode(value)
        ex, px = _ttl_args(ttl)
        return full, data, logical, ex, px

    def prepare_sets(
        self, mapping: Mapping[str, Any], ttl: TTL
    ) -> tuple[list[tuple[str, bytes, int]], int | None, int | None]:
        self.check_open()
        encoded = [(self.key(k), *self.encode(v)) for k, v in mapping.items()]
        ex, px = _ttl_args(ttl)
        return encoded, ex, px

    def prepare_keys(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        self.check_open()
        names = list(keys)
        return names, [self.key(k) for k in names]

    def clear_pattern(self, prefix: str) -> str:
        self.check_open()
        return _glob_escape(f"{self.prefix}:{self.namespace}:{prefix}") + "*"

    def finish_get(self, outcome: Outcome, key: str) -> tuple[bool, Any]:
        ok, data, latency = outcome
        if not ok:
            return False, None
        if data is None:
            self.stats.record(misses=1, latency_ns=latency)
            return False, None
        found, value = self.decode(data, key)
        self.stats.record(hits=int(found), misses=int(not found), latency_ns=latency)
        return found, value

    def finish_get_multi(self, outcome: Outcome, names: list[str]) -> dict[str, Any]:
        ok, raw, latency = outcome
        if not ok:
            return {}
        out: dict[str, Any] = {}
        misses = 0
        for name, data in zip(names, raw, strict=True):
            found, value = (False, None) if data is None else self.decode(data, name)
            if found:
                out[name] = value
            else:
                misses += 1
        self.stats.record(hits=len(out), misses=misses, latency_ns=latency)
        return out

    def finish_sets(self, outcome: Outcome, encoded: list[tuple[str, bytes, int]]) -> bool:
        ok, _, latency = outcome
        if ok:
            logical = sum(e[2] for e in encoded)
            stored = sum(len(e[1]) for e in encoded)
            self.stats.record_sets(len(encoded), logical, stored, latency)
        return ok

    def finish_delete(self, outcome: Outcome) -> int:
        ok, n, latency = outcome
        if not ok:
            return 0
        self.stats.record_deletes(int(n), latency)
        return int(n)

    def function_key(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """``fn:<module>.<qualname>:<digest of the bound arguments>``."""
        try:
            bound = inspect.signature(func).bind(*args, **kwargs)
            bound.apply_defaults()
            parts: Any = [list(bound.args), sorted(bound.kwargs.items())]
        except (TypeError, ValueError):
            parts = [list(args), sorted(kwargs.items())]
        try:
            blob = serialization.pack(parts)
        except SerializationError:
            blob = repr(parts).encode()
        digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
        return f"fn:{func.__module__}.{func.__qualname__}:{digest}"


def _ttl_args(ttl: TTL) -> tuple[int | None, int | None]:
    """``(ex, px)`` for SET: whole seconds as EX, fractions as PX, ``None`` for no expiry."""
    if ttl is None:
        return None, None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise UsageError(f"ttl must be positive seconds (or None for no expiry), not {ttl!r}")
    if seconds == int(seconds):
        return int(seconds), None
    return None, max(1, round(seconds * 1000))


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class CacheManager:
    """A synchronous Redis cache (safe to share between threads).

    Args:
        config: a path to ``config.yaml``, a dict, a :class:`Config`, or ``None`` for
            ``./config.yaml`` / the defaults. Uses ``redis.*``, ``cache.*`` and
            ``performance.redis_pool_size``.
        strict: raise :class:`CacheUnavailableError` when Redis is unreachable, instead of
            answering misses and ``False``.
        namespace: overrides ``cache.namespace``; keys are ``<redis.prefix>:<namespace>:<key>``.
    """

    def __init__(
        self, config: ConfigSource = None, *, strict: bool = False, namespace: str | None = None
    ) -> None:
        self._core = _CacheCore(config, strict, namespace)
        self._pool = sync_pool(RedisSettings.from_config(self._core.config))
        self._redis = redis.Redis(connection_pool=self._pool)

    @property
    def namespace(self) -> str:
        return self._core.namespace

    def _call(self, what: str, fn: Callable[[], Any]) -> Outcome:
        core = self._core
        if core.skip_while_down():
            return False, None, 0
        started = time.perf_counter_ns()
        try:
            result = fn()
        except redis.RedisError as exc:
            core.failed(exc, what)
            return False, None, 0
        core.succeeded()
        return True, result, time.perf_counter_ns() - started

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` on a miss or when Redis is unreachable."""
        found, value = self._lookup(key)
        return value if found else default

    def _lookup(self, key: str) -> tuple[bool, Any]:
        self._core.check_open()
        full = self._core.key(key)
        return self._core.finish_get(self._call("GET", lambda: self._redis.get(full)), key)

    def set(self, key: str, value: Any, ttl: TTL = None) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds (``None``: no expiry).

        Returns:
            True when stored; False when Redis is unreachable (not strict).

        Raises:
            SerializationError: ``value`` holds a type the format cannot store.
        """
        full, data, logical, ex, px = self._core.prepare_set(key, value, ttl)
        outcome = self._call("SET", lambda: self._redis.set(full, data, ex=ex, px=px))
        return self._core.finish_sets(outcome, [(full, data, logical)])

    def get_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those ``keys`` that are cached, in one ``MGET``. Missing keys are left out."""
        names, full = self._core.prepare_keys(keys)
        if not names:
            return {}
        return self._core.finish_get_multi(self._call("MGET", lambda: self._redis.mget(full)), names)

    def set_multi(self, mapping: Mapping[str, Any], ttl: TTL = None) -> bool:
        """Store every item of ``mapping`` in one pipelined round trip (``SET ... EX`` each)."""
        encoded, ex, px = self._core.prepare_sets(mapping, ttl)
        if not encoded:
            return True

        def send() -> None:
            with self._redis.pipeline(transaction=False) as pipe:
                for full, data, _ in encoded:
                    pipe.set(full, data, ex=ex, px=px)
                pipe.execute()

        return self._core.finish_sets(self._call("SET (pipeline)", send), encoded)

    def delete(self, *keys: str) -> int:
        """Delete ``keys``; returns how many existed (0 when Redis is unreachable)."""
        names, full = self._core.prepare_keys(keys)
        if not names:
            return 0
        return self._core.finish_delete(self._call("DEL", lambda: self._redis.delete(*full)))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is cached (False when Redis is unreachable)."""
        _, full = self._core.prepare_keys([key])
        ok, found, _ = self._call("EXISTS", lambda: self._redis.exists(*full))
        return ok and bool(found)

    def clear(self, prefix: str = "") -> int:
        """Delete every key of this namespace that starts with ``prefix`` (SCAN, never KEYS).

        Returns:
            how many keys were deleted (0 when Redis is unreachable).
        """
        pattern = self._core.clear_pattern(prefix)

        def scan_and_unlink() -> int:
            deleted = 0
            batch: list[bytes] = []
            for name in self._redis.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    deleted += cast(int, self._redis.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += cast(int, self._redis.unlink(*batch))
            return deleted

        ok, deleted, _ = self._call("SCAN/UNLINK", scan_and_unlink)
        return int(deleted) if ok else 0

    def get_stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, sets, deletes, errors, bytes_logical, bytes_stored,
        compression_ratio (logical / stored), latency_ms_mean and latency_ms_p99 (recent calls)."""
        return self._core.stats.snapshot()

    def ping(self) -> bool:
        """Whether Redis answers now (never raises)."""
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def cached(
        self, ttl: TTL = 60, key: Callable[..., str] | None = None
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """Cache-aside decorator for sync and async functions.

        The key is built from the function's module, name and bound arguments, or by ``key``
        (called with the same arguments). ``None`` results are cached too. An async function's
        Redis calls run in a worker thread so that they never block the event loop.
        """

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            def name_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
                return (
                    key(*args, **kwargs) if key is not None else self._core.function_key(func, args, kwargs)
                )

            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    name = name_of(args, kwargs)
                    found, value = await asyncio.to_thread(self._lookup, name)
                    if found:
                        return value
                    value = await func(*args, **kwargs)
                    await asyncio.to_thread(self.set, name, value, ttl)
                    return value

                return async_wrapper  # type: ignore[return-value]

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                name = name_of(args, kwargs)
                found, value = self._lookup(name)
                if found:
                    return value  # type: ignore[no-any-return]
                result = func(*args, **kwargs)
                self.set(name, result, ttl)
                return result

            return wrapper

        return decorate

    def close(self) -> None:
        """Release the connection pool. Safe to call twice."""
        if self._core.closed:
            return
        self._core.closed = True
        self._redis.close()
        self._pool.disconnect()  # type: ignore[no-untyped-call]

    def __enter__(self) -> CacheManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheManager(namespace={self._core.namespace!r}, strict={self._core.strict})"


class AsyncCacheManager:
    """The async twin of :class:`CacheManager`: same arguments, same methods, awaited.

    Use as ``async with AsyncCacheManager(config) as cache:`` or call ``await cache.close()``.
    """

    def __init__(
        self, config: ConfigSource = None, *, strict: bool = False, namespace: str | None = None
    ) -> None:
        self._core = _CacheCore(config, strict, namespace)
        self._pool = async_pool(RedisSettings.from_config(self._core.config))
        self._redis = aioredis.Redis(connection_pool=self._pool)

    @property
    def namespace(self) -> str:
        return self._core.namespace

    async def _call(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Outcome:
        core = self._core
        if core.skip_while_down():
            return False, None, 0
        started = time.perf_counter_ns()
        try:
            result = await fn()
        except redis.RedisError as exc:
            core.failed(exc, what)
            return False, None, 0
        core.succeeded()
        return True, result, time.perf_counter_ns() - started

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` on a miss or when Redis is unreachable."""
        found, value = await self._lookup(key)
        return value if found else default

    async def _lookup(self, key: str) -> tuple[bool, Any]:
        self._core.check_open()
        full = self._core.key(key)
        return self._core.finish_get(await self._call("GET", lambda: self._redis.get(full)), key)

    async def set(self, key: str, value: Any, ttl: TTL = None) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds; False when Redis is unreachable."""
        full, data, logical, ex, px = self._core.prepare_set(key, value, ttl)
        outcome = await self._call("SET", lambda: self._redis.set(full, data, ex=ex, px=px))
        return self._core.finish_sets(outcome, [(full, data, logical)])

    async def get_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those ``keys`` that are cached, in one ``MGET``."""
        names, full = self._core.prepare_keys(keys)
        if not names:
            return {}
        return self._core.finish_get_multi(await self._call("MGET", lambda: self._redis.mget(full)), names)

    async def set_multi(self, mapping: Mapping[str, Any], ttl: TTL = None) -> bool:
        """Store every item of ``mapping`` in one pipelined round trip."""
        encoded, ex, px = self._core.prepare_sets(mapping, ttl)
        if not encoded:
            return True

        async def send() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                for full, data, _ in encoded:
                    pipe.set(full, data, ex=ex, px=px)
                await pipe.execute()

        return self._core.finish_sets(await self._call("SET (pipeline)", send), encoded)

    async def delete(self, *keys: str) -> int:
        """Delete ``keys``; returns how many existed."""
        names, full = self._core.prepare_keys(keys)
        if not names:
            return 0
        return self._core.finish_delete(await self._call("DEL", lambda: self._redis.delete(*full)))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is cached."""
        _, full = self._core.prepare_keys([key])
        ok, found, _ = await self._call("EXISTS", lambda: self._redis.exists(*full))
        return ok and bool(found)

    async def clear(self, prefix: str = "") -> int:
        """Delete every key of this namespace that starts with ``prefix`` (SCAN, never KEYS)."""
        pattern = self._core.clear_pattern(prefix)

        async def scan_and_unlink() -> int:
            deleted = 0
            batch: list[bytes] = []
            async for name in self._redis.scan_iter(match=pattern, count=_SCAN_BATCH):
                batch.append(name)
                if len(batch) >= _SCAN_BATCH:
                    deleted += int(await self._redis.unlink(*batch))
                    batch.clear()
            if batch:
                deleted += int(await self._redis.unlink(*batch))
            return deleted

        ok, deleted, _ = await self._call("SCAN/UNLINK", scan_and_unlink)
        return int(deleted) if ok else 0

    def get_stats(self) -> dict[str, Any]:
        """The same statistics as :meth:`CacheManager.get_stats`."""
        return self._core.stats.snapshot()

    async def ping(self) -> bool:
        """Whether Redis answers now (never raises)."""
        try:
            return bool(await self._redis.ping())
        except redis.RedisError:
            return False

    def cached(
        self, ttl: TTL = 60, key: Callable[..., str] | None = None
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Cache-aside decorator for async functions (use :class:`CacheManager` for sync ones)."""

        def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            if not inspect.iscoroutinefunction(func):
                raise UsageError(
                    f"AsyncCacheManager.cached needs an async function; {func.__qualname__} is sync: "
                    "decorate it with CacheManager.cached"
                )

            @functools.wraps(func)
            async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                name = (
                    key(*args, **kwargs) if key is not None else self._core.function_key(func, args, kwargs)
                )
                found, value = await self._lookup(name)
                if found:
                    return value  # type: ignore[no-any-return]
                result = await func(*args, **kwargs)
                await self.set(name, result, ttl)
                return result

            return wrapper

        return decorate

    async def close(self) -> None:
        """Release the connection pool. Safe to call twice."""
        if self._core.closed:
            return
        self._core.closed = True
        await self._redis.aclose()
        await self._pool.disconnect()

    async def __aenter__(self) -> AsyncCacheManager:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncCacheManager(namespace={self._core.namespace!r}, strict={self._core.strict})"


__all__ = ["AsyncCacheManager", "CacheManager", "CacheStats", "CacheUnavailableError"]
