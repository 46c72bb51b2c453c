"""Scenario 4, bad input fuzzed with hypothesis: configs, symbols, timeframes and Redis key parts.

Each input gets a clear one-line error or is accepted in a safe canonical form: never another
exception, never a key or identifier that carries the metacharacters through.
"""

from __future__ import annotations

import os
import re
import string
import tempfile
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_collector.config import Config, load_config
from data_collector.errors import ConfigError, InvalidSymbolError, InvalidTimeframeError, UsageError
from data_collector.markets import TIMEFRAMES, is_symbol_pattern, normalize_symbol, validate_timeframe
from data_collector.redis import keys as redis_keys

NASTY = [
    "'; DROP TABLE x; --",
    'SOL/USDT"; DELETE FROM ohlcv; --',
    "a:b*",
    "*",
    "sol/usdt\r\nFLUSHALL",
    "../../etc/passwd",
    "SOL/USDT\x00",
    "ＳＯＬ/ＵＳＤＴ",
    "БТЦ/ЮСДТ",
    "SOL/USDT/",
    "/",
    "SOL\\USDT",
    "{hashtag}/USDT",
    "SOL/USDT?",
    "x" * 10_000,
    "A" * 10_000 + "/USDT",
    "",
    " ",
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SAFE_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")


def _load_text(text: str) -> Config:
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return load_config(path)
    finally:
        os.unlink(path)


def _one_clear_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message


@given(st.text(max_size=300))
@example("exchange: {id: [1, 2]}")
@example("performance:\n  db_pool_size: -1\n")
@example("symbols: ['; DROP TABLE x; --']")
@example("redis: {prefix: 'a:b*'}")
@example("database: {schema: 'public; DROP SCHEMA public'}")
@example("- just\n- a list")
@example(": :")
@example("exchange: !!binary aGVsbG8=")
@example("exchange: !!python/object/apply:os.system ['true']")
@example("{a: &x [*x]}")
@FUZZ
def test_random_yaml_text_is_a_config_or_one_config_error(text: str) -> None:
    try:
        _load_text(text)
    except ConfigError as exc:
        _one_clear_line(exc)


_SECTIONS = ["exchange", "symbols", "timeframes", "start", "end", "database", "redis", "logging"]
_SECTIONS += ["performance", "cache", "streaming", "metrics", "unknown_section"]
_KEYS = ["id", "url", "schema", "prefix", "timeout_s", "db_pool_size", "api_key", "level", "port", "bogus"]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(NASTY)
    | st.text(max_size=30)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(_SECTIONS), _values, max_size=5))
@FUZZ
def test_wrong_types_and_unknown_keys_give_one_config_error(data: dict[str, Any]) -> None:
    try:
        load_config(data)
    except ConfigError as exc:
        _one_clear_line(exc)


@given(st.dictionaries(st.sampled_from(_SECTIONS), _values, max_size=5))
@settings(max_examples=60, deadline=None)
def test_yaml_dump_of_fuzzed_dicts_gives_one_config_error(data: dict[str, Any]) -> None:
    try:
        _load_text(yaml.safe_dump(data))
    except ConfigError as exc:
        _one_clear_line(exc)


_ENV_KEYS = [
    "DC__PERFORMANCE__DB_POOL_SIZE",
    "DC__EXCHANGE__TIMEOUT_S",
    "DC__DATABASE__URL",
    "DC__DATABASE__SCHEMA",
    "DC__REDIS__PREFIX",
    "DC__SYMBOLS",
    "DC__TIMEFRAMES",
    "DC__STREAMING__CHANNELS",
    "DC__LOGGING__LEVEL",
]


@given(
    st.sampled_from(_ENV_KEYS), st.sampled_from(NASTY[:-3]) | st.text(alphabet=string.printable, max_size=40)
)
@FUZZ
def test_garbage_environment_overrides_give_one_config_error(key: str, value: str) -> None:
    if "\x00" in value:
        value = value.replace("\x00", "")  # the OS refuses NUL in the environment
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        load_config({})
    except ConfigError as exc:
        _one_clear_line(exc)
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@pytest.mark.parametrize(
    "data",
    [{"redis": {"prefix": p}} for p in ["a:b*", "dc:*", "", "x" * 10_000, "../x", "dc\nFLUSHALL", "ü"]]
    + [
        {"database": {"schema": s}}
        for s in ["public; DROP SCHEMA public", '"x"', "pg_catalog'", "x" * 100, "Ü"]
    ]
    # "SOL/USDT?" is a symbol pattern (fnmatch's ?): config keeps it, to match exchange markets.
    + [{"symbols": [s]} for s in NASTY if s != "SOL/USDT?"]
    + [{"timeframes": [t]} for t in ["1m; --", "1m*", "", "1M\n", "x" * 10_000]],
)
def test_metacharacters_in_config_are_rejected_by_name(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    _one_clear_line(info.value)
    section = next(iter(data))
    assert section in str(info.value)


def test_a_wildcard_symbol_is_a_pattern_resolved_against_markets() -> None:
    assert load_config({"symbols": ["SOL/USDT?"]}).symbols == ["SOL/USDT?"]
    assert is_symbol_pattern("SOL/USDT?") and not is_symbol_pattern("SOL/USDT")


def test_huge_relative_start_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_config({"start": "99999999999d"})


def test_deeply_nested_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        _load_text("exchange: " + "[" * 5000)


def test_unquoted_yaml_date_is_accepted() -> None:
    # config.yaml itself documents `start` as "ISO date (2024-01-01)"; YAML turns that into a date.
    assert _load_text("start: 2024-01-01\nend: 2024-02-01\n").start_ms() == 1704067200000


def _rejected_or_canonical(text: str) -> None:
    try:
        symbol = normalize_symbol(text)
    except InvalidSymbolError as exc:
        # Bounded whatever the input: repr() writes one unassigned code point as 10 characters.
        assert "\n" not in str(exc) and len(str(exc)) < 200, str(exc)
        return
    assert _SAFE_SYMBOL.match(symbol), symbol


_SYMBOL_TEXTS = st.text(max_size=60) | st.sampled_from(NASTY)


@given(_SYMBOL_TEXTS)
@example("\U00011daa" * 60)  # failed a clean CI run: a 60-character input, a 650-character message
@example("\x00\x01" * 30)
@FUZZ
def test_symbols_are_rejected_or_canonical(text: str) -> None:
    _rejected_or_canonical(text)


@given(_SYMBOL_TEXTS)
@settings(FUZZ, derandomize=True)
def test_symbols_are_rejected_or_canonical_fixed_seed(text: str) -> None:
    """The same property on the same examples every run, so CI cannot fail by luck of the draw."""
    _rejected_or_canonical(text)


@given(st.one_of(st.text(max_size=20), st.sampled_from(NASTY), st.integers(), st.none(), st.floats()))
@FUZZ
def test_timeframes_are_rejected_or_known(value: object) -> None:
    try:
        assert validate_timeframe(value) in TIMEFRAMES
    except InvalidTimeframeError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 300


_part = (
    st.sampled_from(NASTY) | st.text(max_size=20) | st.sampled_from(["dc", "binance", "trade", "kline_1m"])
)
_KEY_SAFE = re.compile(r"^[A-Za-z0-9_.@:/-]+$")


@given(_part, _part, _part, _part)
@example("dc", "binance", "trade", "SOL/USDT")
@FUZZ
def test_redis_keys_never_carry_metacharacters(prefix: str, exchange: str, channel: str, symbol: str) -> None:
    builders = [
        lambda: redis_keys.stream_key(prefix, exchange, channel, symbol),
        lambda: redis_keys.latest_key(prefix, exchange, channel, symbol),
        lambda: redis_keys.book_key(prefix, exchange, symbol),
        lambda: redis_keys.gaps_key(prefix, exchange),
        lambda: redis_keys.heartbeat_key(prefix, channel, exchange),
    ]
    for build in builders:
        try:
            key = build()
        except UsageError as exc:
            assert "\n" not in str(exc)
            continue
        # No glob characters, whitespace or control bytes, and the fixed layout: a SCAN MATCH on a
        # prefix can never be widened by a symbol.
        assert _KEY_SAFE.match(key), key
        assert key.startswith(prefix + ":")
        assert len(key) < 400


@given(st.text(min_size=1, max_size=1024) | st.sampled_from(NASTY))
@FUZZ
def test_cache_keys_keep_the_prefix_and_namespace(key: str) -> None:
    try:
        built = redis_keys.cache_key("dc", "cache", key)
    except UsageError:
        assert not key or len(key) > 1024
        return
    assert built == "dc:cache:" + key


async def test_cache_keys_with_metacharacters_are_stored_safely(redis_prefix: str) -> None:
    """Keys are the caller's own strings: they round-trip exactly, and a ``clear(prefix)`` holding
    glob characters deletes only what literally starts with it."""
    cache_manager = pytest.importorskip("utils.cache_manager")
    from tests.support.services import REDIS_URL

    config = {"redis": {"url": REDIS_URL, "prefix": redis_prefix}, "logging": {"file": None}}
    keys = [k for k in NASTY if k and len(k) <= 1024] + ["a:b", "a:bc", "ab*", "a?", "[ab]"]
    async with cache_manager.AsyncCacheManager(config, strict=True) as cache:
        for i, key in enumerate(keys):
            assert await cache.set(key, i)
        for i, key in enumerate(keys):
            assert await cache.get(key) == i, key
        assert await cache.clear("a:b*") == 1  # only the literal "a:b*", not "a:b" or "a:bc"
        assert await cache.get("a:b") is not None and await cache.get("a:bc") is not None
        assert await cache.clear("[ab]") == 1
        assert await cache.get("a?") is not None
        with pytest.raises(UsageError):
            await cache.set("x" * 10_000, 1)


_SCRIPTS = ["optimized_collection.py", "stream_market_data.py", "health_check.py"]
_BAD_CONFIGS = {
    "not_yaml": "exchange: [unclosed\n",
    "list": "- a\n- b\n",
    "unknown_key": "performanc:\n  db_pool_size: 3\n",
    "wrong_type": "performance:\n  db_pool_size: many\n",
    "sql_symbol": 'symbols: ["\'; DROP TABLE x; --"]\n',
    "glob_prefix": "redis:\n  prefix: 'a:b*'\n",
    "binary": "\udcff\udcfe",
}
_KNOWN_BAD = {
    "deep": ("exchange: " + "[" * 5000, "config.py: RecursionError for deeply nested YAML"),
    "huge_relative": ("start: 99999999999d\n", "config.py: OverflowError for a huge relative time"),
}


def _run_script_with(script: str, text: str, tmp_path: Any) -> tuple[int, str]:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    path = tmp_path / "bad.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / script), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    return proc.returncode, proc.stderr


def _assert_one_line_usage_error(code: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-800:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, stderr[-800:])


_SCRIPT_CASES = [("optimized_collection.py", name) for name in sorted(_BAD_CONFIGS)] + [
    (script, name) for script in _SCRIPTS[1:] for name in ("unknown_key", "sql_symbol")
]


@pytest.mark.parametrize(("script", "name"), _SCRIPT_CASES)
def test_scripts_refuse_bad_configs_in_one_line(script: str, name: str, tmp_path: Any) -> None:
    from pathlib import Path

    if not (Path(__file__).resolve().parents[2] / "scripts" / script).exists():
        pytest.skip(f"{script} not merged yet")
    _assert_one_line_usage_error(*_run_script_with(script, _BAD_CONFIGS[name], tmp_path))


@pytest.mark.parametrize("name", sorted(_KNOWN_BAD))
def test_collection_script_known_bad_configs(name: str, tmp_path: Any) -> None:
    text, _bug = _KNOWN_BAD[name]
    code, stderr = _run_script_with("optimized_collection.py", text, tmp_path)
    _assert_one_line_usage_error(code, stderr)
