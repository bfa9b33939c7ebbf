"""The journal's hash chain.

Each applied entry is stored as `hash_n || entry_bytes_n` with
`hash_n = SHA-256(hash_{n-1} || entry_bytes_n)` and hash_0 = 32 zero bytes,
so changing, removing or reordering any stored entry breaks every later hash.
The bytes hashed are the bytes stored: verification never re-serializes.
"""

from __future__ import annotations

import hashlib

HASH_BYTES = 32
GENESIS_HASH = bytes(HASH_BYTES)


def chain_hash(previous_hash: bytes, entry_bytes: bytes) -> bytes:
    if len(previous_hash) != HASH_BYTES:
        raise ValueError(f"previous hash must be {HASH_BYTES} bytes")
    return hashlib.sha256(previous_hash + entry_bytes).digest()


def encode(previous_hash: bytes, entry_bytes: bytes) -> tuple[bytes, bytes]:
    """(stored value, new head hash) for the entry that follows previous_hash."""
    head = chain_hash(previous_hash, entry_bytes)
    return head + entry_bytes, head


def decode(value: bytes) -> tuple[bytes, bytes]:
    """(stored hash, entry bytes) of a stored journal value."""
    if len(value) < HASH_BYTES:
        raise ValueError(f"journal value shorter than its {HASH_BYTES}-byte hash")
    return value[:HASH_BYTES], value[HASH_BYTES:]
