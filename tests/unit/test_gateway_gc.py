"""The gateway's collector settings: fewer young collections, start-up
objects frozen out of the collector's view."""

from __future__ import annotations

import gc

from gateway import server


def test_tune_gc_raises_the_young_threshold_and_freezes_what_exists() -> None:
    before = gc.get_threshold()
    try:
        server.tune_gc()
        young, middle, old = gc.get_threshold()
        assert young == server.GC_YOUNG_ALLOCATIONS
        assert (middle, old) == before[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
