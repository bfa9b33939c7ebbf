"""Offline verification of stopped shards: `python -m ledger_node.verify --data-dir DIR`.

For each shard DB: walk the journal from seq 1 recomputing the hash chain,
replay its postings, and compare the result with every stored account, transfer
record, credit leg and in-doubt index entry. Then the books: per currency the
balances of all shards sum to 0, once each cross-shard transfer that is
COMMITTED at its record holder but whose credit leg is still PREPARED is
counted (its amount has left the debit account and not yet reached the credit).

The first problem found is named (shard, key or seq, what is wrong) and the
exit status is 1; 0 means everything checked out; 2 is a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from ledger_node import journal, keys, slot_data
from ledger_node.replay import (
    PREPARED,
    Corrupt,
    JournalReplay,
    Replayed,
    ShardBooks,
    account_mismatch,
    journal_where,
    trial_balance,
)
from ledger_node.store import Store
from shardbank.v1 import ledger_pb2, types_pb2

DEBIT = types_pb2.LEG_ROLE_DEBIT
CREDIT = types_pb2.LEG_ROLE_CREDIT


@dataclass
class ShardReport:
    name: str
    journal_seq: int = 0
    head_hash: bytes = journal.GENESIS_HASH
    accounts: int = 0
    records: int = 0
    legs: int = 0
    balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # transfer id -> state, for 2PC records held here (role DEBIT)
    debit_records: dict[str, int] = field(default_factory=dict)
    # transfer id -> (state, currency, amount) of credit legs here
    credit_legs: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # Slot moves: slots holding copies not yet this shard's (staged), and
    # (currency, balance) of each customer account, so that an account on two
    # shards mid-move is counted once in the books.
    staged: set[int] = field(default_factory=set)
    fenced: set[int] = field(default_factory=set)
    customer_balances: dict[int, tuple[str, int]] = field(default_factory=dict)


def _walk_journal(
    store: Store, report: ShardReport
) -> tuple[dict[int, Replayed], dict[tuple[int, str], int]]:
    """Recompute the chain and replay postings; (accounts, last state per leg)."""
    replay = JournalReplay(report.name)
    for key, value in store.scan(keys.JOURNAL):
        seq = keys.read_u64(key[len(keys.JOURNAL) :]) if len(key) == len(keys.JOURNAL) + 8 else -1
        if seq != replay.journal_seq + 1:
            raise Corrupt(
                report.name,
                f"key {key.hex()}",
                f"journal seq {replay.journal_seq + 1} expected here (entry missing?)",
            )
        if len(value) < journal.HASH_BYTES:
            raise Corrupt(report.name, journal_where(seq), "value shorter than its hash")
        replay.feed(seq, *journal.decode(value))
    report.journal_seq, report.head_hash = replay.journal_seq, replay.head_hash
    return replay.accounts, replay.states


def _check_accounts(store: Store, replayed: dict[int, Replayed], report: ShardReport) -> None:
    shard = report.name
    seen: set[int] = set()
    for key, value in store.scan(keys.ACCOUNT):
        where = f"account key {key.hex()}"
        try:
            account = types_pb2.Account.FromString(value)
        except DecodeError:
            raise Corrupt(shard, where, "account record does not parse") from None
        if key != keys.account_key(account.id):
            raise Corrupt(shard, where, f"holds account {account.id}")
        mismatch = account_mismatch(account, replayed)
        if mismatch is not None:
            raise Corrupt(shard, f"account {account.id}", mismatch)
        seen.add(account.id)
        if account.type != types_pb2.ACCOUNT_TYPE_SYSTEM:
            report.customer_balances[account.id] = (account.currency, account.balance)
        else:
            report.balances[account.currency] += account.balance
    missing = sorted(set(replayed) - seen)
    if missing:
        raise Corrupt(shard, f"account {missing[0]}", "opened in the journal but its record is missing")
    report.accounts = len(seen)


def _check_records(store: Store, states: dict[tuple[int, str], int], report: ShardReport) -> None:
    """Every transfer record and leg agrees with the journal's last word on it."""
    shard = report.name
    seen: set[tuple[int, str]] = set()
    prepared: set[tuple[int, str]] = set()
    for prefix in (keys.TRANSFER, keys.LEG):
        for key, value in store.scan(prefix):
            where = f"{prefix.decode()} key {key.hex()}"
            try:
                record = ledger_pb2.Leg.FromString(value)
            except DecodeError:
                raise Corrupt(shard, where, "record does not parse") from None
            transfer_id = keys.transfer_id_of(key)
            if record.transfer.id != transfer_id:
                raise Corrupt(shard, where, f"holds transfer {record.transfer.id!r}")
            role = record.role
            if (prefix == keys.LEG) != (role == CREDIT):
                raise Corrupt(shard, where, f"record of role {role} under this prefix")
            journaled = states.get((role, transfer_id))
            if journaled is None:
                raise Corrupt(shard, where, f"transfer {transfer_id} is not in the journal")
            if journaled != record.state:
                raise Corrupt(shard, where, f"state {record.state} but the journal says {journaled}")
            seen.add((role, transfer_id))
            if record.state == PREPARED:
                prepared.add((role, transfer_id))
            if slot_data.in_slots(slot_data.record_account(record), report.staged):
                continue  # a staged copy: the source's original is what counts
            if prefix == keys.TRANSFER:
                report.records += 1
                if role == DEBIT:
                    report.debit_records[transfer_id] = record.state
            else:
                report.legs += 1
                report.credit_legs[transfer_id] = (
                    record.state,
                    record.transfer.currency,
                    record.transfer.amount,
                )
    missing = sorted(set(states) - seen)
    if missing:
        raise Corrupt(shard, f"transfer {missing[0][1]}", "in the journal but its record is missing")
    indexed = {(key[len(keys.IN_DOUBT)], keys.transfer_id_of(key)) for key, _ in store.scan(keys.IN_DOUBT)}
    if indexed != prepared:
        odd = sorted(indexed ^ prepared)[0]
        raise Corrupt(shard, f"in-doubt index, transfer {odd[1]}", "index and PREPARED records disagree")


def verify_shard(path: Path, name: str) -> ShardReport:
    """Check one stopped shard DB; raises Corrupt naming the first problem."""
    report = ShardReport(name=name)
    store = Store(str(path), read_only=True)
    try:
        report.staged = slot_data.decode_slots(store.get(keys.META_STAGED))
        report.fenced = slot_data.decode_slots(store.get(keys.META_FENCED))
        replayed, states = _walk_journal(store, report)
        _check_accounts(store, replayed, report)
        _check_records(store, states, report)
    finally:
        store.close()
    return report


def check_books(reports: list[ShardReport]) -> dict[str, int]:
    """Per currency: sum of balances + amounts in flight; must be 0 everywhere."""
    customers: dict[str, int] = defaultdict(int)
    for currency, balance in _customer_balances(reports).values():
        customers[currency] += balance
    books = [ShardBooks(r.name, r.balances, r.debit_records, r.credit_legs) for r in reports]
    books.append(ShardBooks("customer accounts", customers, {}, {}))
    totals, problems = trial_balance(books)
    if problems:
        raise problems[0]
    return totals


def _customer_balances(reports: list[ShardReport]) -> dict[int, tuple[str, int]]:
    """Each customer account once. Mid-move an account is on two shards: a
    staged copy (target, before the flip) is never counted; a fenced one
    (source) only while the target's copy is still staged. Two copies that
    both count are corruption."""
    chosen: dict[int, tuple[str, int]] = {}
    fenced: dict[int, tuple[str, int]] = {}
    for report in reports:
        for account_id, value in report.customer_balances.items():
            if slot_data.in_slots(account_id, report.staged):
                continue
            if slot_data.in_slots(account_id, report.fenced):
                fenced[account_id] = value
                continue
            if account_id in chosen:
                raise Corrupt(report.name, f"account {account_id}", "counted on two shards")
            chosen[account_id] = value
    return {**fenced, **chosen}


def find_shards(data_dir: Path) -> list[tuple[str, Path]]:
    """DIR itself when it is a RocksDB, else its shard-* subdirectories in index order."""
    if (data_dir / "CURRENT").is_file():
        return [(data_dir.name, data_dir)]
    found = [p for p in data_dir.glob("shard-*") if (p / "CURRENT").is_file()]

    def index(path: Path) -> tuple[int, str]:
        suffix = path.name.rpartition("-")[2]
        return (int(suffix) if suffix.isdigit() else 1 << 30, path.name)

    return [(p.name, p) for p in sorted(found, key=index)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shardbank verify", description="Verify stopped shards offline.")
    parser.add_argument("--data-dir", required=True, help="cluster data dir (with shard-*/) or one shard DB")
    args = parser.parse_args(argv)
    shards = find_shards(Path(args.data_dir))
    if not shards:
        print(f"verify: no shard databases under {args.data_dir}", file=sys.stderr)
        return 2
    reports: list[ShardReport] = []
    try:
        for name, path in shards:
            report = verify_shard(path, name)
            reports.append(report)
            print(
                f"{name}: ok  journal 1..{report.journal_seq} head {report.head_hash.hex()[:16]}  "
                f"accounts {report.accounts}  records {report.records}  credit legs {report.legs}"
            )
        cross_shard = any(r.debit_records or r.credit_legs for r in reports)
        if len(reports) == 1 and cross_shard:
            print("books: skipped (one shard with cross-shard transfers: verify the cluster dir)")
        else:
            totals = check_books(reports)
            for currency, total in sorted(totals.items()):
                if total != 0:
                    raise Corrupt("cluster", f"books {currency}", f"balances sum to {total}, not 0")
                print(f"books: {currency} sums to 0")
    except Corrupt as problem:
        print(f"verify: FAILED  {problem.shard}  {problem.where}: {problem.what}")
        return 1
    print(f"verify: OK ({len(reports)} shard{'s' if len(reports) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
