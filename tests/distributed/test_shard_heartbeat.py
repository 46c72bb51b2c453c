"""Each host of a shard group keeps its own streamer heartbeat (``<group>@<host id>``), and the
health check (``scripts/health_check.py --continuous``) shows each live host, flags a SIGKILLed
one stale once it missed two beats, and says when its key is gone. Real processes, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio as aioredis
import yaml

from data_collector.config import load_config
from data_collector.health import check_heartbeats
from data_collector.simulator import SimulatedExchange
from tests.support.services import REDIS_URL
from tests.support.streaming import stream_config, wait_for_async

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "scripts" / "health_check.py"
GROUP = "hb"
#: The heartbeat's TTL: a beat every 2 s, stale after 4 s without one, the key gone after 6 s.
TTL_S = 6
SKIP = ("database", "exchange", "freshness", "disk", "heartbeat:collector")


def _host(config: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable, str(ROOT / "scripts" / "stream_market_data.py"), "--config", str(config),
                "--shard-group", GROUP, "--host-id", name, "--status-interval", "0",
            ],
            stdout=out, stderr=subprocess.STDOUT, cwd=config.parent,
        )  # fmt: skip


class Lines:
    """Every line a process prints, gathered in the background."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        self.lines: list[str] = []
        self._task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode().rstrip())

    def text(self) -> str:
        return "\n".join(self.lines[-40:])

    async def seen(self, fragment: str, timeout_s: float) -> str:
        """The first line holding ``fragment``, waited for."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines:
                if fragment in line:
                    return line
            if time.monotonic() > deadline or self._task.done():
                raise AssertionError(f"no line with {fragment!r} in:\n{self.text()}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_each_shard_host_keeps_a_heartbeat_and_a_dead_one_goes_stale_then_gone(
    redis_prefix: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    symbols = ["S00/USDT", "S01/USDT", "S02/USDT", "S03/USDT"]
    client = aioredis.Redis.from_url(REDIS_URL)
    async with SimulatedExchange(symbols=symbols, seed=31, ws_rate=10) as sim:
        config = stream_config(sim, redis_prefix, shard_symbols=1, shard_lease_s=3.0, channels=["trade"])
        config.update(symbols=symbols, metrics={"heartbeat_ttl_s": TTL_S})
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
        watcher = await asyncio.create_subprocess_exec(
            sys.executable, str(HEALTH), "--config", str(path), "--continuous", "0.3",
            *(a for name in SKIP for a in ("--skip", name)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path, env=env,
        )  # fmt: skip
        lines = Lines(watcher.stdout)
        try:
            # The first report (a table: no streamer yet) before any host starts, so each host's
            # row is a change the watcher prints as a line of its own.
            await lines.seen("healthy (with warnings)", 60)
            hosts = {name: _host(path, name, tmp_path / f"{name}.out") for name in ("h1", "h2")}
            procs.extend(hosts.values())
            # Each live host shows as a row of its own (a new row prints without an arrow).
            for name in hosts:
                await lines.seen(f"heartbeat:streamer:{GROUP}@{name}: ok: pid {hosts[name].pid}", 60)
            cfg = load_config(config)

            async def both_hold_shards() -> bool:
                rows = await check_heartbeats(cfg, client, "streamer", int(time.time() * 1000))
                by_name = {r.name: r for r in rows}
                return set(by_name) == {f"heartbeat:streamer:{GROUP}@{n}" for n in hosts} and all(
                    r.status == "ok" and r.data["shard_group"] == GROUP and r.data["shards"] for r in rows
                )

            await wait_for_async(both_hold_shards, timeout_s=30, what="both hosts beating with shards")

            hosts["h2"].send_signal(signal.SIGKILL)
            stale = await lines.seen(f"heartbeat:streamer:{GROUP}@h2: ok -> warn: stale: no beat for", 30)
            assert "one every 2s" in stale, stale
            await lines.seen(f"heartbeat:streamer:{GROUP}@h2: warn -> gone", 30)
            # The live host never changed state meanwhile.
            assert not [line for line in lines.lines if f"{GROUP}@h1: ok ->" in line], lines.text()

            hosts["h1"].send_signal(signal.SIGINT)
            assert hosts["h1"].wait(30) in (0, 130)
            # A clean stop removes the key at once: gone, never stale.
            await lines.seen(f"heartbeat:streamer:{GROUP}@h1: ok -> gone", 30)
            assert not [line for line in lines.lines if f"{GROUP}@h1: ok -> warn" in line], lines.text()
            assert [k async for k in client.scan_iter(match=f"{redis_prefix}:heartbeat:*")] == []
        finally:
            if watcher.returncode is None:
                watcher.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(watcher.wait(), 30)
            await lines.close()
            await client.aclose()
    assert code == 130, lines.text()
