"""Headless Chromium (Debian's ``chromium``) for page tests: a screenshot plus Chromium's own
network log, in a network namespace with only loopback when ``unshare`` allows it."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: Chromium's own background traffic (component updates, network time, translation) is turned
#: off or sent to a closed loopback port, so that any request in the log is the page's.
QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    "--no-first-run",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-background-networking",
    "--disable-component-update",
    "--component-updater=url-source=http://127.0.0.1:9/",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter",
)


@dataclass
class PageShot:
    screenshot: Path
    #: ``(url, initiator)`` of every URL request Chromium started.
    requests: list[tuple[str, str]]

    def left_the_machine(self) -> list[str]:
        """URLs of requests to anything but loopback, and every request the page itself made."""
        return [
            url
            for url, initiator in self.requests
            if urlsplit(url).hostname not in LOOPBACK_HOSTS or initiator != "not an origin"
        ]


def _no_network_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True, check=False).returncode == 0:
        return [unshare, "-n"]
    return []


def shoot(page: Path, out_dir: Path, width: int, height: int) -> PageShot:
    """Open ``page`` (a file) in headless Chromium; return its screenshot and network requests.

    The window gets 200 pixels more than ``height``: below about 200 pixels of height this
    Chromium paints nothing past the first lines of the page.
    """
    assert CHROMIUM is not None
    shot, netlog = out_dir / "screenshot.png", out_dir / "netlog.json"
    subprocess.run(
        [
            *_no_network_prefix(),
            CHROMIUM,
            *QUIET_FLAGS,
            f"--user-data-dir={out_dir / 'profile'}",
            f"--window-size={width},{height + 200}",
            f"--screenshot={shot}",
            f"--log-net-log={netlog}",
            "--net-log-capture-mode=Everything",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    requests = [
        (str(e["params"].get("url", "")), str(e["params"].get("initiator", "")))
        for e in log["events"]
        # The job's begin event carries the URL; its end event has no parameters.
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
    ]
    return PageShot(shot, requests)
