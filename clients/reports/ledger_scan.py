"""One pass over a live shard: replay its journal (chain verified from seq 1,
`ledger_node.replay`), compare its stored accounts with the replay, and
collect what the reports need — the account directory, the transfers
committed in the report window, and the balances at the trial-balance cut.

Stored accounts come in pages, each read by the node between two group
commits together with the journal seq it reflects; the scan replays the
journal exactly up to that seq before comparing the page, so the comparison
is exact while the shard keeps taking traffic.

The cut: entries stamped before `cut_ms` (the end of the day, or the start
of the report for today). Every shard is cut at the same instant, so a
cross-shard transfer is on both sides of the cut consistently (its debit
commits before its credit finishes) and the books balance across shards
once transfers committed at the record holder but not yet finished at the
credit shard are counted as in flight (as `shardbank verify` does), and an
account or record a slot move has copied to a second shard is counted once
(`books`).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from clients.reports.day import DayWindow
from clients.reports.journal_reader import ShardReader
from clients.reports.model import DayTransfer, Party
from ledger_node.replay import MOVE_KINDS, Corrupt, JournalReplay, ShardBooks, account_mismatch, trial_balance
from shardbank.v1 import ledger_pb2, types_pb2

DEBIT = types_pb2.LEG_ROLE_DEBIT
CREDIT = types_pb2.LEG_ROLE_CREDIT
# Discrepancy lines kept per shard; past it one line says how many more.
DISCREPANCIES_PER_SHARD_MAX = 200
# An account the shard never imported: older than any import.
NEVER = (-1, "", 0)


@dataclass
class Cut:
    """A shard's books as of the cut."""

    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # transfer id -> leg state at the cut
    debit_records: dict[str, int] = field(default_factory=dict)
    credit_legs: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # Slot moves: every account held at the cut, and the copies imported from
    # another shard (account -> (imported at, currency, balance); record
    # (role, transfer id) -> imported at). Mid-move two shards hold the same
    # account or record; `books` counts the older holder's copy only.
    account_ids: frozenset[int] = frozenset()
    imported_accounts: dict[int, tuple[int, str, int]] = field(default_factory=dict)
    imported_records: dict[tuple[int, str], int] = field(default_factory=dict)


@dataclass
class ShardScan:
    shard: str
    journal_seq: int = 0
    head_hash: bytes = b""
    directory: dict[int, Party] = field(default_factory=dict)
    transfers: list[DayTransfer] = field(default_factory=list)
    cut: Cut = field(default_factory=Cut)
    accounts_compared: int = 0
    chain_ok: bool = True
    discrepancies: list[str] = field(default_factory=list)
    discrepancies_dropped: int = 0

    def problem(self, line: str) -> None:
        if len(self.discrepancies) < DISCREPANCIES_PER_SHARD_MAX:
            self.discrepancies.append(line)
        else:
            self.discrepancies_dropped += 1


class _Scanner:
    def __init__(self, shard: str, window: DayWindow, cut_ms: int) -> None:
        self.result = ShardScan(shard=shard)
        self.replay = JournalReplay(shard)
        self.window = window
        self.cut_ms = cut_ms
        self.cut_taken = False
        self.credit_bodies: dict[str, tuple[str, int]] = {}
        self.opened_at: dict[int, int] = {}
        # Copies imported by slot moves and not released: key -> imported at.
        self.imported_accounts: dict[int, int] = {}
        self.imported_records: dict[tuple[int, str], int] = {}

    def feed(self, stored: ledger_pb2.StoredJournalEntry) -> None:
        entry = self.replay.check(stored.seq, stored.hash, stored.entry)
        if not self.cut_taken and entry.at_unix_ms >= self.cut_ms:
            self.take_cut()
        self.replay.apply(entry, stored.hash)
        kind = entry.kind
        if kind in (types_pb2.JOURNAL_KIND_ACCOUNT_OPENED, types_pb2.JOURNAL_KIND_ACCOUNT_UPDATED):
            self.result.directory[entry.account.id] = Party.of(entry.account)
            self.opened_at.setdefault(entry.account.id, entry.seq)
        elif entry.role == CREDIT and kind == types_pb2.JOURNAL_KIND_LEG_PREPARED:
            self.credit_bodies[entry.transfer.id] = (entry.transfer.currency, entry.transfer.amount)
        elif kind in MOVE_KINDS:
            self._moved(entry)
        posted = kind == types_pb2.JOURNAL_KIND_TRANSFER_POSTED
        committed = kind == types_pb2.JOURNAL_KIND_LEG_COMMITTED and entry.role == DEBIT
        if (posted or committed) and self.window.contains(entry.at_unix_ms):
            self.result.transfers.append(self._day_transfer(entry, cross_shard=committed))

    def _moved(self, entry: types_pb2.JournalEntry) -> None:
        kind = entry.kind
        if kind == types_pb2.JOURNAL_KIND_ACCOUNT_IMPORTED:
            self.imported_accounts[entry.account.id] = entry.at_unix_ms
        elif kind == types_pb2.JOURNAL_KIND_ACCOUNT_RELEASED:
            self.imported_accounts.pop(entry.account_id, None)
        elif kind == types_pb2.JOURNAL_KIND_RECORD_IMPORTED:
            self.imported_records[(entry.role, entry.transfer.id)] = entry.at_unix_ms
            if entry.role == CREDIT:  # an in-flight credit leg's amount, for the books
                self.credit_bodies[entry.transfer.id] = (entry.transfer.currency, entry.transfer.amount)
        elif kind == types_pb2.JOURNAL_KIND_RECORD_RELEASED:
            self.imported_records.pop((entry.role, entry.transfer.id), None)

    def _day_transfer(self, entry: types_pb2.JournalEntry, cross_shard: bool) -> DayTransfer:
        transfer = entry.transfer
        return DayTransfer(
            transfer_id=transfer.id,
            kind=transfer.kind,
            debit_account_id=transfer.debit_account_id,
            credit_account_id=transfer.credit_account_id,
            amount=transfer.amount,
            currency=transfer.currency,
            at_unix_ms=entry.at_unix_ms,
            shard=self.result.shard,
            cross_shard=cross_shard,
        )

    def take_cut(self) -> None:
        self.cut_taken = True
        cut = self.result.cut
        for account in self.replay.accounts.values():
            cut.balances[account.currency] += account.balance
        for (role, transfer_id), state in self.replay.states.items():
            if role == DEBIT:
                cut.debit_records[transfer_id] = state
            elif role == CREDIT:
                currency, amount = self.credit_bodies.get(transfer_id, ("", 0))
                cut.credit_legs[transfer_id] = (state, currency, amount)
        accounts = self.replay.accounts
        cut.account_ids = frozenset(accounts)
        cut.imported_accounts = {
            account_id: (at_ms, accounts[account_id].currency, accounts[account_id].balance)
            for account_id, at_ms in self.imported_accounts.items()
            if account_id in accounts
        }
        cut.imported_records = dict(self.imported_records)


def scan_shard(reader: ShardReader, window: DayWindow, cut_ms: int, compare_accounts: bool) -> ShardScan:
    """Read and check one shard; every problem found is a line in `discrepancies`."""
    scanner = _Scanner(reader.shard.shard_id, window, cut_ms)
    result = scanner.result
    journal = reader.journal()
    try:
        if compare_accounts:
            _compare_accounts(reader, scanner, journal)
        for stored in journal:
            scanner.feed(stored)
    except Corrupt as problem:
        result.chain_ok = False
        result.problem(f"{problem.shard} {problem.where}: {problem.what}")
    if not scanner.cut_taken:
        scanner.take_cut()
    result.journal_seq, result.head_hash = scanner.replay.journal_seq, scanner.replay.head_hash
    return result


def _advance(scanner: _Scanner, journal: Iterator[ledger_pb2.StoredJournalEntry], seq: int) -> None:
    while scanner.replay.journal_seq < seq:
        stored = next(journal, None)
        if stored is None:
            return
        scanner.feed(stored)


def _compare_accounts(
    reader: ShardReader, scanner: _Scanner, journal: Iterator[ledger_pb2.StoredJournalEntry]
) -> None:
    """Each page against the replay at the page's journal seq, then every
    account the journal opened that no page showed."""
    result, shard = scanner.result, scanner.result.shard
    seen: set[int] = set()
    # (last id covered by the page, its journal seq); the last page covers the rest
    covered: list[tuple[int, int]] = []
    for page in reader.account_pages():
        _advance(scanner, journal, page.journal_seq)
        if scanner.replay.journal_seq != page.journal_seq:
            result.problem(
                f"{shard} journal: ends at seq {scanner.replay.journal_seq} but the node "
                f"says {page.journal_seq}"
            )
            return
        for account in page.accounts:
            mismatch = account_mismatch(account, scanner.replay.accounts)
            if mismatch is not None:
                result.problem(f"{shard} account {account.id}: {mismatch}")
            seen.add(account.id)
        result.accounts_compared += len(page.accounts)
        last = page.accounts[-1].id if page.accounts and not page.done else (1 << 64) - 1
        covered.append((last, page.journal_seq))
    ends = [last for last, _ in covered]
    for account_id in sorted(set(scanner.replay.accounts) - seen):
        index = bisect.bisect_left(ends, account_id)
        if index < len(covered) and scanner.opened_at.get(account_id, 0) <= covered[index][1]:
            result.problem(f"{shard} account {account_id}: opened in the journal but its record is missing")


def books(scans: list[ShardScan]) -> tuple[dict[str, int], list[str]]:
    """The trial balance at the cut (`ledger_node.replay.trial_balance`):
    totals per currency, each must be 0, and lines for 2PC contradictions.
    An account or record two shards hold at the cut (a slot move between
    its copy and its release) counts once (`_counted_once`)."""
    totals, problems = trial_balance([_counted_once(scan, scans) for scan in scans])
    return totals, [f"{p.shard} {p.where}: {p.what}" for p in problems]


def _counted_once(scan: ShardScan, scans: list[ShardScan]) -> ShardBooks:
    """`scan`'s books without the copies another shard holds an older copy
    of. A move copies into the target (imported later than the source got
    it, or the source never imported it) and releases the source after the
    flip; until then the source's copy is the one that counts: before the
    flip it is the owner, after it the source is fenced and the copies are
    equal. This is what `ledger_node.verify` does with the staged and fenced
    marks, which the journal does not carry."""
    cut = scan.cut
    others = [other.cut for other in scans if other is not scan]
    balances = dict(cut.balances)
    for account_id, (at_ms, currency, balance) in cut.imported_accounts.items():
        if any(
            account_id in other.account_ids and other.imported_accounts.get(account_id, NEVER)[0] < at_ms
            for other in others
        ):
            balances[currency] -= balance
    duplicates = [
        key
        for key, at_ms in cut.imported_records.items()
        if any(_holds(other, key) and other.imported_records.get(key, -1) < at_ms for other in others)
    ]
    if not duplicates:  # the usual case: no copy of the (large) record maps
        return ShardBooks(scan.shard, balances, cut.debit_records, cut.credit_legs)
    debit_records, credit_legs = dict(cut.debit_records), dict(cut.credit_legs)
    for role, transfer_id in duplicates:
        if role == DEBIT:
            debit_records.pop(transfer_id, None)
        else:
            credit_legs.pop(transfer_id, None)
    return ShardBooks(scan.shard, balances, debit_records, credit_legs)


def _holds(cut: Cut, key: tuple[int, str]) -> bool:
    role, transfer_id = key
    return transfer_id in (cut.debit_records if role == DEBIT else cut.credit_legs)
