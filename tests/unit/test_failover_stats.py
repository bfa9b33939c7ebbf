"""Failover figures parsed from coordinator JSON logs."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.failover_stats import failover_stats


def _line(**fields: object) -> str:
    return json.dumps(fields)


def test_counts_only_transfers_in_doubt_at_the_election(tmp_path: Path) -> None:
    (tmp_path / "coord-2.log").write_text(
        "\n".join(
            [
                "not json",
                _line(event="elected", epoch=9, timestamp="2026-11-24T10:00:05.000000Z"),
                # prepared 10:00:02, before the election: in doubt, resolved 1.5 s after it
                _line(
                    event="in_doubt_resolved",
                    epoch=9,
                    time_to_resolve_ms=4500,
                    timestamp="2026-11-24T10:00:06.500000Z",
                ),
                # prepared after the election: the new leader's own business, not counted
                _line(
                    event="in_doubt_resolved",
                    epoch=9,
                    time_to_resolve_ms=2000,
                    timestamp="2026-11-24T10:00:09.000000Z",
                ),
                # another term's resolution with no election in these logs
                _line(
                    event="in_doubt_resolved",
                    epoch=3,
                    time_to_resolve_ms=9000,
                    timestamp="2026-11-24T10:00:09.000000Z",
                ),
            ]
        )
    )
    killed_at = 1_795_514_402.0  # 2026-11-24T10:00:02Z
    stats = failover_stats(tmp_path, [killed_at])
    assert stats.elections == 1
    assert stats.in_doubt_at_election == 1
    assert abs(stats.in_doubt_resolved_after_election_s_max - 1.5) < 1e-6
    assert abs(stats.election_after_kill_s_max - 3.0) < 1e-6
