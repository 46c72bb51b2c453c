"""One backoff formula: every retry loop waits what data_collector.backoff says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tenacity import RetryCallState

from data_collector.backoff import backoff_delay
from data_collector.retrying import retry_policy

ROOT = Path(__file__).resolve().parent.parent


def test_delay_is_capped_exponential_with_jitter() -> None:
    for attempt in range(12):
        d = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, 0.5, 30.0) for _ in range(50)]
        assert all(d / 2 <= x <= d for x in delays)


@pytest.mark.parametrize("attempt_number", [1, 2, 3, 4, 5, 8])
def test_retry_policy_waits_by_the_same_formula(attempt_number: int) -> None:
    policy = retry_policy(initial_s=0.5, max_s=5.0)
    state = RetryCallState(policy, fn=None, args=(), kwargs={})
    state.attempt_number = attempt_number
    d = min(5.0, 0.5 * 2 ** (attempt_number - 1))
    assert all(d / 2 <= policy.wait(state) <= d for _ in range(50))


def test_no_other_module_draws_its_own_jitter() -> None:
    # The simulator models an exchange, not a client: its randomness is its own.
    offenders = []
    for path in sorted((ROOT / "data_collector").rglob("*.py")):
        if "simulator" in path.parts or path.name == "backoff.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "random"
                and getattr(node.value, "id", "") == "random"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
