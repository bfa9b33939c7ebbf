"""RocksDB key layout of one shard, in one place.

Keys are compact and binary so that the natural byte order of RocksDB is the
order we iterate in: big-endian integers sort numerically, so `j/` walks the
journal by seq and `h/<account>` walks one account's history by seq.

    a/ + account id (8)                   Account proto (available not stored)
    t/ + transfer uuid (16)               Leg proto: a transfer record held here
                                          (single-shard, or 2PC debit = record holder)
    l/ + transfer uuid (16)               Leg proto: a 2PC credit leg
    p/ + role (1) + transfer uuid (16)    in doubt from, ms (8): in-doubt index
                                          (prepared_at; a review hold's deadline)
    j/ + seq (8)                          sha256 (32) || JournalEntry bytes
    h/ + account id (8) + seq (8)         HistoryEntry proto
    m/epoch                               highest coordinator epoch seen (8)
    m/applied                             transfers applied, for NodeInfo (8)
    m/fenced, m/staged                    slot sets of moves in progress (2 bytes a slot)
    m/import                              ImportCheckpoint of the move staged here
"""

from __future__ import annotations

import re
import struct
import uuid

ACCOUNT = b"a/"
TRANSFER = b"t/"
LEG = b"l/"
IN_DOUBT = b"p/"
JOURNAL = b"j/"
HISTORY = b"h/"
META_EPOCH = b"m/epoch"
META_APPLIED = b"m/applied"
# Slot moves: fenced and staged slots (2-byte big-endian each), the import checkpoint.
META_FENCED = b"m/fenced"
META_STAGED = b"m/staged"
META_IMPORT = b"m/import"

U64_BYTES = 8
# A slot-move export cursor is one key of ours: h/ keys are the longest (18).
CURSOR_BYTES_MAX = 64
UUID_BYTES = 16
_U64_PAIR = struct.Struct(">QQ")


def u64(value: int) -> bytes:
    return value.to_bytes(U64_BYTES, "big")


def read_u64(data: bytes) -> int:
    if len(data) != U64_BYTES:
        raise ValueError(f"expected {U64_BYTES} bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def account_key(account_id: int) -> bytes:
    return ACCOUNT + u64(account_id)


# A canonical transfer id (what `ids.normalize_transfer_id` returns).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def uuid_bytes(transfer_id: str) -> bytes:
    """The 16 bytes of a transfer id; a canonical id skips building a UUID."""
    if _CANONICAL_UUID.fullmatch(transfer_id):
        return bytes.fromhex(transfer_id.replace("-", ""))
    return uuid.UUID(transfer_id).bytes


def transfer_key(transfer_id: str) -> bytes:
    return TRANSFER + uuid_bytes(transfer_id)


def leg_key(transfer_id: str) -> bytes:
    return LEG + uuid_bytes(transfer_id)


# in_doubt_key runs twice per 2PC leg (prepare, settle): no bytes([role]) each time.
_IN_DOUBT_ROLE = {role: IN_DOUBT + bytes([role]) for role in range(256)}


def in_doubt_key(role: int, transfer_id: str) -> bytes:
    return _IN_DOUBT_ROLE[role] + uuid_bytes(transfer_id)


def journal_key(seq: int) -> bytes:
    return JOURNAL + u64(seq)


def history_key(account_id: int, seq: int) -> bytes:
    return HISTORY + _U64_PAIR.pack(account_id, seq)


def transfer_id_of(key: bytes) -> str:
    """The canonical transfer id at the end of a t/, l/ or p/ key."""
    return str(uuid.UUID(bytes=key[-UUID_BYTES:]))


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`. Trailing 0xff
    bytes carry (an account id whose low byte is 0xff is 1 in 256)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        raise ValueError("no key follows a prefix of only 0xff bytes")
    return trimmed[:-1] + bytes([trimmed[-1] + 1])
