"""End of day: one result from every shard's scan, with a line for each
discrepancy.

Checked: each shard's journal chain from seq 1 and its stored accounts
against the replay (`ledger_scan`), the trial balance at the cut (per
currency, all balances including the cash accounts plus amounts in flight,
must be 0), and 2PC legs prepared longer ago than the prepare timeout plus a
grace for the coordinator's sweep. Reported: transfers committed in the day
by kind and currency, per shard (at the record holder) and in total; the
day's payments per merchant account; volume per local hour.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clients.reports.day import DayWindow
from clients.reports.ledger_scan import ShardScan, books
from clients.reports.model import PAYMENT, DayTransfer, Party
from coordinator.recovery import PREPARE_TIMEOUT_MS_DEFAULT, SWEEP_INTERVAL_S
from shardbank import money
from shardbank.v1 import ledger_pb2

# A leg past the prepare timeout is resolved by the coordinator leader's next
# sweep (every SWEEP_INTERVAL_S); one still there after a few sweeps means
# recovery is not happening.
IN_DOUBT_GRACE_MS = int(5 * SWEEP_INTERVAL_S * 1000)
IN_DOUBT_OLDER_THAN_MS = PREPARE_TIMEOUT_MS_DEFAULT + IN_DOUBT_GRACE_MS
HOURS = 24
ROLE_NAMES = {1: "debit", 2: "credit"}


@dataclass
class Tally:
    count: int = 0
    volume_minor: int = 0

    def add(self, amount: int) -> None:
        self.count += 1
        self.volume_minor += amount


def _by_kind(transfers: Sequence[DayTransfer]) -> dict[str, dict[str, Tally]]:
    table: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))
    for transfer in transfers:
        table[transfer.kind_name][transfer.currency].add(transfer.amount)
    return table


def _tally_json(table: Mapping[str, Mapping[str, Tally]]) -> dict[str, dict[str, dict[str, int]]]:
    return {
        kind: {cur: {"count": t.count, "volume_minor": t.volume_minor} for cur, t in sorted(by_cur.items())}
        for kind, by_cur in sorted(table.items())
    }


def merchants(transfers: Sequence[DayTransfer], directory: Mapping[int, Party]) -> list[dict[str, Any]]:
    """Payments settled per merchant (the business credit account), largest first."""
    table: dict[tuple[int, str], Tally] = defaultdict(Tally)
    for transfer in transfers:
        if transfer.kind == PAYMENT:
            table[(transfer.credit_account_id, transfer.currency)].add(transfer.amount)
    rows = []
    for (account_id, currency), tally in table.items():
        party = directory.get(account_id)
        rows.append(
            {
                "account_id": str(account_id),
                "merchant": party.name if party else "",
                "customer_id": party.customer_id if party else "",
                "currency": currency,
                "count": tally.count,
                "volume_minor": tally.volume_minor,
                "volume": money.format_amount(tally.volume_minor, currency),
            }
        )
    return sorted(rows, key=lambda row: (-row["volume_minor"], row["account_id"]))


def volume_per_hour(transfers: Sequence[DayTransfer], window: DayWindow) -> dict[str, list[int]]:
    """Currency -> 24 hourly volumes in minor units (local hours)."""
    hours: dict[str, list[int]] = defaultdict(lambda: [0] * HOURS)
    for transfer in transfers:
        hours[transfer.currency][window.hour_of(transfer.at_unix_ms)] += transfer.amount
    return dict(sorted(hours.items()))


def in_doubt_lines(shard: str, legs: Sequence[ledger_pb2.Leg], now_ms: int, older_than_ms: int) -> list[str]:
    """A line per leg left prepared too long. A transfer held for a risk
    officer's review (Transfer.review_deadline_unix_ms set) is meant to wait:
    it is late only once its deadline has passed by more than the grace in
    which the expiry sweep rejects it."""
    lines = []
    for leg in legs:
        role = ROLE_NAMES.get(leg.role, "unknown")
        deadline = leg.transfer.review_deadline_unix_ms
        if deadline:
            if now_ms - deadline > IN_DOUBT_GRACE_MS:
                lines.append(
                    f"{shard} transfer {leg.transfer.id}: {role} leg held for review "
                    f"{now_ms - deadline} ms past its review deadline"
                )
            continue
        lines.append(
            f"{shard} transfer {leg.transfer.id}: {role} leg PREPARED for "
            f"{now_ms - leg.prepared_at_unix_ms} ms (limit {older_than_ms} ms: prepare timeout "
            f"{PREPARE_TIMEOUT_MS_DEFAULT} ms + sweeps)"
        )
    return lines


def reused_ids(transfers: Sequence[DayTransfer]) -> list[str]:
    """A transfer id committed by two record holders in the day: two transfers
    under one id. Ids are unique per record holder only (docs/internals.md,
    Gateway), so a client that reuses an id with a debit account on another
    shard moves money twice; the end of day names it. A slot move never
    does this: it copies a record (RECORD_IMPORTED), it does not post it."""
    holders: dict[str, list[DayTransfer]] = defaultdict(list)
    for transfer in transfers:
        holders[transfer.transfer_id].append(transfer)
    return [
        f"transfer id {transfer_id}: committed {len(found)} times, at "
        + ", ".join(f"{t.shard} ({t.debit_account_id} -> {t.credit_account_id}, {t.amount} {t.currency})"
                    for t in found)
        + ": one id, several transfers (a client reused it)"
        for transfer_id, found in sorted(holders.items())
        if len(found) > 1
    ]  # fmt: skip


@dataclass
class EodResult:
    data: dict[str, Any]
    discrepancies: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


def end_of_day(
    scans: Sequence[ShardScan],
    in_doubt: Sequence[str],
    unreadable: Sequence[str],
    window: DayWindow,
    cut_ms: int,
) -> EodResult:
    transfers = [t for scan in scans for t in scan.transfers]
    directory = {k: v for scan in scans for k, v in scan.directory.items()}
    discrepancies = list(unreadable)
    for scan in scans:
        discrepancies.extend(scan.discrepancies)
        if scan.discrepancies_dropped:
            discrepancies.append(f"{scan.shard}: {scan.discrepancies_dropped} more discrepancies not listed")
    totals, book_problems = books(list(scans))
    if unreadable or not all(scan.chain_ok for scan in scans):
        # Sums over part of the books say nothing; one line says why there are none.
        discrepancies.append("books: no trial balance (a shard was not read to its end)")
    else:
        discrepancies.extend(book_problems)
        for currency, total in sorted(totals.items()):
            if total != 0:
                discrepancies.append(
                    f"books {currency}: balances sum to {total}, not 0 (trial balance at the cut)"
                )
    discrepancies.extend(in_doubt)
    discrepancies.extend(reused_ids(transfers))
    data: dict[str, Any] = {
        "report": "EOD",
        "date": window.date.isoformat(),
        "tz": window.tz,
        "window_unix_ms": [window.start_ms, window.end_ms],
        "cut_unix_ms": cut_ms,
        "shards": [
            {
                "shard": scan.shard,
                "journal_seq": scan.journal_seq,
                "head_hash": scan.head_hash.hex(),
                "chain_ok": scan.chain_ok,
                "accounts_compared": scan.accounts_compared,
                "transfers": _tally_json(_by_kind(scan.transfers)),
            }
            for scan in scans
        ],
        "total": {"transfers": _tally_json(_by_kind(transfers))},
        "trial_balance": dict(sorted(totals.items())),
        "merchants": merchants(transfers, directory),
        "volume_per_hour_minor": volume_per_hour(transfers, window),
        "discrepancies": discrepancies,
        "ok": not discrepancies,
    }
    return EodResult(data=data, discrepancies=discrepancies)


def summary(result: EodResult) -> str:
    """The human page printed on stdout."""
    data = result.data
    lines = [f"end of day {data['date']} ({data['tz']})"]
    for shard in data["shards"]:
        chain = "chain ok" if shard["chain_ok"] else "CHAIN BROKEN"
        lines.append(
            f"  {shard['shard']}: journal 1..{shard['journal_seq']} {chain}, "
            f"{shard['accounts_compared']} accounts = replay"
        )
        lines.extend(_kind_lines(shard["transfers"], "    "))
    lines.append("  total:")
    lines.extend(_kind_lines(data["total"]["transfers"], "    "))
    for currency, total in data["trial_balance"].items():
        lines.append(f"  trial balance {currency}: {total}")
    for row in data["merchants"][:10]:
        lines.append(
            f"  merchant {row['account_id']} {row['merchant']}: "
            f"{row['count']} payments {row['volume']} {row['currency']}"
        )
    for line in result.discrepancies:
        lines.append(f"DISCREPANCY {line}")
    lines.append("eod: OK" if result.ok else f"eod: FAILED ({len(result.discrepancies)} discrepancies)")
    return "\n".join(lines)


def _kind_lines(table: Mapping[str, Mapping[str, Mapping[str, int]]], indent: str) -> list[str]:
    if not table:
        return [f"{indent}no transfers"]
    return [
        f"{indent}{kind:<10} {cur} {t['count']:>7}  {money.format_amount(t['volume_minor'], cur):>20}"
        for kind, by_cur in table.items()
        for cur, t in by_cur.items()
    ]
