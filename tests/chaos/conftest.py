"""Fixtures of the chaos suite: the fault proxy, private servers, and the figures line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from tests.chaos.proxy import FaultProxy
from tests.chaos.report import ScenarioReport
from tests.chaos.servers import PrivatePostgres, RestartableRedis

_FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[str, int], Awaitable[FaultProxy]]]:
    """Factory: ``await make_proxy(host, port)`` -> a started :class:`FaultProxy`, closed after the test."""
    proxies: list[FaultProxy] = []

    async def make(host: str, port: int) -> FaultProxy:
        proxy = FaultProxy(host, port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture(scope="session")
def _pg_cluster() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres()
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def private_pg(_pg_cluster: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The session's private PostgreSQL cluster, running again after the test whatever it did."""
    _pg_cluster.ensure_running()
    try:
        yield _pg_cluster
    finally:
        _pg_cluster.ensure_running()


@pytest.fixture
async def private_pg_schema(private_pg: PrivatePostgres) -> AsyncIterator[str]:
    """A fresh schema in the private cluster, dropped after the test."""
    name = f"c_{uuid.uuid4().hex[:10]}"
    conn = await private_pg.connect()
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    yield name
    private_pg.ensure_running()
    conn = await asyncpg.connect(private_pg.dsn, timeout=30)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def restartable_redis(tmp_path: Any) -> Iterator[RestartableRedis]:
    """A private redis-server that may be paused, killed and restarted; always stopped after."""
    server = RestartableRedis(str(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def scenario_report(request: pytest.FixtureRequest, long_run: bool) -> Iterator[ScenarioReport]:
    """A :class:`ScenarioReport` whose line is printed after the test (with or without ``-s``)."""
    report = ScenarioReport(name=request.node.name, long=long_run)
    report.rss.start()
    failed_before = request.session.testsfailed
    try:
        yield report
    finally:
        report.rss.stop()
        if report.outcome == "?":
            report.outcome = "FAIL" if request.session.testsfailed > failed_before else "done"
        line = report.line()
        request.config.stash.setdefault(_FIGURES, []).append(line)
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_line(line)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("chaos figures")
        for line in lines:
            terminalreporter.write_line(line)


FULL = pytest.param(True, marks=[pytest.mark.slow, pytest.mark.timeout(900)])


@pytest.fixture(params=[False, FULL], ids=["ci", "full"])
def full(request: pytest.FixtureRequest, long_run: bool, scenario_report: ScenarioReport) -> bool:
    """The scenario's full size (``-m slow``, or ``--long``) instead of its short CI form."""
    scenario_report.long = bool(request.param) or long_run
    scenario_report.name = request.node.originalname  # the line says [ci] or [long] itself
    return scenario_report.long
