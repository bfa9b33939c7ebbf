"""Reading every shard for one report: scans, in-doubt legs, and a line for
each shard that could not be read (a report built without a shard must say
so, never look complete)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from clients.reports.day import DayWindow
from clients.reports.eod import in_doubt_lines
from clients.reports.journal_reader import ShardAddress, ShardReader, unreachable
from clients.reports.ledger_scan import ShardScan, scan_shard
from clients.reports.model import DayTransfer, Party
from shardbank import service_auth


@dataclass
class Gathered:
    scans: list[ShardScan] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    in_doubt: list[str] = field(default_factory=list)

    @property
    def transfers(self) -> list[DayTransfer]:
        return [t for scan in self.scans for t in scan.transfers]

    @property
    def directory(self) -> dict[int, Party]:
        return {k: v for scan in self.scans for k, v in scan.directory.items()}

    @property
    def problems(self) -> list[str]:
        """What makes the data incomplete or untrustworthy."""
        return self.unreadable + [line for scan in self.scans for line in scan.discrepancies]


def gather(
    shards: Sequence[ShardAddress],
    secret: bytes,
    window: DayWindow,
    cut_ms: int,
    *,
    compare_accounts: bool,
    in_doubt_older_than_ms: int | None,
) -> Gathered:
    found = Gathered()
    for shard in shards:
        if not shard.address:
            found.unreadable.append(f"{shard.shard_id} unreadable: no address registered (node down?)")
            continue
        try:
            with ShardReader(shard, secret) as reader:
                scan = scan_shard(reader, window, cut_ms, compare_accounts)
                found.scans.append(scan)
                if in_doubt_older_than_ms is not None:
                    legs = reader.in_doubt(in_doubt_older_than_ms)
                    now_ms = service_auth.wall_clock_ms()
                    found.in_doubt.extend(
                        in_doubt_lines(shard.shard_id, legs, now_ms, in_doubt_older_than_ms)
                    )
        except grpc.RpcError as error:
            found.unreadable.append(unreachable(shard, error))
            continue
    return found
