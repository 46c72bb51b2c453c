"""A real Prometheus (Debian's ``prometheus``) scrapes a running collector and streamer with the
shipped scrape config; every query of the shipped Grafana dashboard must return data, and the
series carry the values the collector reports."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from data_collector.cli.stream import run_stream_cli
from data_collector.markets import DAY_MS, candle_open_ms
from data_collector.optimized_collector import OptimizedDataCollector
from data_collector.simulator import SimulatedExchange
from tests.support.backfill import config_for
from tests.support.services import free_port
from tests.support.waiting import wait_for_async
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


async def test_prometheus_scrapes_collector_and_streamer_and_every_dashboard_query_has_data(
    base_config: dict[str, Any], prometheus: tuple[str, dict[str, int]]
) -> None:
    base, ports = prometheus
    collector_monitor = PerformanceMonitor(metrics=Metrics())
    collector_server = serve_metrics(ports["data_collector_collector"], collector_monitor)
    assert collector_server is not None
    stop = asyncio.Event()
    async with SimulatedExchange(symbols=["SOL/USDT", "BTC/USDT"], seed=5, gaps={}, ws_rate=50) as sim:
        config = config_for(base_config, sim, symbols=["SOL/USDT", "BTC/USDT"], timeframes=["1m", "1h"])
        config["streaming"] = {"channels": ["trade"]}
        streamer = asyncio.create_task(
            run_stream_cli(
                config=config,
                status_interval_s=0,
                out=io.StringIO(),
                stop=stop,
                monitor=PerformanceMonitor(metrics=Metrics()),
                metrics_port=ports["data_collector_streamer"],
            )
        )
        try:
            async with aiohttp.ClientSession() as session:

                async def both_up() -> bool:
                    up = await query(session, base, 'up{job=~"data_collector_.*"} == 1')
                    return len(up) == 2

                await wait_for_async(both_up, timeout_s=30, what="Prometheus scraping both targets")
                start = candle_open_ms(sim.clock.now_ms(), "1d") - 3 * DAY_MS
                async with OptimizedDataCollector(config, monitor=collector_monitor) as collector:
                    report = await collector.collect(start=start, end=start + 2 * DAY_MS)
                    assert report.ok and report.rows_written > 0, report.summary()

                async def rows_scraped() -> bool:
                    got = await query(session, base, 'dc_rows_written_total{job="data_collector_collector"}')
                    return bool(got) and float(got[0]["value"][1]) == report.rows_written

                await wait_for_async(rows_scraped, timeout_s=20, what="dc_rows_written_total == rows written")
                requests = await query(
                    session, base, 'sum(dc_requests_total{job="data_collector_collector"})'
                )
                assert float(requests[0]["value"][1]) >= report.requests > 0
                empty: list[str] = []
                for expr in dashboard_queries():

                    async def has_data(e: str = expr) -> bool:
                        return bool(await query(session, base, e))

                    try:
                        await wait_for_async(has_data, timeout_s=20, what=expr)
                    except AssertionError:
                        empty.append(expr)
                assert empty == []
                messages = await query(session, base, 'dc_ws_messages_total{job="data_collector_streamer"}')
                assert float(messages[0]["value"][1]) > 0
        finally:
            stop.set()
            await asyncio.wait_for(streamer, 30)
            collector_server.close()
