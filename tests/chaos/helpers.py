"""Small helpers shared by the chaos scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    """How a call under fault ended: its result or its error, and how long it took."""

    what: str
    elapsed_s: float
    result: Any = None
    error: BaseException | None = None
    hung: bool = False

    def __str__(self) -> str:
        how = "HUNG" if self.hung else type(self.error).__name__ if self.error else "ok"
        return f"{self.what}: {how} after {self.elapsed_s:.2f}s"


async def bounded(what: str, call: Awaitable[Any], guard_s: float) -> Outcome:
    """Await ``call`` under an outer guard of ``guard_s``; a call still running then has *hung*.

    The guard is far above the configured timeout, so a pass never depends on the machine's speed:
    it only catches calls that would otherwise wait forever.
    """
    started = time.monotonic()
    guard = asyncio.timeout(guard_s)
    try:
        async with guard:
            result = await call
    except TimeoutError as exc:
        return Outcome(what, time.monotonic() - started, error=exc, hung=guard.expired())
    except Exception as exc:
        return Outcome(what, time.monotonic() - started, error=exc)
    return Outcome(what, time.monotonic() - started, result=result)
