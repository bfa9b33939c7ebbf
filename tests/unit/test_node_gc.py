"""The node process's collector around start-up (`ledger_node.__main__`):
paused while the shard loads, what it loaded frozen after, the collector's
own setting restored either way."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ledger_node.__main__ import start_up_collector


@pytest.fixture(autouse=True)
def _restore_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    (gc.enable if enabled else gc.disable)()


def test_start_up_pauses_the_collector_then_freezes_what_it_made() -> None:
    gc.unfreeze()
    gc.enable()
    with start_up_collector():
        assert not gc.isenabled()
        made = [[index] for index in range(1000)]  # tracked objects, kept like loaded accounts
        assert gc.get_freeze_count() == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(made)


def test_a_failed_start_up_freezes_nothing_and_restores_the_collector() -> None:
    gc.unfreeze()
    gc.enable()
    with pytest.raises(OSError), start_up_collector():
        raise OSError("cannot listen")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    with start_up_collector():
        pass
    assert not gc.isenabled()
