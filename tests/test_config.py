from __future__ import annotations

from pathlib import Path

import pytest

from data_collector.config import load_config, parse_time_ms, to_ms
from data_collector.errors import ConfigError, UsageError


def test_defaults_match_the_user_performance_keys() -> None:
    perf = load_config({}).performance
    assert (perf.db_pool_size, perf.db_max_overflow, perf.db_pool_recycle) == (20, 40, 3600)
    assert (perf.redis_pool_size, perf.ws_batch_size, perf.ws_batch_interval) == (50, 10, 0.1)
    # No request cap by default: the exchange's weight budget governs (issue 10, "fast by default").
    assert (perf.concurrent_symbols, perf.api_rate_limit) == (5, None)


@pytest.mark.parametrize(("given", "expected"), [("auto", None), (None, None), ("AUTO", None), (3000, 3000)])
def test_api_rate_limit_takes_auto_or_a_number(given: object, expected: int | None) -> None:
    assert load_config({"performance": {"api_rate_limit": given}}).performance.api_rate_limit == expected


def test_api_rate_limit_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match="performance.api_rate_limit"):
        load_config({"performance": {"api_rate_limit": "fast"}})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"performance": {"db_pool_size": "many"}}, "performance.db_pool_size"),
        ({"performance": {"db_pool_size": 0}}, "performance.db_pool_size"),
        ({"performanc": {}}, "performanc"),
        ({"symbols": ["SOL/USDT", "'; DROP TABLE x; --"]}, "symbols"),
        ({"timeframes": ["7m"]}, "timeframes"),
        ({"start": "yesterday"}, "start"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        ({"redis": {"prefix": "a:b*"}}, "redis.prefix"),
        ({"database": {"schema": "x; drop"}}, "database.schema"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("performance:\n  db_pool_size: 3\nsymbols: [sol/usdt]\n")
    monkeypatch.setenv("DC__PERFORMANCE__DB_POOL_SIZE", "7")
    config = load_config(path)
    assert config.performance.db_pool_size == 7
    assert config.symbols == ["SOL/USDT"]


def test_malformed_yaml_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("performance: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line"):
        load_config(path)


def test_secrets_hidden_in_repr() -> None:
    config = load_config({"exchange": {"api_key": "KEY123", "secret": "SEC456"}})
    text = repr(config) + str(config) + repr(config.exchange)
    assert "KEY123" not in text and "SEC456" not in text
    assert config.exchange.api_key is not None and config.exchange.api_key.get_secret_value() == "KEY123"


def test_time_specs() -> None:
    now = 1_700_000_000_000
    assert parse_time_ms("1d", now) == now - 86_400_000
    assert parse_time_ms("2024-01-01") == 1_704_067_200_000
    assert parse_time_ms("2024-01-01T00:00:00Z") == 1_704_067_200_000
    with pytest.raises(UsageError):
        parse_time_ms("soon")


def test_naive_datetimes_are_utc() -> None:
    from datetime import UTC, datetime

    assert to_ms(datetime(2024, 1, 1)) == to_ms(datetime(2024, 1, 1, tzinfo=UTC)) == 1_704_067_200_000


def test_shipped_config_yaml_loads_and_matches_defaults() -> None:
    shipped = load_config(Path(__file__).resolve().parent.parent / "config.yaml")
    assert shipped.performance == load_config({}).performance


def test_unquoted_yaml_dates_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("start: 2024-01-01\nend: 2024-02-01T00:00:00\n")
    config = load_config(path)
    assert config.start_ms() == 1_704_067_200_000
    assert config.end_ms() == 1_706_745_600_000


def test_absurd_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start"):
        load_config({"start": "99999999999d"})
    path = tmp_path / "deep.yaml"
    path.write_text("exchange: " + "[" * 5000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize("key", ["\n", "a\r\nb", "x" * 500, "\x00"])
def test_odd_unknown_keys_still_give_one_short_line(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"exchange": {key: None}})
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and len(message) < 300
    assert "exchange." in message
