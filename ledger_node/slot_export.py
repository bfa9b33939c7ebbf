"""Reads for slot moves (docs/moves.md): export pages, digests, release scans.

Each function runs start to finish without an await, so it sees one state:
the writer applies a drain and writes it in one synchronous step on the same
event loop, so memory and RocksDB agree whenever this code runs.

Full copy walks the keys `a/`, `h/`, `l/`, `t/` in byte order from a cursor
(the last key it looked at), keeping those in the slots. Catch-up walks the
journal after a seq and re-exports the current value of everything those
entries touched in the slots, plus the history entries they wrote: history
goes only once (copy: up to the copy's start seq; catch-up: after it), which
is what keeps the imported history free of duplicates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from ledger_node import journal, keys, slot_data
from ledger_node.slot_data import ReleasePlan
from ledger_node.state import Ledger
from ledger_node.store import Store
from ledger_node.writer import wall_clock_ms
from shardbank import limits
from shardbank.v1 import ledger_pb2, types_pb2

# Items per export page when the caller gives no limit: a page of accounts
# with holders, records and history stays far below MESSAGE_BYTES_MAX.
PAGE_ITEMS_DEFAULT = 1000
PAGE_ITEMS_MAX = 4000
# Keys one full-copy page may look at before it returns (even with few items
# kept): bounds the time the event loop is held by one page.
SCAN_KEYS_MAX = 20_000
# Release: accounts + records dropped per call.
RELEASE_ITEMS_DEFAULT = 1000
_COPY_PREFIXES = (keys.ACCOUNT, keys.HISTORY, keys.LEG, keys.TRANSFER)
_RECORD_KINDS = frozenset(
    {
        types_pb2.JOURNAL_KIND_TRANSFER_POSTED,
        types_pb2.JOURNAL_KIND_TRANSFER_REFUSED,
        types_pb2.JOURNAL_KIND_LEG_PREPARED,
        types_pb2.JOURNAL_KIND_LEG_COMMITTED,
        types_pb2.JOURNAL_KIND_LEG_ABORTED,
        types_pb2.JOURNAL_KIND_RECORD_IMPORTED,
    }
)


def page_limit(requested: int) -> int:
    return min(requested or PAGE_ITEMS_DEFAULT, PAGE_ITEMS_MAX)


def _history_seq(key: bytes) -> tuple[int, int]:
    body = key[len(keys.HISTORY) :]
    return keys.read_u64(body[:8]), keys.read_u64(body[8:16])


def _record_in(value: bytes, slots: set[int]) -> ledger_pb2.Leg | None:
    record = ledger_pb2.Leg.FromString(value)
    return record if slot_data.in_slots(slot_data.record_account(record), slots) else None


def _keys_from(store: Store, cursor: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the copied prefixes, in byte order, after `cursor`."""
    for prefix in _COPY_PREFIXES:
        if cursor and keys.prefix_end(prefix) <= cursor:
            continue
        start = cursor + b"\x00" if cursor.startswith(prefix) else None
        yield from store.scan(prefix, start)


def full_page(
    store: Store, ledger: Ledger, slots: set[int], cursor: bytes, until_seq: int, limit: int
) -> ledger_pb2.ExportSlotsResponse:
    until = until_seq or ledger.journal_seq
    page = ledger_pb2.ExportSlotsResponse(watermark_seq=until, head_seq=ledger.journal_seq)
    kept = 0
    for looked, (key, value) in enumerate(_keys_from(store, cursor), start=1):
        if key.startswith(keys.ACCOUNT):
            account_id = keys.read_u64(key[len(keys.ACCOUNT) :])
            if slot_data.in_slots(account_id, slots):
                page.accounts.append(ledger.accounts[account_id].to_proto(with_available=False))
                kept += 1
        elif key.startswith(keys.HISTORY):
            account_id, seq = _history_seq(key)
            if seq <= until and slot_data.in_slots(account_id, slots):
                page.history.append(
                    ledger_pb2.MovedHistory(
                        account_id=account_id, entry=types_pb2.HistoryEntry.FromString(value)
                    )
                )
                kept += 1
        else:
            record = _record_in(value, slots)
            if record is not None:
                page.records.append(record)
                kept += 1
        if kept >= limit or looked >= SCAN_KEYS_MAX:
            page.next_cursor = key
            return page
    return page


def catch_up_page(
    store: Store, ledger: Ledger, slots: set[int], after_seq: int, limit: int
) -> ledger_pb2.ExportSlotsResponse:
    """What journal entries after_seq+1 .. after_seq+limit touched in the slots."""
    head = ledger.journal_seq
    upto = min(head, after_seq + limit)
    page = ledger_pb2.ExportSlotsResponse(watermark_seq=upto, head_seq=head)
    if upto <= after_seq:
        return page
    touched_accounts: set[int] = set()
    touched_records: set[bytes] = set()
    for key, value in store.scan(keys.JOURNAL, keys.journal_key(after_seq + 1)):
        if keys.read_u64(key[len(keys.JOURNAL) :]) > upto:
            break
        entry = types_pb2.JournalEntry.FromString(journal.decode(value)[1])
        for account_id in (entry.account.id, entry.account_id, *(p.account_id for p in entry.postings)):
            if account_id and slot_data.in_slots(account_id, slots):
                touched_accounts.add(account_id)
        if entry.kind in _RECORD_KINDS and entry.transfer.id:
            credit = entry.role == types_pb2.LEG_ROLE_CREDIT
            touched_records.add(
                keys.leg_key(entry.transfer.id) if credit else keys.transfer_key(entry.transfer.id)
            )
    for account_id in sorted(touched_accounts):
        account = ledger.accounts.get(account_id)
        if account is not None:
            page.accounts.append(account.to_proto(with_available=False))
        start = keys.history_key(account_id, after_seq + 1)
        for key, value in store.scan(keys.HISTORY + keys.u64(account_id), start):
            if _history_seq(key)[1] > upto:
                break
            page.history.append(
                ledger_pb2.MovedHistory(account_id=account_id, entry=types_pb2.HistoryEntry.FromString(value))
            )
    for key in sorted(touched_records):
        stored = store.get(key)
        record = None if stored is None else _record_in(stored, slots)
        if record is not None:
            page.records.append(record)
    return page


def digest(store: Store, ledger: Ledger, slots: set[int]) -> ledger_pb2.SlotsDigest:
    """Counts, balances and one SHA-256 over the slots' accounts and records,
    in key order, from re-serialized messages (so source bytes and imported
    bytes compare by content)."""
    hasher = hashlib.sha256()
    result = ledger_pb2.SlotsDigest(
        journal_seq=ledger.journal_seq, in_doubt_legs=ledger.in_doubt_in(slots, wall_clock_ms())
    )
    for account_id in sorted(a for a in ledger.accounts if slot_data.in_slots(a, slots)):
        account = ledger.accounts[account_id]
        hasher.update(keys.account_key(account_id) + account.record_bytes())
        result.accounts += 1
        result.balances[account.currency] = result.balances[account.currency] + account.balance
        result.history += sum(1 for _ in store.scan(keys.HISTORY + keys.u64(account_id)))
    for prefix in (keys.LEG, keys.TRANSFER):
        for key, value in store.scan(prefix):
            record = _record_in(value, slots)
            if record is not None:
                hasher.update(key + record.SerializeToString(deterministic=True))
                result.records += 1
    result.digest = hasher.digest()
    return result


def release_plan(store: Store, ledger: Ledger, move_id: str, slots: set[int], limit: int) -> ReleasePlan:
    """Up to `limit` accounts (with their history) and records of the slots."""
    limit = min(limit or RELEASE_ITEMS_DEFAULT, limits.BATCH_ITEMS_MAX)
    plan = ReleasePlan(move_id=move_id, slots=set(slots))
    for account_id in sorted(a for a in ledger.accounts if slot_data.in_slots(a, slots)):
        if len(plan.accounts) >= limit:
            return plan
        plan.accounts.append(account_id)
        plan.history_keys.extend(key for key, _ in store.scan(keys.HISTORY + keys.u64(account_id)))
    for prefix in (keys.LEG, keys.TRANSFER):
        for key, value in store.scan(prefix):
            if _record_in(value, slots) is not None:
                if len(plan.accounts) + len(plan.record_keys) >= limit:
                    return plan
                plan.record_keys.append(key)
    plan.done = True
    return plan
