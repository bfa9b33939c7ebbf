"""Protobuf wire bytes of the records a node writes per transfer, built by
concatenation instead of through message objects.

The stored formats do not change: every function here returns exactly the
bytes `SerializeToString(deterministic=True)` of the equivalent message gives
(fields in field-number order, zero values left out), which
`tests/unit/test_records.py` checks against the generated code. What changes
is the cost: a transfer is serialized ONCE and its bytes are embedded in the
transfer record, the journal entry and both history entries, instead of four
message copies each serialized on its own.

Only the fields the hot path writes are covered; anything else (account
openings, status changes) still goes through the generated classes.
"""

from __future__ import annotations

import struct

from shardbank.v1 import types_pb2

_U64_MASK = (1 << 64) - 1
_SMALL = [bytes([n]) for n in range(0x80)]
_FOURTEEN_BITS = 1 << 14
# Two varint bytes of a 14-bit group, both with the continuation bit set.
_CONTINUED_PAIR = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(_FOURTEEN_BITS)]
_FIXED64 = struct.Struct("<Q")

# Tags: (field_number << 3) | wire_type; 0 varint, 1 fixed64, 2 length-delimited.
_LEN = 2
_VARINT = 0
_I64 = 1


def _tag(field_number: int, wire_type: int) -> bytes:
    return bytes([(field_number << 3) | wire_type])


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes).

    Fourteen bits per step through a table: a millisecond timestamp takes
    three steps instead of six byte-by-byte ones."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= _U64_MASK
    out = b""
    while value >= _FOURTEEN_BITS:
        out += _CONTINUED_PAIR[value & (_FOURTEEN_BITS - 1)]
        value >>= 14
    if value < 0x80:
        return out + _SMALL[value]
    return out + bytes(((value & 0x7F) | 0x80, value >> 7))


_last_timestamp: tuple[int, bytes] = (0, b"")


def timestamp(unix_ms: int) -> bytes:
    """`varint` of a millisecond time, remembering the last one: a drain
    stamps every record it writes with the same `now`."""
    global _last_timestamp
    if _last_timestamp[0] != unix_ms:
        _last_timestamp = (unix_ms, varint(unix_ms))
    return _last_timestamp[1]


def _field_bytes(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


# Leg (ledger.proto): transfer 1, role 2, state 3, epoch 4, code 5, reason 6, prepared_at 7.
_LEG_TRANSFER = _tag(1, _LEN)
_LEG_ROLE = _tag(2, _VARINT)
_LEG_STATE = _tag(3, _VARINT)
_LEG_EPOCH = _tag(4, _VARINT)
_LEG_PREPARED_AT = _tag(7, _VARINT)


def leg(transfer_bytes: bytes, role: int, state: int, epoch: int = 0, prepared_at_unix_ms: int = 0) -> bytes:
    """A stored transfer record / 2PC leg (code and reason are never stored)."""
    out = _field_bytes(_LEG_TRANSFER, transfer_bytes)
    if role:
        out += _LEG_ROLE + varint(role)
    if state:
        out += _LEG_STATE + varint(state)
    if epoch:
        out += _LEG_EPOCH + varint(epoch)
    if prepared_at_unix_ms:
        out += _LEG_PREPARED_AT + varint(prepared_at_unix_ms)
    return out


# Posting (types.proto): account_id 1 (fixed64), balance 2, held 3, pending_credit 4.
_POSTING_ACCOUNT = _tag(1, _I64)
_POSTING_BALANCE = _tag(2, _VARINT)
_POSTING_HELD = _tag(3, _VARINT)
_POSTING_PENDING = _tag(4, _VARINT)


def posting(
    account_id: int, balance_delta: int = 0, held_delta: int = 0, pending_credit_delta: int = 0
) -> bytes:
    out = _POSTING_ACCOUNT + _FIXED64.pack(account_id) if account_id else b""
    if balance_delta:
        out += _POSTING_BALANCE + varint(balance_delta)
    if held_delta:
        out += _POSTING_HELD + varint(held_delta)
    if pending_credit_delta:
        out += _POSTING_PENDING + varint(pending_credit_delta)
    return out


# JournalEntry (types.proto): seq 1, kind 2, at 3, transfer_id 4, postings 5,
# account 6, account_id 7, status_change 8, epoch 9, role 10, transfer 11.
_ENTRY_SEQ = _tag(1, _VARINT)
_ENTRY_KIND = _tag(2, _VARINT)
_ENTRY_AT = _tag(3, _VARINT)
_ENTRY_TRANSFER_ID = _tag(4, _LEN)
_ENTRY_POSTING = _tag(5, _LEN)
_ENTRY_EPOCH = _tag(9, _VARINT)
_ENTRY_ROLE = _tag(10, _VARINT)
_ENTRY_TRANSFER = _tag(11, _LEN)


def transfer_entry(
    seq: int,
    kind: types_pb2.JournalKind.ValueType,
    at_unix_ms: int,
    transfer_id: str,
    postings: list[bytes],
    transfer_bytes: bytes,
    epoch: int = 0,
    role: int = 0,
) -> bytes:
    """A journal entry about one transfer or leg (no account, no status change)."""
    parts = [_ENTRY_SEQ, varint(seq)]
    if kind:
        parts += (_ENTRY_KIND, varint(kind))
    if at_unix_ms:
        parts += (_ENTRY_AT, timestamp(at_unix_ms))
    if transfer_id:
        encoded_id = transfer_id.encode()
        parts += (_ENTRY_TRANSFER_ID, varint(len(encoded_id)), encoded_id)
    for one in postings:
        parts += (_ENTRY_POSTING, varint(len(one)), one)
    if epoch:
        parts += (_ENTRY_EPOCH, varint(epoch))
    if role:
        parts += (_ENTRY_ROLE, varint(role))
    parts += (_ENTRY_TRANSFER, varint(len(transfer_bytes)), transfer_bytes)
    return b"".join(parts)


# HistoryEntry (types.proto): transfer 1, balance_delta 2, balance_after 3, journal_seq 4.
_HISTORY_TRANSFER = _tag(1, _LEN)
_HISTORY_DELTA = _tag(2, _VARINT)
_HISTORY_AFTER = _tag(3, _VARINT)
_HISTORY_SEQ = _tag(4, _VARINT)


def history(transfer_bytes: bytes, balance_delta: int, balance_after: int, journal_seq: int) -> bytes:
    out = _field_bytes(_HISTORY_TRANSFER, transfer_bytes)
    if balance_delta:
        out += _HISTORY_DELTA + varint(balance_delta)
    if balance_after:
        out += _HISTORY_AFTER + varint(balance_after)
    if journal_seq:
        out += _HISTORY_SEQ + varint(journal_seq)
    return out


# Account (types.proto): id 1 (fixed64), currency 2, type 3, holder 4, status 5,
# balance 6, held 7, overdraft_limit 8, available 9 (never stored),
# pending_credit 10, created 11, updated 12, status_history 13.
_ACCOUNT_ID = _tag(1, _I64)
_ACCOUNT_CURRENCY = _tag(2, _LEN)
_ACCOUNT_TYPE = _tag(3, _VARINT)
_ACCOUNT_HOLDER = _tag(4, _LEN)
_ACCOUNT_STATUS = _tag(5, _VARINT)
_ACCOUNT_BALANCE = _tag(6, _VARINT)
_ACCOUNT_HELD = _tag(7, _VARINT)
_ACCOUNT_OVERDRAFT = _tag(8, _VARINT)
_ACCOUNT_PENDING = _tag(10, _VARINT)
_ACCOUNT_CREATED = _tag(11, _VARINT)
_ACCOUNT_UPDATED = _tag(12, _VARINT)
_ACCOUNT_STATUS_CHANGE = _tag(13, _LEN)


def account_head(account_id: int, currency: str, account_type: int, holder_bytes: bytes) -> bytes:
    """Fields 1-4 of a stored account: fixed for the account's life unless
    its holder changes, so the state machine caches them. The holder is always
    present (the record is built with a Holder, empty for cash accounts)."""
    out = _ACCOUNT_ID + _FIXED64.pack(account_id) if account_id else b""
    if currency:
        out += _field_bytes(_ACCOUNT_CURRENCY, currency.encode())
    if account_type:
        out += _ACCOUNT_TYPE + varint(account_type)
    return out + _field_bytes(_ACCOUNT_HOLDER, holder_bytes)


def account(
    head: bytes,
    status: int,
    balance: int,
    held: int,
    overdraft_limit: int,
    pending_credit: int,
    created_at_unix_ms: int,
    updated_at_unix_ms: int,
    status_history: list[bytes],
) -> bytes:
    """A stored account record (no `available`) after its `account_head`."""
    parts = [head]
    if status:
        parts += (_ACCOUNT_STATUS, varint(status))
    if balance:
        parts += (_ACCOUNT_BALANCE, varint(balance))
    if held:
        parts += (_ACCOUNT_HELD, varint(held))
    if overdraft_limit:
        parts += (_ACCOUNT_OVERDRAFT, varint(overdraft_limit))
    if pending_credit:
        parts += (_ACCOUNT_PENDING, varint(pending_credit))
    if created_at_unix_ms:
        parts += (_ACCOUNT_CREATED, varint(created_at_unix_ms))
    if updated_at_unix_ms:
        parts += (_ACCOUNT_UPDATED, timestamp(updated_at_unix_ms))
    for change in status_history:
        parts += (_ACCOUNT_STATUS_CHANGE, varint(len(change)), change)
    return b"".join(parts)


def posted_transfer(
    seq: int,
    at_unix_ms: int,
    transfer_id: str,
    transfer_bytes: bytes,
    amount: int,
    debit_id: int,
    debit_balance_after: int,
    credit_id: int,
    credit_balance_after: int,
) -> tuple[bytes, bytes, bytes]:
    """(journal entry, debit history, credit history) of a posted single-shard
    transfer: what `transfer_entry`, `posting` and `history` give, with each
    shared piece (the body, seq, the amount either way) encoded once."""
    seq_bytes, minus, plus = varint(seq), varint(-amount), varint(amount)
    encoded_id = transfer_id.encode()
    debit_posting = _POSTING_ACCOUNT + _FIXED64.pack(debit_id) + _POSTING_BALANCE + minus
    credit_posting = _POSTING_ACCOUNT + _FIXED64.pack(credit_id) + _POSTING_BALANCE + plus
    body_length = varint(len(transfer_bytes))
    entry = b"".join(
        (
            _ENTRY_SEQ,
            seq_bytes,
            _ENTRY_KIND,
            _SMALL[types_pb2.JOURNAL_KIND_TRANSFER_POSTED],
            _ENTRY_AT,
            timestamp(at_unix_ms),
            _ENTRY_TRANSFER_ID,
            varint(len(encoded_id)),
            encoded_id,
            _ENTRY_POSTING,
            varint(len(debit_posting)),
            debit_posting,
            _ENTRY_POSTING,
            varint(len(credit_posting)),
            credit_posting,
            _ENTRY_TRANSFER,
            body_length,
            transfer_bytes,
        )
    )
    body = _HISTORY_TRANSFER + body_length + transfer_bytes
    tail = _HISTORY_SEQ + seq_bytes
    debit = b"".join((body, _HISTORY_DELTA, minus, _balance_after(debit_balance_after), tail))
    credit = b"".join((body, _HISTORY_DELTA, plus, _balance_after(credit_balance_after), tail))
    return entry, debit, credit


def _balance_after(balance: int) -> bytes:
    return _HISTORY_AFTER + varint(balance) if balance else b""
