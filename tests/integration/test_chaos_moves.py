"""The fault runner's moves mode, short form (~30 s of load): slots move back and
forth between 2 shards while transfers run and the mover (coordinator
leader), the moves' sources and targets, nodes and the gateway are killed."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import ChaosConfig, run

pytestmark = pytest.mark.integration


def test_bank_invariants_hold_while_slots_move_under_kill_9(tmp_path: Path) -> None:
    report = run(
        ChaosConfig(
            data_dir=tmp_path / "chaos",
            duration_s=30,
            shards=2,
            coordinators=2,
            accounts=16,
            clients=4,
            seed=11,
            fault_gap_min_s=2.0,
            fault_gap_max_s=4.0,
            moves=True,
        )
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert report.committed > 0
    assert report.moves_summary, "the moves mode ran"
    assert report.verify_exit_code == 0
