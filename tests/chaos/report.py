"""The one line of figures every chaos scenario prints, and the RSS sampler behind it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import psutil


class RssSampler:
    """Samples the RSS of this process (plus watched child pids) in a thread; keeps peaks and series."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.pids: set[int] = set()
        self.peak_self = 0
        self.peak_total = 0
        self.peak_children = 0
        self.series: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = psutil.Process(os.getpid())

    def watch(self, pid: int) -> None:
        self.pids.add(pid)

    def sample(self) -> int:
        mine = self._me.memory_info().rss
        total = mine
        for pid in list(self.pids):
            try:
                child = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                self.pids.discard(pid)
                continue
            total += child
            self.peak_children = max(self.peak_children, child)
        self.peak_self = max(self.peak_self, mine)
        self.peak_total = max(self.peak_total, total)
        self.series.append(mine)
        return mine

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> RssSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.sample()


@dataclass
class ScenarioReport:
    """Figures of one scenario run; :meth:`line` is what CI shows."""

    name: str
    long: bool = False
    faults_injected: int = 0
    faults_survived: int = 0
    expected: int = 0
    found: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    rss: RssSampler = field(default_factory=RssSampler)
    outcome: str = "?"

    def tally(self, expected: int, found: int, lost: int, duplicated: int, **extra: Any) -> None:
        """Set the scenario's counts (and any further figures) in one call."""
        self.expected, self.found, self.lost, self.duplicated = expected, found, lost, duplicated
        self.extra.update(extra)

    def fault(self, kind: str, n: int = 1) -> None:
        """Count ``n`` injected faults of ``kind``."""
        self.faults_injected += n
        key = f"f_{kind}"
        self.extra[key] = int(self.extra.get(key, 0)) + n

    def line(self) -> str:
        peak_mb = self.rss.peak_total / 2**20
        parts = [
            f"CHAOS {self.name}[{'long' if self.long else 'ci'}] {self.outcome}:",
            f"faults_injected={self.faults_injected}",
            f"faults_survived={self.faults_survived}",
            f"expected={self.expected}",
            f"found={self.found}",
            f"lost={self.lost}",
            f"duplicated={self.duplicated}",
            f"peak_rss_mb={peak_mb:.0f}",
        ]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return " ".join(parts)
