"""The journal's hash chain: per-shard seq from 1, hash_n = sha256(hash_{n-1} || entry_n)."""

from __future__ import annotations

import hashlib

from ledger_node import journal, keys
from ledger_node.testing import MemoryLedger, account, deposit, move
from shardbank.v1 import types_pb2


def test_chain_hash_is_sha256_of_previous_and_entry() -> None:
    value, head = journal.encode(journal.GENESIS_HASH, b"entry")
    assert head == hashlib.sha256(bytes(32) + b"entry").digest()
    assert journal.decode(value) == (head, b"entry")


def test_every_applied_change_appends_one_chained_entry() -> None:
    node = MemoryLedger()
    a, b = account(), account()
    node.open(a, b)
    node.transfers(deposit(a.id, 500), move(a.id, b.id, 200), move(a.id, b.id, 10**6))
    entries = sorted((k, v) for k, v in node.kv.items() if k.startswith(keys.JOURNAL))
    kinds = []
    previous = journal.GENESIS_HASH
    for expected_seq, (key, value) in enumerate(entries, start=1):
        assert key == keys.journal_key(expected_seq)
        stored_hash, entry_bytes = journal.decode(value)
        assert stored_hash == journal.chain_hash(previous, entry_bytes)
        entry = types_pb2.JournalEntry.FromString(entry_bytes)
        assert entry.seq == expected_seq
        kinds.append(entry.kind)
        previous = stored_hash
    assert kinds == [
        types_pb2.JOURNAL_KIND_ACCOUNT_OPENED,  # a
        types_pb2.JOURNAL_KIND_ACCOUNT_OPENED,  # b
        types_pb2.JOURNAL_KIND_ACCOUNT_OPENED,  # the CNY cash account, on first deposit
        types_pb2.JOURNAL_KIND_TRANSFER_POSTED,
        types_pb2.JOURNAL_KIND_TRANSFER_POSTED,
        types_pb2.JOURNAL_KIND_TRANSFER_REFUSED,
    ]
    assert (node.ledger.journal_seq, node.ledger.journal_hash) == (len(entries), previous)


def test_changing_one_byte_breaks_the_chain() -> None:
    node = MemoryLedger()
    a = account()
    node.open(a)
    node.transfers(deposit(a.id, 500))
    value = node.kv[keys.journal_key(3)]
    stored_hash, entry_bytes = journal.decode(value)
    previous = journal.decode(node.kv[keys.journal_key(2)])[0]
    tampered = entry_bytes.replace(b"\xf4\x03", b"\xf5\x03")  # amount 500 -> 501 (varint)
    assert tampered != entry_bytes
    assert journal.chain_hash(previous, tampered) != stored_hash
