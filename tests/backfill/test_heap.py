"""The run's frozen heap: frozen for the outermost run only, unfrozen when the last run ends."""

from __future__ import annotations

import gc

import pytest

from data_collector.backfill.heap import frozen_heap


@pytest.fixture(autouse=True)
def _unfrozen() -> None:
    if gc.get_freeze_count():
        pytest.skip("the heap is already frozen by something else in this process")


def test_objects_before_the_run_are_frozen_until_the_last_run_ends() -> None:
    with frozen_heap():
        outer = gc.get_freeze_count()
        assert outer > 0
        with frozen_heap():
            # The nested run neither freezes again nor unfreezes when it ends.
            assert gc.get_freeze_count() == outer
        assert gc.get_freeze_count() == outer
    assert gc.get_freeze_count() == 0


def test_unfrozen_after_an_error() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("the run failed")
    assert gc.get_freeze_count() == 0


def test_a_freeze_owned_by_someone_else_is_left_alone() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == count
    finally:
        gc.unfreeze()
