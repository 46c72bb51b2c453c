"""A real Prometheus (Debian's ``prometheus``) scrapes a running collector and streamer with the
shipped scrape config; every query of the shipped Grafana dashboard must return data, and the
series carry the values the collector, its rate limiter, the simulator and the streamer report
themselves: rows and request weight, a forced reconnect, entries dropped while Redis is stopped,
stream gaps, and the heartbeats' ages against the keys in Redis."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio
import yaml

from data_collector.config import load_config
from data_collector.heartbeat import read_heartbeat, running_heartbeat
from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.optimized_websocket import OptimizedWebSocketStreamer
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import config_for
from tests.support.services import PrivateRedis, free_port
from tests.support.waiting import wait_for, wait_for_async
from utils.metrics import Metrics
from utils.performance_monitor import PerformanceMonitor, serve_metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Debian's prometheus package is not installed (apt-get install prometheus; .ci/run does)",
)


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "data_collector.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # Grafana's $__rate_interval is at least four scrape intervals; 15s covers 1s scrapes.
    return [e.replace("$__rate_interval", "15s") for e in exprs]


@pytest.fixture
def prometheus(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, int]]]:
    """Prometheus on a free port with the shipped scrape config, its targets on free ports."""
    ports = {"data_collector_collector": free_port(), "data_collector_streamer": free_port()}
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    assert set(ports) == {job["job_name"] for job in config["scrape_configs"]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    assert PROMETHEUS is not None
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}", ports
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
    except aiohttp.ClientError:
        return []
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


async def scalar(session: aiohttp.ClientSession, base: str, expr: str) -> float | None:
    """The one sample ``expr`` returns now, or None when there is none."""
    got = await query(session, base, expr)
    return float(got[0]["value"][1]) if len(got) == 1 else None


async def until_equal(
    session: aiohttp.ClientSession, base: str, expr: str, expected: Callable[[], float], what: str
) -> float:
    """Wait until Prometheus' value of ``expr`` equals ``expected()`` (read at each poll)."""
    seen: list[float | None] = [None]

    async def equal() -> bool:
        seen[0] = await scalar(session, base, expr)
        return seen[0] == expected()

    try:
        await wait_for_async(equal, timeout_s=20, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: Prometheus has {seen[0]}, expected {expected()}") from None
    assert seen[0] is not None
    return seen[0]


async def heartbeat_age_matches_redis(
    session: aiohttp.ClientSession, base: str, job: str, config: dict[str, Any], component: str
) -> None:
    """``dc_seconds_since_last_heartbeat`` is the age of the heartbeat the process wrote to Redis:
    the scrape's time less the age is the ``ts_ms`` of the key (the ages are counted from the
    monitor's record of each beat, not from anything in Redis)."""
    client = redis.asyncio.Redis.from_url(config["redis"]["url"])
    seen: list[Any] = []
    # Every beat read from Redis so far: the scrape may be of a beat that a newer one has replaced
    # by the time Redis is read (the test beats and scrapes once a second each, so the two can
    # keep that order for many polls); each beat stays a second, and the polls come every 50 ms.
    beats: set[int] = set()

    async def matches() -> bool:
        got = await query(session, base, f'dc_seconds_since_last_heartbeat{{job="{job}"}}')
        beat = await read_heartbeat(client, config["redis"]["prefix"], component)
        if beat is not None:
            beats.add(int(beat["ts_ms"]))
        seen[:] = [got, sorted(beats)[-5:]]
        if len(got) != 1 or not beats or not math.isfinite(float(got[0]["value"][1])):
            return False
        sampled_s, age_s = float(got[0]["value"][0]), float(got[0]["value"][1])
        return any(abs((sampled_s - age_s) * 1000 - ts_ms) < 5 for ts_ms in beats)

    try:
        await wait_for_async(matches, timeout_s=20, what=f"{job}'s heartbeat age")
    except AssertionError:
        raise AssertionError(f"{job}'s heartbeat age does not match Redis: {seen}") from None
    finally:
        await client.aclose()


async def test_prometheus_scrapes_collector_and_streamer_and_every_dashboard_query_has_data(
    base_config: dict[str, Any], prometheus: tuple[str, dict[str, int]], private_redis: PrivateRedis
) -> None:
    base, ports = prometheus
    collector_monitor = PerformanceMonitor(metrics=Metrics())
    streamer_monitor = PerformanceMonitor(metrics=Metrics())
    collector_server = serve_metrics(ports["data_collector_collector"], collector_monitor)
    streamer_server = serve_metrics(ports["data_collector_streamer"], streamer_monitor)
    assert collector_server is not None and streamer_server is not None
    C, S = '{job="data_collector_collector"}', '{job="data_collector_streamer"}'
    async with SimulatedExchange(symbols=["SOL/USDT", "BTC/USDT"], seed=5, gaps={}, ws_rate=200) as sim:
        config = config_for(base_config, sim, symbols=["SOL/USDT", "BTC/USDT"], timeframes=["1m", "1h"])
        # The streamer's Redis is the test's own, so that pausing it drops entries and nothing else.
        config["redis"].update(url=private_redis.url, socket_timeout_s=0.5, connect_timeout_s=0.5)
        config["streaming"] = {"channels": ["trade"], "buffer_max": 300}
        config["metrics"] = {"heartbeat_ttl_s": 3}
        streamer = OptimizedWebSocketStreamer(config=config, monitor=streamer_monitor)
        try:
            async with aiohttp.ClientSession() as session, streamer:
                assert await streamer.wait_connected()

                async def both_up() -> bool:
                    up = await query(session, base, 'up{job=~"data_collector_.*"} == 1')
                    return len(up) == 2

                await wait_for_async(both_up, timeout_s=30, what="Prometheus scraping both targets")
                start = candle_open_ms(sim.clock.now_ms(), "1d") - 3 * DAY_MS
                weight_before = sim.stats()["weight"]
                async with (
                    OptimizedDataCollector(config, monitor=collector_monitor) as collector,
                    running_heartbeat(load_config(config), "collector", collector_monitor),
                ):
                    report = await collector.collect(start=start, end=start + 2 * DAY_MS)
                    assert report.ok and report.rows_written > 0, report.summary()
                    limiter = collector.client.limiter
                    await heartbeat_age_matches_redis(
                        session, base, "data_collector_collector", config, "collector"
                    )
                sent_weight = sim.stats()["weight"] - weight_before

                await until_equal(
                    session, base, f"dc_rows_written_total{C}", lambda: report.rows_written, "rows written"
                )
                requests = await scalar(session, base, f"sum(dc_requests_total{C})")
                assert requests is not None and requests >= report.requests > 0
                # Weight: what the simulator charged = what the limiter counted = the series.
                assert sent_weight == limiter.stats.weight > 0
                await until_equal(
                    session, base, f"dc_request_weight_total{C}", lambda: sent_weight, "weight sent"
                )
                assert (
                    await scalar(session, base, f"dc_request_weight_limit{C}") == sim.stats()["weight_limit"]
                )
                assert await scalar(session, base, f"dc_request_weight_budget{C}") == limiter.budget
                # The exchange's minute count, live: 0 again once its minute is over.
                await until_equal(
                    session, base, f"dc_request_weight_used{C}", lambda: limiter.used_weight, "weight used"
                )

                # A forced reconnect of every WebSocket, then Redis stopped until entries drop.
                dropped_connections = sim.ws_faults.drop_all()
                assert dropped_connections >= 1
                await wait_for(
                    lambda: streamer.get_metrics()["reconnects"] == dropped_connections,
                    what="the streamer to reconnect",
                )
                reconnects = await until_equal(
                    session,
                    base,
                    f"dc_stream_reconnects_total{S}",
                    lambda: streamer.get_metrics()["reconnects"],
                    "the streamer's reconnects",
                )
                assert reconnects == dropped_connections
                private_redis.pause()
                try:

                    async def dropped_scraped() -> bool:
                        return (await scalar(session, base, f"dc_stream_dropped_total{S}") or 0) > 0

                    await wait_for_async(
                        dropped_scraped, timeout_s=30, what="dropped entries while Redis is stopped"
                    )
                finally:
                    private_redis.resume()
                await wait_for(lambda: streamer.get_metrics()["queue_depth"] < 50, what="the buffer to drain")
                for expr, name in (
                    (f"dc_stream_dropped_total{S}", "dropped"),
                    (f"dc_gaps_found_total{S}", "gaps"),
                ):
                    got = await until_equal(
                        session,
                        base,
                        expr,
                        lambda n=name: streamer.get_metrics()[n],
                        f"the streamer's {name}",
                    )
                    assert got > 0, name
                await heartbeat_age_matches_redis(
                    session, base, "data_collector_streamer", config, "streamer"
                )

                empty: list[str] = []
                for expr in dashboard_queries():

                    async def has_data(e: str = expr) -> bool:
                        return bool(await query(session, base, e))

                    try:
                        await wait_for_async(has_data, timeout_s=20, what=expr)
                    except AssertionError:
                        empty.append(expr)
                assert empty == []
                messages = await scalar(session, base, f"dc_ws_messages_total{S}")
                assert messages is not None and messages > 0
        finally:
            collector_server.close()
            streamer_server.close()
