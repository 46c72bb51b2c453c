"""Trade pages are checked before anything stores them: every malformed form is refused."""

from __future__ import annotations

from typing import Any

import pytest

from data_collector.backfill.validate import MalformedPageError, validate_trades


def row(i: int, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "a": i,
        "p": "100.5",
        "q": "0.25",
        "f": 10 * i,
        "l": 10 * i + 1,
        "T": 1000 + i,
        "m": True,
    }
    out.update(changes)
    return out


def test_a_good_page_becomes_trades() -> None:
    assert validate_trades([row(5), row(6, m=False)], from_id=5) == [
        (5, 1005, 100.5, 0.25, 50, 51, True),
        (6, 1006, 100.5, 0.25, 60, 61, False),
    ]
    assert validate_trades([]) == []


@pytest.mark.parametrize(
    "page",
    [
        {"a": 1},
        [row(1), "x"],
        [row(1), {k: v for k, v in row(2).items() if k != "T"}],
        [row(1), row(1)],
        [row(2), row(1)],
        [row(1, T=2000), row(2, T=1999)],
        [row(1, p="nan")],
        [row(1, q="0")],
        [row(1, p="-3")],
        [row(1, p=True)],
        [row(1, a="1")],
        [row(1, T=1.5)],
        [row(1, m="true")],
        [row(1, f=20, l=10)],
        [row(1, p="1,2")],
    ],
)
def test_malformed_pages_are_refused(page: Any) -> None:
    with pytest.raises(MalformedPageError):
        validate_trades(page)


def test_ids_below_from_id_and_times_outside_the_window_are_refused() -> None:
    with pytest.raises(MalformedPageError):
        validate_trades([row(4), row(5)], from_id=5)
    with pytest.raises(MalformedPageError):
        validate_trades([row(4), row(5)], start_ms=1000, end_ms=1004)
