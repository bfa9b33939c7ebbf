"""Failover figures from the coordinators' JSON logs.

Two numbers the 2PC issue asks for, measured rather than argued:
- how long after a leader was killed a new one was elected;
- how long after an election the transfers that were in doubt at that moment
  (prepared before the election, resolved by the new leader's recovery) ended.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailoverStats:
    elections: int
    # After each leader kill, time to the next election (seconds).
    election_after_kill_s_max: float
    # Transfers in doubt at an election and resolved by that term's recovery.
    in_doubt_at_election: int
    # Time from the election to the last of those resolutions (seconds).
    in_doubt_resolved_after_election_s_max: float


def _parse_ts(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _events(log_dir: Path) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    for path in sorted(log_dir.glob("coord-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in ("elected", "in_doubt_resolved") and "timestamp" in event:
                found.append(event)
    return found


def failover_stats(log_dir: Path, leader_kills_unix_s: list[float]) -> FailoverStats:
    events = _events(log_dir)
    elections = sorted(
        (_parse_ts(str(e["timestamp"])), int(str(e["epoch"]))) for e in events if e["event"] == "elected"
    )
    election_times = [t for t, _ in elections]
    after_kill = 0.0
    for killed in leader_kills_unix_s:
        later = [t for t in election_times if t > killed]
        if later:
            after_kill = max(after_kill, later[0] - killed)
    elected_at = {epoch: t for t, epoch in elections}
    in_doubt = 0
    resolved_after = 0.0
    for event in events:
        if event["event"] != "in_doubt_resolved":
            continue
        epoch = int(str(event["epoch"]))
        if epoch not in elected_at:
            continue
        resolved = _parse_ts(str(event["timestamp"]))
        prepared = resolved - int(str(event.get("time_to_resolve_ms", 0))) / 1000
        if prepared < elected_at[epoch]:
            in_doubt += 1
            resolved_after = max(resolved_after, resolved - elected_at[epoch])
    return FailoverStats(len(elections), after_kill, in_doubt, resolved_after)
