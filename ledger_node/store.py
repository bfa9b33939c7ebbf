"""One shard's RocksDB: raw byte keys and values (no pickling), one synced
WriteBatch per group commit, and the start-up load into memory.

Key layout: see `ledger_node.keys`. Values are protobuf bytes, fixed-width
big-endian integers, or `hash || entry` for the journal.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass

from rocksdict import AccessType, BlockBasedOptions, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from ledger_node import journal, keys, slot_data
from ledger_node.state import AccountState, InvariantViolation, Writes, check_account_invariants, invariant
from shardbank.v1 import ledger_pb2, types_pb2

# Writes of one group commit: bounded by the writer's drain size; a batch far
# above this means a bug upstream, not load.
WRITES_PER_BATCH_MAX = 1_000_000
# Bloom filters: every new transfer id is looked up (t/, l/) before it is
# recorded, and nearly all of those lookups miss. Without a filter a miss
# searches the memtable and every level (~5 us in Python terms); with one it
# is ~0.5 us. 10 bits per key: ~1% false positives, ~1.25 bytes per key.
BLOOM_BITS_PER_KEY = 10
# Share of the memtable spent on its own whole-key bloom filter.
MEMTABLE_BLOOM_RATIO = 0.1


_KEY = operator.itemgetter(0)


def _options() -> Options:
    options = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
    options.set_memtable_whole_key_filtering(True)
    return options


@dataclass
class Loaded:
    """What a node keeps in memory, read back from disk at start-up."""

    accounts: dict[int, AccountState]
    journal_seq: int
    journal_hash: bytes
    max_epoch: int
    in_doubt: dict[tuple[int, str], int]
    transfers_applied: int
    fenced: set[int]
    staged: set[int]
    checkpoint: ledger_pb2.ImportCheckpoint


class Store:
    """A shard's RocksDB. Not thread-safe by design: one writer owns it."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        options = _options()
        if read_only:
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no shard database at {path}")
            self._db = Rdict(path, options, access_type=AccessType.read_only())
        else:
            os.makedirs(path, exist_ok=True)
            options.create_if_missing(True)
            self._db = Rdict(path, options)
        self.path = path
        self._closed = False
        self._sync = WriteOptions()
        # Every acknowledged write must survive kill -9 and power loss: the
        # WAL is synced before write() returns.
        self._sync.sync = True

    def close(self) -> None:
        self._closed = True
        self._db.close()

    def property_int(self, name: str) -> int | None:
        """A RocksDB integer property (e.g. "rocksdb.estimate-num-keys"), for
        metrics; None if unknown or the DB is closed. Safe from another thread:
        RocksDB's GetProperty is."""
        if self._closed:
            return None
        value = self._db.property_int_value(name)
        return None if value is None else int(value)

    def get(self, key: bytes) -> bytes | None:
        value = self._db.get(key)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise InvariantViolation(f"non-bytes value under {key!r}")
        return value

    def write(self, writes: Writes) -> None:
        """All writes of one drain, atomically, WAL synced.

        Put in key order: RocksDB inserts each key into the memtable's skip
        list starting from where the previous insert landed, so a batch in
        order (a drain's keys are random: transfer ids, accounts) costs ~40%
        less in `db.write`: ~9.5 instead of ~15.5 us per transfer for ~6
        keys, for ~1 us of sorting (the order has no other effect: a batch
        is applied atomically and holds each key once)."""
        invariant(len(writes) <= WRITES_PER_BATCH_MAX, f"{len(writes)} writes in one batch")
        if not writes:
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in sorted(writes, key=_KEY):
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        self._db.write(batch, self._sync)

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for keys with `prefix`, ascending, from `start` on.

        RocksDB stops at the prefix's end (an upper bound on the read) and
        rocksdict's items iterator hands back each pair in one call, where
        valid()/key()/value()/next() took four: ~0.5 us a key instead of ~2,
        which is most of the scan at start-up (a key per account)."""
        bounded = ReadOptions()
        bounded.set_iterate_upper_bound(keys.prefix_end(prefix))
        for key, value in self._db.items(from_key=start if start is not None else prefix, read_opt=bounded):
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return  # only when `start` sorts before `prefix`
            yield key, value

    def scan_back(self, prefix: bytes, before: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) for keys with `prefix`, descending, strictly below `before`."""
        upper = before if before is not None else keys.prefix_end(prefix)
        iterator = self._db.iter()
        iterator.seek_for_prev(upper)  # lands on the last key <= upper
        while iterator.valid() and iterator.key() >= upper:
            iterator.prev()
        while iterator.valid():
            key = iterator.key()
            if not isinstance(key, bytes) or not key.startswith(prefix):
                return
            yield key, iterator.value()
            iterator.prev()

    def load(self) -> Loaded:
        """Read back what the node serves from memory, checking it as we go."""
        accounts = self._load_accounts()
        journal_seq, journal_hash = 0, journal.GENESIS_HASH
        for key, value in self.scan_back(keys.JOURNAL):
            journal_seq = keys.read_u64(key[len(keys.JOURNAL) :])
            journal_hash, entry_bytes = journal.decode(value)
            entry = types_pb2.JournalEntry.FromString(entry_bytes)
            invariant(entry.seq == journal_seq, f"journal head {journal_seq} holds entry seq {entry.seq}")
            invariant(
                journal.chain_hash(self._previous_hash(journal_seq), entry_bytes) == journal_hash, "head hash"
            )
            break
        in_doubt: dict[tuple[int, str], int] = {}
        for key, value in self.scan(keys.IN_DOUBT):
            role = key[len(keys.IN_DOUBT)]
            in_doubt[(role, keys.transfer_id_of(key))] = keys.read_u64(value)
        return Loaded(
            accounts=accounts,
            journal_seq=journal_seq,
            journal_hash=journal_hash,
            max_epoch=self._meta_u64(keys.META_EPOCH),
            in_doubt=in_doubt,
            transfers_applied=self._meta_u64(keys.META_APPLIED),
            fenced=slot_data.decode_slots(self.get(keys.META_FENCED)),
            staged=slot_data.decode_slots(self.get(keys.META_STAGED)),
            checkpoint=ledger_pb2.ImportCheckpoint.FromString(self.get(keys.META_IMPORT) or b""),
        )

    def _load_accounts(self) -> dict[int, AccountState]:
        """Every account, each checked as it is read: stored under its own id,
        and `check_account_invariants` holds. The loop is the start-up time of
        a big shard (1M accounts), so it keeps Python-level steps per account
        few (bound methods hoisted, no message text built for a check that
        passes). It leaves the garbage collector alone: the node process
        pauses it around its start-up and freezes what the load made
        (`ledger_node.__main__.start_up_collector`); a library call such as
        `verify`'s or a test's must not change process-wide GC state."""
        accounts: dict[int, AccountState] = {}
        parse = types_pb2.Account.FromString
        from_proto = AccountState.from_proto
        account_key = keys.account_key
        for key, value in self.scan(keys.ACCOUNT):
            account = from_proto(parse(value))
            if account_key(account.id) != key:
                raise InvariantViolation(f"account record under wrong key {key.hex()}")
            check_account_invariants(account)
            accounts[account.id] = account
        return accounts

    def _previous_hash(self, seq: int) -> bytes:
        if seq == 1:
            return journal.GENESIS_HASH
        value = self.get(keys.journal_key(seq - 1))
        if value is None:
            raise InvariantViolation(f"journal entry {seq - 1} is missing")
        return journal.decode(value)[0]

    def _meta_u64(self, key: bytes) -> int:
        value = self.get(key)
        return 0 if value is None else keys.read_u64(value)
