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

_U64 = 1 << 64
_SMALL = [bytes([n]) for n in range(0x80)]
_FOURTEEN_BITS = 1 << 14
_LOW14 = _FOURTEEN_BITS - 1
# Two varint bytes of a 14-bit group, both with the continuation bit set.
_CONTINUED_PAIR = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(_FOURTEEN_BITS)]
# The last one or two bytes of a varint: the final group(s) of 0..2**14-1.
_LAST14 = [*_SMALL, *(bytes(((n & 0x7F) | 0x80, n >> 7)) for n in range(0x80, _FOURTEEN_BITS))]
# A negative amount -a with 0 < a <= 2**42 is 2**64 - a: its low 42 bits are
# 2**42 - a (three 14-bit groups) and bits 42..63 are all ones.
_NEGATIVE_BITS = 42
_NEGATIVE_TAIL = b"\xff\xff\xff\x01"
_FIXED64 = struct.Struct("<Q")

# Tags: (field_number << 3) | wire_type; 0 varint, 1 fixed64, 2 length-delimited.
_LEN = 2
_VARINT = 0
_I64 = 1


def _tag(field_number: int, wire_type: int) -> bytes:
    """A field's key; two bytes from field number 16 on."""
    return varint((field_number << 3) | wire_type)


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes).

    Fourteen bits per table lookup and no loop: a millisecond timestamp is
    three lookups, and a negative amount (every debit posting and history
    entry) three lookups and a constant tail instead of arithmetic on a
    65-bit integer."""
    if value >= 0:
        if value < 0x80:
            return _SMALL[value]
        if value < _FOURTEEN_BITS:
            return _LAST14[value]
    elif value >= -(1 << _NEGATIVE_BITS):
        low = (1 << _NEGATIVE_BITS) + value
        return b"".join(
            (
                _CONTINUED_PAIR[low & _LOW14],
                _CONTINUED_PAIR[(low >> 14) & _LOW14],
                _CONTINUED_PAIR[low >> 28],
                _NEGATIVE_TAIL,
            )
        )
    else:
        value += _U64
    if value < 1 << 28:
        return _CONTINUED_PAIR[value & _LOW14] + _LAST14[value >> 14]
    if value < 1 << 42:
        return b"".join(
            (_CONTINUED_PAIR[value & _LOW14], _CONTINUED_PAIR[(value >> 14) & _LOW14], _LAST14[value >> 28])
        )
    parts = [_CONTINUED_PAIR[value & _LOW14], _CONTINUED_PAIR[(value >> 14) & _LOW14]]
    parts.append(_CONTINUED_PAIR[(value >> 28) & _LOW14])
    if value < 1 << 56:
        parts.append(_LAST14[value >> 42])
    else:
        parts += (_CONTINUED_PAIR[(value >> 42) & _LOW14], _LAST14[value >> 56])
    return b"".join(parts)


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


_LEG_CODE = _tag(5, _VARINT)
_LEG_REASON = _tag(6, _LEN)


def leg_outcome(code: int, reason: str) -> bytes:
    """Fields 5-6 of a Leg (an answer's code and reason, never stored), to
    append to a stored leg's bytes: a parser takes fields in any order."""
    out = _LEG_CODE + varint(code) if code else b""
    return out + _text_field(_LEG_REASON, reason) if reason else out


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


def account_parts(
    head: bytes, status: int, overdraft_limit: int, created_at_unix_ms: int
) -> tuple[bytes, bytes, bytes]:
    """The pieces of a stored account that change rarely, encoded once:
    (fields 1-5 (`head` and the status), field 8 (the overdraft limit),
    field 11 (the creation time)). Only the money fields and the update time
    are encoded per write (`account_from_parts`)."""
    return (
        head + _ACCOUNT_STATUS + varint(status) if status else head,
        _ACCOUNT_OVERDRAFT + varint(overdraft_limit) if overdraft_limit else b"",
        _ACCOUNT_CREATED + varint(created_at_unix_ms) if created_at_unix_ms else b"",
    )


def account_from_parts(
    before_balance: bytes,
    overdraft: bytes,
    created: bytes,
    balance: int,
    held: int,
    pending_credit: int,
    updated_at_unix_ms: int,
    status_history: list[bytes],
) -> bytes:
    """A stored account record (no `available`), from its `account_parts`."""
    out = [before_balance]
    if balance:
        out += (_ACCOUNT_BALANCE, varint(balance))
    if held:
        out += (_ACCOUNT_HELD, varint(held))
    out.append(overdraft)
    if pending_credit:
        out += (_ACCOUNT_PENDING, varint(pending_credit))
    out.append(created)
    if updated_at_unix_ms:
        out += (_ACCOUNT_UPDATED, timestamp(updated_at_unix_ms))
    for change in status_history:
        out += (_ACCOUNT_STATUS_CHANGE, varint(len(change)), change)
    return b"".join(out)


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
    before_balance, overdraft, created = account_parts(head, status, overdraft_limit, created_at_unix_ms)
    return account_from_parts(
        before_balance, overdraft, created, balance, held, pending_credit, updated_at_unix_ms, status_history
    )


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


# Transfer (types.proto): id 1, kind 2, debit_account_id 3 (fixed64),
# credit_account_id 4 (fixed64), amount 5, currency 6, memo 7, reference 8,
# status 9, code 10, reason 11, message 12, created 13, updated 14,
# cross_shard 15, risk 16, review_deadline 17.
_TRANSFER_ID = _tag(1, _LEN)
_TRANSFER_KIND = _tag(2, _VARINT)
_TRANSFER_DEBIT = _tag(3, _I64)
_TRANSFER_CREDIT = _tag(4, _I64)
_TRANSFER_ACCOUNTS = struct.Struct("<BQBQ")  # both account fields in one pack
_TRANSFER_AMOUNT = _tag(5, _VARINT)
_TRANSFER_CURRENCY = _tag(6, _LEN)
_TRANSFER_MEMO = _tag(7, _LEN)
_TRANSFER_REFERENCE = _tag(8, _LEN)
_TRANSFER_STATUS = _tag(9, _VARINT)
_TRANSFER_CODE = _tag(10, _VARINT)
_TRANSFER_REASON = _tag(11, _LEN)
_TRANSFER_MESSAGE = _tag(12, _LEN)
_TRANSFER_CREATED = _tag(13, _VARINT)
_TRANSFER_UPDATED = _tag(14, _VARINT)
_TRANSFER_CROSS_SHARD = _tag(15, _VARINT) + b"\x01"
_TRANSFER_RISK = _tag(16, _LEN)
_TRANSFER_REVIEW_DEADLINE = _tag(17, _VARINT)
# The currency field per code: a transfer reaching the builder has a known
# currency, so this stays as small as the currency table.
_currency_fields: dict[str, bytes] = {}


def _text_field(tag: bytes, text: str) -> bytes:
    data = text.encode()
    return tag + varint(len(data)) + data


def transfer(
    transfer_id: str,
    kind: int,
    debit_account_id: int,
    credit_account_id: int,
    amount: int,
    currency: str,
    memo: str,
    reference: str,
    status: int,
    code: int,
    reason: str,
    message: str,
    at_unix_ms: int,
    cross_shard: bool = False,
    risk_bytes: bytes | None = None,
    review_deadline_unix_ms: int = 0,
) -> bytes:
    """A Transfer whose created and updated times are both `at_unix_ms`
    (0: neither), e.g. a body as a node first records or refuses it."""
    encoded_id = transfer_id.encode()
    parts = [_TRANSFER_ID, varint(len(encoded_id)), encoded_id] if encoded_id else []
    if kind:
        parts += (_TRANSFER_KIND, varint(kind))
    if debit_account_id and credit_account_id:
        parts.append(
            _TRANSFER_ACCOUNTS.pack(
                _TRANSFER_DEBIT[0], debit_account_id, _TRANSFER_CREDIT[0], credit_account_id
            )
        )
    elif debit_account_id:
        parts += (_TRANSFER_DEBIT, _FIXED64.pack(debit_account_id))
    elif credit_account_id:
        parts += (_TRANSFER_CREDIT, _FIXED64.pack(credit_account_id))
    if amount:
        parts += (_TRANSFER_AMOUNT, varint(amount))
    if currency:
        field = _currency_fields.get(currency)
        if field is None:
            field = _text_field(_TRANSFER_CURRENCY, currency)
            if len(_currency_fields) < _CURRENCY_FIELDS_MAX:
                _currency_fields[currency] = field
        parts.append(field)
    if memo:
        parts.append(_text_field(_TRANSFER_MEMO, memo))
    if reference:
        parts.append(_text_field(_TRANSFER_REFERENCE, reference))
    if status:
        parts += (_TRANSFER_STATUS, varint(status))
    if code:
        parts += (_TRANSFER_CODE, varint(code))
    if reason:
        parts.append(_text_field(_TRANSFER_REASON, reason))
    if message:
        parts.append(_text_field(_TRANSFER_MESSAGE, message))
    if at_unix_ms:
        at = timestamp(at_unix_ms)
        parts += (_TRANSFER_CREATED, at, _TRANSFER_UPDATED, at)
    if cross_shard:
        parts.append(_TRANSFER_CROSS_SHARD)
    if risk_bytes is not None:
        parts += (_TRANSFER_RISK, varint(len(risk_bytes)), risk_bytes)
    if review_deadline_unix_ms:
        parts += (_TRANSFER_REVIEW_DEADLINE, varint(review_deadline_unix_ms))
    return b"".join(parts)


# Bound on the currency cache above (there are far fewer currencies).
_CURRENCY_FIELDS_MAX = 1024
# Field 1 of TransfersResponse and LegsResponse: the repeated answers.
_ANSWERS = _tag(1, _LEN)


def answers(items: list[bytes]) -> bytes:
    """A response whose field 1 repeats `items` (TransfersResponse.transfers,
    LegsResponse.legs): parsing it builds every answer in C, where building
    the response from messages copied each one in Python."""
    parts: list[bytes] = []
    for item in items:
        parts += (_ANSWERS, varint(len(item)), item)
    return b"".join(parts)
