"""``optimized_collection.py --demo --stream``: backfill, then live streams into Redis until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import yaml

from tests.support.services import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "optimized_collection.py"


def test_demo_then_stream_until_ctrl_c(tmp_path: Path, redis_prefix: str) -> None:
    config = {
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"},
        "redis": {"url": REDIS_URL, "prefix": redis_prefix},
        "symbols": ["SOL/USDT"],
        "timeframes": ["1h"],
        "start": "2d",
        "streaming": {"channels": ["trade"]},
        "logging": {"file": None},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DC__")}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--config", str(path), "--demo", "--stream"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    stream = f"{redis_prefix}:stream:sim-binance:trade:SOL/USDT"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and client.xlen(stream) < 20:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert client.xlen(stream) >= 20
        assert list(client.scan_iter(match=f"{redis_prefix}:heartbeat:streamer:*"))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
    assert proc.returncode == 130, err  # stopped by Ctrl-C
    assert "Collection done" in out
    assert "stream summary" in out
    assert "Traceback" not in err
