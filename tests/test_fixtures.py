from __future__ import annotations

import time

import redis

from tests.support.services import PrivateRedis


def test_private_redis_pause_times_out_and_resumes(private_redis: PrivateRedis) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=0.3)
    assert client.ping()
    private_redis.pause()
    started = time.monotonic()
    try:
        client.ping()
        raise AssertionError("a paused Redis answered")
    except redis.TimeoutError:
        pass
    assert time.monotonic() - started < 2
    private_redis.resume()
    assert client.ping()
