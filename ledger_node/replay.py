"""Replaying a shard's journal: the chain check and the balances it implies.

Shared by the offline check of a stopped shard (`ledger_node.verify`, reading
RocksDB) and the online end-of-day report (`clients.reports`, reading pages of
`LedgerNode.ReadJournal`): both feed stored entries in seq order to a
`JournalReplay` and compare stored accounts with `account_mismatch`, so the
two can never disagree about what "the journal says" means.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ledger_node import journal
from shardbank.v1 import ledger_pb2, types_pb2

PREPARED = ledger_pb2.LEG_STATE_PREPARED
COMMITTED = ledger_pb2.LEG_STATE_COMMITTED
ABORTED = ledger_pb2.LEG_STATE_ABORTED
UNSPECIFIED_ROLE = types_pb2.LEG_ROLE_UNSPECIFIED

STATE_OF_KIND = {
    types_pb2.JOURNAL_KIND_TRANSFER_POSTED: COMMITTED,
    types_pb2.JOURNAL_KIND_TRANSFER_REFUSED: ABORTED,
    types_pb2.JOURNAL_KIND_LEG_PREPARED: PREPARED,
    types_pb2.JOURNAL_KIND_LEG_COMMITTED: COMMITTED,
    types_pb2.JOURNAL_KIND_LEG_ABORTED: ABORTED,
}
SINGLE_SHARD_KINDS = (types_pb2.JOURNAL_KIND_TRANSFER_POSTED, types_pb2.JOURNAL_KIND_TRANSFER_REFUSED)
# Slot moves (docs/moves.md): copies set an account's or record's state,
# releases drop it.
MOVE_KINDS = (
    types_pb2.JOURNAL_KIND_ACCOUNT_IMPORTED,
    types_pb2.JOURNAL_KIND_ACCOUNT_RELEASED,
    types_pb2.JOURNAL_KIND_RECORD_IMPORTED,
    types_pb2.JOURNAL_KIND_RECORD_RELEASED,
    types_pb2.JOURNAL_KIND_HISTORY_IMPORTED,
)


class Corrupt(Exception):
    """The first thing found wrong, with where it is."""

    def __init__(self, shard: str, where: str, what: str) -> None:
        super().__init__(f"{shard} {where}: {what}")
        self.shard, self.where, self.what = shard, where, what


@dataclass
class Replayed:
    """An account as the journal leaves it."""

    currency: str
    status: int = types_pb2.ACCOUNT_STATUS_ACTIVE
    balance: int = 0
    held: int = 0
    pending_credit: int = 0

    def fields(self) -> tuple[str, int, int, int, int]:
        return (self.currency, self.status, self.balance, self.held, self.pending_credit)


def journal_where(seq: int) -> str:
    return f"journal seq {seq} (key j/{seq:016x})"


class JournalReplay:
    """Feed stored entries in seq order; each is checked (seq, hash chain,
    parse) and replayed. `accounts` and `states` ((role, transfer id) -> last
    leg state) are the state after the last entry fed."""

    def __init__(self, shard: str) -> None:
        self.shard = shard
        self.accounts: dict[int, Replayed] = {}
        self.states: dict[tuple[int, str], int] = {}
        self.journal_seq = 0
        self.head_hash = journal.GENESIS_HASH

    def feed(self, seq: int, stored_hash: bytes, entry_bytes: bytes) -> types_pb2.JournalEntry:
        """Check and replay the entry stored under `seq`; raises Corrupt."""
        entry = self.check(seq, stored_hash, entry_bytes)
        self.apply(entry, stored_hash)
        return entry

    def check(self, seq: int, stored_hash: bytes, entry_bytes: bytes) -> types_pb2.JournalEntry:
        """The entry stored under `seq`, if it is the next one and its hash
        chains; raises Corrupt. Nothing is replayed yet (see `apply`)."""
        where = journal_where(seq)
        if seq != self.journal_seq + 1:
            raise Corrupt(
                self.shard, where, f"journal seq {self.journal_seq + 1} expected here (entry missing?)"
            )
        if journal.chain_hash(self.head_hash, entry_bytes) != stored_hash:
            raise Corrupt(self.shard, where, "hash chain broken: the entry or its hash was altered")
        try:
            entry = types_pb2.JournalEntry.FromString(entry_bytes)
        except DecodeError:
            raise Corrupt(self.shard, where, "entry does not parse") from None
        if entry.seq != seq:
            raise Corrupt(self.shard, where, f"entry says seq {entry.seq}")
        return entry

    def apply(self, entry: types_pb2.JournalEntry, stored_hash: bytes) -> None:
        """Replay an entry `check` returned; raises Corrupt."""
        self._replay(entry, journal_where(entry.seq))
        self.journal_seq, self.head_hash = entry.seq, stored_hash

    def _replay_move(self, entry: types_pb2.JournalEntry, where: str) -> None:
        accounts, states, shard, kind = self.accounts, self.states, self.shard, entry.kind
        if kind == types_pb2.JOURNAL_KIND_ACCOUNT_IMPORTED:
            account = entry.account
            accounts[account.id] = Replayed(
                account.currency, account.status, account.balance, account.held, account.pending_credit
            )
        elif kind == types_pb2.JOURNAL_KIND_ACCOUNT_RELEASED:
            if accounts.pop(entry.account_id, None) is None:
                raise Corrupt(shard, where, f"release of unknown account {entry.account_id}")
        elif kind == types_pb2.JOURNAL_KIND_RECORD_IMPORTED:
            states[(entry.role, entry.transfer.id)] = entry.leg_state
        elif (
            kind == types_pb2.JOURNAL_KIND_RECORD_RELEASED
            and states.pop((entry.role, entry.transfer.id), None) is None
        ):
            raise Corrupt(shard, where, f"release of unknown transfer record {entry.transfer.id}")

    def _replay(self, entry: types_pb2.JournalEntry, where: str) -> None:
        if entry.kind in MOVE_KINDS:
            self._replay_move(entry, where)
            return
        accounts, shard = self.accounts, self.shard
        if entry.kind == types_pb2.JOURNAL_KIND_ACCOUNT_OPENED:
            if entry.account.id in accounts:
                raise Corrupt(shard, where, f"account {entry.account.id} opened twice")
            accounts[entry.account.id] = Replayed(currency=entry.account.currency)
        elif entry.kind == types_pb2.JOURNAL_KIND_ACCOUNT_STATUS:
            if entry.account_id not in accounts:
                raise Corrupt(shard, where, f"status change of unknown account {entry.account_id}")
            accounts[entry.account_id].status = entry.status_change.to_status
        if (
            entry.kind == types_pb2.JOURNAL_KIND_TRANSFER_POSTED
            and sum(p.balance_delta for p in entry.postings) != 0
        ):
            raise Corrupt(shard, where, "postings of a single-shard transfer do not sum to 0")
        for posting in entry.postings:
            account = accounts.get(posting.account_id)
            if account is None:
                raise Corrupt(shard, where, f"posting to unknown account {posting.account_id}")
            if entry.transfer.currency and account.currency != entry.transfer.currency:
                raise Corrupt(
                    shard, where, f"posting in {entry.transfer.currency} to a {account.currency} account"
                )
            account.balance += posting.balance_delta
            account.held += posting.held_delta
            account.pending_credit += posting.pending_credit_delta
            if account.held < 0 or account.pending_credit < 0:
                raise Corrupt(shard, where, f"account {posting.account_id} goes below zero held/pending")
        state = STATE_OF_KIND.get(entry.kind)
        if state is not None:
            role = entry.role if entry.kind not in SINGLE_SHARD_KINDS else UNSPECIFIED_ROLE
            self.states[(role, entry.transfer.id)] = state


def account_mismatch(account: types_pb2.Account, replayed: dict[int, Replayed]) -> str | None:
    """What is wrong with a stored account given the replay, or None."""
    expected = replayed.get(account.id)
    if expected is None:
        return "stored but never opened in the journal"
    got = (account.currency, account.status, account.balance, account.held, account.pending_credit)
    want = expected.fields()
    if got != want:
        return f"stored (currency, status, balance, held, pending_credit) {got} != journal replay {want}"
    return None


@dataclass(frozen=True)
class ShardBooks:
    """One shard's part of the trial balance: balances per currency and the
    2PC states (transfer id -> leg state) of the records and credit legs it holds."""

    shard: str
    balances: Mapping[str, int]
    debit_records: Mapping[str, int]
    # transfer id -> (state, currency, amount)
    credit_legs: Mapping[str, tuple[int, str, int]]


def trial_balance(shards: Sequence[ShardBooks]) -> tuple[dict[str, int], list[Corrupt]]:
    """Per currency: the sum of all balances plus amounts in flight (committed
    at the record holder, credit leg still PREPARED), which must be 0; and
    credit legs committed although their record holder did not commit."""
    totals: dict[str, int] = defaultdict(int)
    problems: list[Corrupt] = []
    records = {tid: state for books in shards for tid, state in books.debit_records.items()}
    for books in shards:
        for currency, total in books.balances.items():
            totals[currency] += total
        for tid, (state, currency, amount) in books.credit_legs.items():
            if state == PREPARED and records.get(tid) == COMMITTED:
                totals[currency] += amount
            if state == COMMITTED and records.get(tid, COMMITTED) != COMMITTED:
                problems.append(
                    Corrupt(
                        books.shard, f"credit leg {tid}", "committed but its record holder did not commit"
                    )
                )
    return dict(totals), problems
