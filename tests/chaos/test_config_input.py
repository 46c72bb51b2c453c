"""Bad config input an operator can give, through the real scripts: one line, exit 2, no secret.

Issue 11, defects 5 (a password that breaks its URL), 6 (``--config`` on something that is not a
small regular file), 7 (YAML aliases) and 9 (error lines that echo a whole argument). Each script
runs as a subprocess under a memory limit and a timeout, so a regression fails instead of eating
the machine or hanging.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from data_collector.config import load_config
from data_collector.errors import ConfigError
from data_collector.redis.url import check_redis_url
from tests.chaos.helpers import SCRIPTS, load_in_child, run_script

#: Pieces of the password that must never be printed (what make_url quoted as a "port").
PASSWORD = "se@cr:et-TAIL-7d1"
SECRET_PIECES = ("et-TAIL-7d1", "cr:et", "TAIL-7d1")
#: The documented cap on a config file (README, "Configuration").
MAX_CONFIG_BYTES = 1024 * 1024
BROKEN_DB_URL = f"postgresql+asyncpg://postgres:{PASSWORD}@127.0.0.1:55432/test"


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _assert_no_secret(text: str) -> None:
    for piece in SECRET_PIECES:
        assert piece not in text, text


@pytest.mark.parametrize("script", SCRIPTS)
def test_password_with_raw_at_and_colon_is_one_masked_line(script: str, tmp_path: Path) -> None:
    config = _write(tmp_path, {"database": {"url": BROKEN_DB_URL}, "logging": {"file": None}})
    run = run_script(script, "--config", str(config), cwd=tmp_path)
    line = run.assert_one_line(2)
    assert "config.yaml: database.url: cannot parse" in line, line
    assert "postgres:***@" in line and "percent-encode" in line, line
    _assert_no_secret(run.stdout + run.stderr)


def test_password_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    run = run_script(
        "health_check.py", cwd=tmp_path, env={"DC__DATABASE__URL": BROKEN_DB_URL, "DC__LOGGING__FILE": ""}
    )
    line = run.assert_one_line(2)
    assert "DC__DATABASE__URL (database.url): cannot parse" in line, line
    _assert_no_secret(run.stdout + run.stderr)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        # make_url takes "SECRETHALF@127.0.0.1" for the host: a DNS error would print it.
        ("postgresql+asyncpg://u:pw@SECRETHALF@127.0.0.1/test", "the host part holds an '@'"),
        ("postgresql+asyncpg://u:pw@[::1/test", "cannot parse"),
        ("postgresql+asyncpg://u:pw@h:70000/test", "the port must be a number from 1 to 65535"),
        ("mysql://u:SECRETHALF@h/db", "must start with postgresql+asyncpg:// or sqlite+aiosqlite:///"),
    ],
)
def test_every_unusable_database_url_is_refused_at_load(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"database": {"url": url}})
    message = str(info.value)
    assert message.startswith("config: database.url: ") and problem in message, message
    assert "SECRETHALF" not in message and "pw@" not in message, message


def test_the_one_parser_refuses_what_the_config_would() -> None:
    """Code that builds a store or a connection from a URL (not from a loaded config) gets the
    same check and the same masked line."""
    from data_collector.storage.pg_connect import pg_target
    from data_collector.storage.url import parse_database_url

    for parse in (parse_database_url, pg_target):
        with pytest.raises(ConfigError, match=r"^database\.url: cannot parse") as info:
            parse(BROKEN_DB_URL)
        _assert_no_secret(str(info.value))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:pw@[::1/0", "cannot parse"),
        ("redis://:se/cr@127.0.0.1:6379/0", "the port must be a number"),
        ("redis://:pw@h:0/0", "the port must be a number"),
    ],
)
def test_every_unparseable_redis_url_is_refused_at_load(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"redis": {"url": url}})
    message = str(info.value)
    assert message.startswith("config: redis.url: ") and problem in message, message
    assert "pw" not in message and "cr@" not in message, message
    with pytest.raises(ConfigError, match=r"^redis\.url: "):
        check_redis_url(url)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unparseable_redis_url_is_one_line(script: str, tmp_path: Path) -> None:
    config = _write(tmp_path, {"redis": {"url": "redis://:se-TAIL-7d1@[::1/0"}, "logging": {"file": None}})
    line = run_script(script, "--config", str(config), cwd=tmp_path).assert_one_line(2)
    assert "config.yaml: redis.url: cannot parse" in line and "se-TAIL" not in line, line


def _special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    return {
        "dev_zero": Path("/dev/zero"),
        "dev_urandom": Path("/dev/urandom"),
        "fifo": fifo,
        "directory": directory,
        "too_big": big,
    }


_SPECIAL = ["dev_zero", "dev_urandom", "fifo", "directory", "too_big"]
_SPECIAL_WORDS = {
    "dev_zero": "is not a regular file",
    "dev_urandom": "is not a regular file",
    "fifo": "is not a regular file",
    "directory": "is a directory",
    "too_big": "is larger than 1 MB",
}


def test_loader_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    # In a child under a memory limit: before the fix /dev/zero was read until memory ran out.
    files = _special_files(tmp_path)
    for name in _SPECIAL:
        run = load_in_child([files[name]], timeout_s=30)
        assert run.outcomes[0].startswith("ConfigError") and _SPECIAL_WORDS[name] in run.outcomes[0], (
            name,
            run.outcomes,
        )


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("name", ["dev_zero", "fifo", "too_big"])
def test_scripts_refuse_special_config_files_in_one_line(script: str, name: str, tmp_path: Path) -> None:
    path = _special_files(tmp_path)[name]
    line = run_script(script, "--config", str(path), cwd=tmp_path, timeout_s=30).assert_one_line(2)
    assert _SPECIAL_WORDS[name] in line, line


RECURSIVE = "exchange:\n  urls:\n    loop: &r {again: *r}\n"


def _bomb(section: str, levels: int) -> str:
    lines = [f"exchange:\n  {section}:\n    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (RECURSIVE, "exchange.urls.loop.again"),
        (_bomb("urls", 6), "exchange.urls.l1.0"),  # a million leaves: safe to build on the old code
        (_bomb("options", 6), "exchange.options.l1.0"),
        ("symbols: [&s BTC/USDT, *s]\n", "symbols.1"),
        ("base: &b {id: binance}\nexchange:\n  <<: *b\n", "exchange.<<"),
    ],
)
def test_yaml_aliases_are_refused_naming_the_key(text: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = str(info.value)
    assert f"config.yaml: {key}: YAML aliases such as *" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("name", ["recursive", "bomb"])
def test_scripts_refuse_alias_configs_in_one_line(script: str, name: str, tmp_path: Path) -> None:
    # 10^8 leaves: 3.8 GB and a hang before the fix; the memory limit makes that a quick failure.
    text = RECURSIVE if name == "recursive" else _bomb("urls", 8)
    config = _write(tmp_path, text)
    line = run_script(script, "--config", str(config), cwd=tmp_path, timeout_s=30).assert_one_line(2)
    assert "YAML aliases" in line, line


_LONG = "x" * 5000
_LONG_ARGUMENTS = [
    ("optimized_collection.py", ["--start", _LONG]),
    ("optimized_collection.py", ["--log-level", _LONG]),
    ("optimized_collection.py", ["--symbols", _LONG]),
    ("optimized_collection.py", ["--metrics-port", _LONG]),
    ("stream_market_data.py", ["--log-level", _LONG]),
    ("stream_market_data.py", ["--channels", _LONG]),
    ("health_check.py", ["--continuous", _LONG]),
    ("health_check.py", ["--skip", _LONG]),
]


@pytest.mark.parametrize(
    ("script", "args"), _LONG_ARGUMENTS, ids=lambda v: v[0] if isinstance(v, list) else v
)
def test_long_arguments_are_echoed_short(script: str, args: list[str], tmp_path: Path) -> None:
    config = _write(tmp_path, {"logging": {"file": None}})
    line = run_script(script, "--config", str(config), *args, cwd=tmp_path).assert_one_line(2)
    assert len(line) < 400, len(line)
    assert args[0].lstrip("-").rstrip("s") in line and "xxx..." in line, line
