"""Acceptance 8: the simulator's command line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import free_port

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "simulate_exchange.py")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--symbols", "SOLUSDT"], "SOLUSDT"),
        (["--symbols", "SOL/USDT,BTC-USDT"], "BTC-USDT"),
        (["--error-rate", "-0.5"], "error_rate"),
        (["--ws-rate", "-1"], "ws-rate"),
        (["--hang-rate", "2"], "hang_rate"),
        (["--port", "nope"], "--port"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_one_line_exit_2(args: list[str], needle: str) -> None:
    out = _run(*args, "--port", str(free_port())) if "--port" not in args else _run(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr


def test_port_in_use() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = _run("--port", str(port))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0]


def test_serves_until_ctrl_c() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--port", str(port), "--symbols", "SOL/USDT", "--seed", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        rest = proc.stdout.readline().strip()
        ws = proc.stdout.readline().strip()
        assert rest == f"REST http://127.0.0.1:{port}"
        assert ws == f"WS   ws://127.0.0.1:{port}"
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v3/ping", timeout=5) as resp:
            assert resp.read() == b"{}"
        # No wait needed: the stop signals are installed before the URLs are printed.
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
