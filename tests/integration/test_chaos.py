"""The bank-invariant fault runner, short form: ~60 s of random transfers
(mostly cross-shard) across 3 shards while coordinator leaders, standbys,
ledger nodes and the gateway are killed with SIGKILL and restarted."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.chaos import ChaosConfig, run

pytestmark = pytest.mark.integration


def test_bank_invariants_hold_under_kill_9(tmp_path: Path) -> None:
    report = run(
        ChaosConfig(
            data_dir=tmp_path / "chaos",
            duration_s=60,
            shards=3,
            coordinators=2,
            accounts=30,
            clients=6,
            seed=7,
            fault_gap_min_s=3.0,
            fault_gap_max_s=6.0,
        )
    )
    print(report.summary())
    assert report.ok, report.summary()
    assert report.committed > 0
    assert report.aborted_reasons.get("INSUFFICIENT_FUNDS", 0) > 0, "no overdraft was tried and refused"
    assert report.kills.get("leader", 0) >= 1
    assert report.kills.get("node", 0) >= 1
    assert report.verify_exit_code == 0
