"""``redis.url`` is checked in one place before any Redis client is built from it.

The first half tests :func:`check_redis_url` as pure logic; the second half checks that every
client built from the config (CacheManager, AsyncCacheManager, the health check, the streamer's
RedisEndpoint and two scripts) refuses a bad URL with that one ConfigError line, and still works
with a URL that uses the accepted parameters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_collector.config import Config, load_config
from data_collector.errors import ConfigError
from data_collector.health import check_redis, run_checks
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.redis.client import RedisEndpoint, RedisSettings, async_client
from data_collector.redis.url import check_redis_url
from tests.support.services import REDIS_URL
from utils.cache_manager import AsyncCacheManager, CacheManager

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-never-shown-7"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://localhost",
        "redis://h:1/15",
        f"redis://:{PASSWORD}@h:6379/0?client_name=dc&health_check_interval=30&socket_keepalive=true",
        "redis://user:p%40ss@h/2?db=3",
        "rediss://h:6380/0?ssl_cert_reqs=none",
        "rediss://h:6380/0?ssl_cert_reqs=required&ssl_check_hostname=false&ssl_ciphers=HIGH",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_valid_urls_are_returned_unchanged(url: str) -> None:
    assert check_redis_url(url) is url


def test_tls_files_that_exist_are_accepted(tmp_path: Path, ca_file: Path) -> None:
    cert = tmp_path / "client cert.pem"
    cert.write_text("x")
    quoted = str(cert).replace(" ", "%20")
    url = f"rediss://h/0?ssl_ca_certs={ca_file}&ssl_certfile={quoted}&ssl_keyfile={ca_file}"
    assert check_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379/0", "redis.url: must start with redis://, rediss:// or unix://"),
        ("127.0.0.1:6379", "redis.url: must start with redis://, rediss:// or unix://"),
        # redis-py's parse_url matches the scheme case-sensitively: REDIS:// never reached a client.
        ("REDIS://h:1/15", "redis.url: must start with redis://, rediss:// or unix://"),
        ("redis://h:port/0", "redis.url: the port must be a number from 1 to 65535"),
        ("redis://h:99999/0", "redis.url: the port must be a number from 1 to 65535"),
        ("redis://h/zero", "redis.url: the path must be a database number such as /0"),
        ("unix://", "redis.url: unix:// needs a socket path, e.g. unix:///run/redis.sock"),
        ("redis://h/0?db=x", "redis.url: db='x' must be a whole number >= 0"),
        ("redis://h/0?db=1&db=2", "redis.url: query parameter 'db' is given twice"),
        ("redis://h/0?client_name=", "redis.url: query parameter 'client_name' has no value"),
        ("redis://h/0?db=-1", "redis.url: db='-1' must be a whole number >= 0"),
        ("redis://h/0?health_check_interval=soon", "redis.url: health_check_interval='soon' must be"),
        ("redis://h/0?socket_keepalive=maybe", "redis.url: socket_keepalive='maybe' must be true or false"),
        # redis-py's to_bool reads "off" as True: refused rather than silently turned on.
        ("redis://h/0?socket_keepalive=off", "redis.url: socket_keepalive='off' must be true or false"),
        # redis-py's own check, met when the connection is built (never connected) from the URL.
        ("rediss://h/0?ssl_cert_reqs=strict", "redis.url: Invalid SSL Certificate Requirements Flag: strict"),
        # redis-py's unix-socket connection takes no socket_keepalive (TypeError at connect).
        ("unix:///s.sock?socket_keepalive=true", "redis.url: unknown query parameter 'socket_keepalive'"),
        ("redis://h/0?ssl_cert_reqs=none", "redis.url: ssl_cert_reqs needs a rediss:// URL, not redis://"),
        ("unix:///s.sock?ssl_ca_certs=/x", "redis.url: ssl_ca_certs needs a rediss:// URL, not unix://"),
        (
            "redis://h/0?socket_timeout=5",
            "redis.url: query parameter 'socket_timeout' is not taken from the URL; "
            "set redis.socket_timeout_s instead",
        ),
        (
            "redis://h/0?max_connections=5",
            "redis.url: query parameter 'max_connections' is not taken from the URL; "
            "set performance.redis_pool_size instead",
        ),
        ("rediss://h/0?ssl_password=x", "redis.url: unknown query parameter 'ssl_password'"),
    ],
)
def test_bad_urls_are_one_config_error_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url(url)
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_unknown_parameter_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url(f"redis://:{PASSWORD}@h/0?colour=blue")
    text = str(caught.value)
    assert text.startswith("redis.url: unknown query parameter 'colour' (known: client_name, db,")
    assert "ssl_" not in text  # TLS names are offered only for rediss://
    assert PASSWORD not in text


def test_missing_unreadable_or_non_file_tls_files_are_named(tmp_path: Path, ca_file: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        with pytest.raises(ConfigError) as caught:
            check_redis_url(f"rediss://u:{PASSWORD}@h/0?ssl_cert_reqs=required&{name}={missing}")
        assert str(caught.value) == f"redis.url: {name} file {missing} does not exist"
    with pytest.raises(ConfigError, match=f"ssl_ca_certs {tmp_path} is not a file$"):
        check_redis_url(f"rediss://h/0?ssl_ca_certs={tmp_path}")
    if os.geteuid() != 0:  # root reads anything
        ca_file.chmod(0)
        with pytest.raises(ConfigError, match="is not readable$"):
            check_redis_url(f"rediss://h/0?ssl_ca_certs={ca_file}")


def test_password_is_never_in_a_message(tmp_path: Path) -> None:
    for url in (
        f"redis://:{PASSWORD}@h/0?password={PASSWORD}&db=x",
        f"redis://:{PASSWORD}@h/0?password={PASSWORD}&password={PASSWORD}",
        f"redis://:{PASSWORD}@h/0?bogus={PASSWORD}",
        f"rediss://:{PASSWORD}@h:bad/0",
        f"rediss://:{PASSWORD}@h/0?ssl_ca_certs={tmp_path}/missing.pem",
    ):
        with pytest.raises(ConfigError) as caught:
            check_redis_url(url)
        assert PASSWORD not in str(caught.value)


def _config(url: str, prefix: str) -> Config:
    return load_config(
        {
            "redis": {"url": url, "prefix": prefix, "socket_timeout_s": 1, "connect_timeout_s": 1},
            "logging": {"file": None},
        }
    )


BAD = [
    (REDIS_URL + "?colour=blue", "redis.url: unknown query parameter 'colour'"),
    (
        REDIS_URL.replace("redis://", "rediss://", 1) + "?ssl_ca_certs=/nonexistent/dc-test-ca.pem",
        "redis.url: ssl_ca_certs file /nonexistent/dc-test-ca.pem does not exist",
    ),
]


@pytest.mark.parametrize(("url", "message"), BAD)
async def test_every_client_refuses_a_bad_url_before_connecting(
    url: str, message: str, redis_prefix: str
) -> None:
    config = _config(url, redis_prefix)
    with pytest.raises(ConfigError, match=f"^{message}"):
        CacheManager(config)
    with pytest.raises(ConfigError, match=f"^{message}"):
        AsyncCacheManager(config)
    with pytest.raises(ConfigError, match=f"^{message}"):
        await run_checks(config, skip={"database", "exchange", "freshness", "disk"})
    with pytest.raises(ConfigError, match=f"^{message}"):
        RedisEndpoint.from_any(url)
    with pytest.raises(ConfigError, match=f"^{message}"):
        OptimizedWebSocketStreamer(symbols=["SOL/USDT"], config=config)


async def test_accepted_parameters_work_in_every_client(redis_prefix: str) -> None:
    url = REDIS_URL + ("&" if "?" in REDIS_URL else "?")
    url += "client_name=dc-url-test&health_check_interval=30&socket_keepalive=true"
    config = _config(url, redis_prefix)
    with CacheManager(config, strict=True) as cache:
        assert cache.set("k", 1)
        assert cache.get("k") == 1
    async with AsyncCacheManager(config, strict=True) as acache:
        assert await acache.get("k") == 1
        await acache.delete("k")
    client = async_client(RedisSettings.from_config(config))
    try:
        result = await check_redis(config, client)
        assert await client.client_getname() in ("dc-url-test", b"dc-url-test")
    finally:
        await client.aclose()
    assert result.status == "ok", result.detail
    conn = await RedisEndpoint.from_any(url).connect()
    await conn.close()


@pytest.mark.parametrize(
    "script",
    [["scripts/health_check.py", "--skip", "exchange"], ["scripts/stream_market_data.py", "--duration", "1"]],
)
def test_scripts_print_one_line_and_exit_2(tmp_path: Path, script: list[str], redis_prefix: str) -> None:
    url = REDIS_URL.replace("redis://", f"redis://:{PASSWORD}@", 1).replace("@@", "@") + "?colour=blue"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"redis": {"url": url, "prefix": redis_prefix}, "logging": {"file": None}})
    )
    done = subprocess.run(
        [sys.executable, *script, "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "unknown query parameter 'colour'" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


def test_redis_settings_need_no_config_and_hide_the_password() -> None:
    from data_collector.redis.client import sync_pool

    settings = RedisSettings(url="redis://:s3cret@127.0.0.1:6379/0", socket_timeout_s=1.5, pool_size=7)
    assert "s3cret" not in repr(settings)
    pool = sync_pool(settings)
    try:
        assert pool.max_connections == 7 and pool.connection_kwargs["socket_timeout"] == 1.5
    finally:
        pool.disconnect()
