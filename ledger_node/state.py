"""The ledger's pure state machine: no sockets, no RocksDB, no clock.

`Ledger.apply(requests, now_ms)` takes a drain of write requests, changes the
in-memory accounts, and returns one response per request plus the key/value
writes (account records, transfer records, 2PC legs, journal entries, history)
that the writer must put into ONE synced RocksDB WriteBatch before anyone is
answered. Transfer records and legs are read through an injected `reader`
(RocksDB in production, a dict in tests) with this drain's own writes laid over
it, so two items with the same id in one drain see each other.

Money rules live here, once: see docs/internals.md "Ledger node semantics".
Anything that must never happen (a negative hold, postings that do not sum to
zero, a customer below its overdraft) raises `InvariantViolation`; the server
crashes on it rather than write a wrong ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import grpc

from ledger_node import journal, keys, records, slot_data
from ledger_node.slot_data import ReleasePlan
from shardbank import errors, identity, ids, limits, money, slots
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2, types_pb2

Reader = Callable[[bytes], bytes | None]
Owns = Callable[[int], bool]
# Told of every posting applied: (account id, at ms, signed amount, counterparty id).
Observer = Callable[[int, int, int, int], None]
# (key, value); value None deletes the key.
Write = tuple[bytes, bytes | None]
# The writes of one drain, each key once (a view of the drain's own dict:
# no list of ~6 pairs per transfer is built only to be iterated once).
Writes = Collection[Write]
Request = (
    ledger_pb2.CreateAccountsRequest
    | ledger_pb2.UpdateContactsRequest
    | ledger_pb2.ChangeStatusRequest
    | ledger_pb2.ApplyTransfersRequest
    | ledger_pb2.PrepareRequest
    | ledger_pb2.DecideRequest
    | ledger_pb2.FinishRequest
    | ledger_pb2.ImportSlotsRequest
    | ledger_pb2.MarkSlotsRequest
    | ReleasePlan
)
Response = (
    ledger_pb2.AccountsResponse
    | ledger_pb2.TransfersResponse
    | ledger_pb2.LegsResponse
    | ledger_pb2.ImportSlotsResponse
    | ledger_pb2.MarkSlotsResponse
    | ledger_pb2.ReleaseSlotsResponse
    | BankError
)

# Status changes kept on the account record (older ones stay in the journal):
# bounds the size of an account value that is rewritten on every posting.
STATUS_HISTORY_MAX = 32
CUSTOMER_ID_LENGTH_MAX = 64
# Legs one ListInDoubt answer carries when the caller gives no limit.
IN_DOUBT_LIMIT_DEFAULT = 1000

ACTIVE = types_pb2.ACCOUNT_STATUS_ACTIVE
FROZEN = types_pb2.ACCOUNT_STATUS_FROZEN
CLOSED = types_pb2.ACCOUNT_STATUS_CLOSED
SYSTEM = types_pb2.ACCOUNT_TYPE_SYSTEM
BUSINESS = types_pb2.ACCOUNT_TYPE_BUSINESS
DEPOSIT = types_pb2.TRANSFER_KIND_DEPOSIT
WITHDRAWAL = types_pb2.TRANSFER_KIND_WITHDRAWAL
TRANSFER = types_pb2.TRANSFER_KIND_TRANSFER
PAYMENT = types_pb2.TRANSFER_KIND_PAYMENT
DEBIT = types_pb2.LEG_ROLE_DEBIT
CREDIT = types_pb2.LEG_ROLE_CREDIT
PREPARED = ledger_pb2.LEG_STATE_PREPARED
COMMITTED = ledger_pb2.LEG_STATE_COMMITTED
ABORTED = ledger_pb2.LEG_STATE_ABORTED
UNKNOWN = ledger_pb2.LEG_STATE_UNKNOWN
COMMIT = ledger_pb2.DECISION_COMMIT
ABORT = ledger_pb2.DECISION_ABORT

_TRANSFER_STATUS_OF_STATE = {
    PREPARED: types_pb2.TRANSFER_STATUS_PENDING,
    COMMITTED: types_pb2.TRANSFER_STATUS_COMMITTED,
    ABORTED: types_pb2.TRANSFER_STATUS_ABORTED,
}


class Body(NamedTuple):
    """A well-formed transfer body, normalized (`Ledger._body`): the cash
    account filled in on the cash side of a deposit or withdrawal. Named like
    the Transfer fields, so the refusal checks read either. A single-shard
    transfer is checked and recorded from this, never built as a message."""

    id: str
    kind: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    currency: str
    memo: str
    reference: str
    # Kept with the record, never compared on a resend (client_body): the
    # gateway may decide differently later.
    risk: types_pb2.RiskAssessment | None
    review_deadline_unix_ms: int

    def encoded(
        self,
        status: int,
        at_unix_ms: int,
        cross_shard: bool = False,
        code: int = 0,
        reason: str = "",
        message: str = "",
    ) -> bytes:
        """The serialized Transfer with this body, a status, an outcome and
        created = updated = `at_unix_ms` (0: neither): `records.transfer`, the
        bytes the message would serialize to."""
        risk = self.risk
        return records.transfer(
            self.id,
            self.kind,
            self.debit_account_id,
            self.credit_account_id,
            self.amount,
            self.currency,
            self.memo,
            self.reference,
            status,
            code,
            reason,
            message,
            at_unix_ms,
            cross_shard,
            None if risk is None else risk.SerializeToString(),
            self.review_deadline_unix_ms,
        )

    def message(self, cross_shard: bool) -> types_pb2.Transfer:
        """The body as a Transfer message (a presumed-abort tombstone, a refusal)."""
        return types_pb2.Transfer(
            id=self.id,
            kind=self.kind,  # type: ignore[arg-type]
            debit_account_id=self.debit_account_id,
            credit_account_id=self.credit_account_id,
            amount=self.amount,
            currency=self.currency,
            memo=self.memo,
            reference=self.reference,
            cross_shard=cross_shard,
            risk=self.risk,
            review_deadline_unix_ms=self.review_deadline_unix_ms,
        )


class InvariantViolation(Exception):
    """A rule that no input can break was broken: a bug or corrupted state.

    Never handled. The server logs it, reports NOT_SERVING and exits, so a
    wrong ledger is never written to disk nor served.
    """


def invariant(condition: bool, message: str) -> None:
    """An explicit check (not `assert`, which `python -O` strips)."""
    if not condition:
        raise InvariantViolation(message)


def shard_index(shard_id: str) -> int:
    """`shard-3` -> 3: the index in the ids of this shard's cash accounts."""
    prefix, _, number = shard_id.rpartition("-")
    if prefix != "shard" or not number.isdigit() or not 1 <= int(number) <= 999_999_999:
        raise ValueError(f"shard id must look like shard-N, got {shard_id!r}")
    return int(number)


@dataclass(slots=True)
class AccountState:
    """One account in memory. Holder details stay serialized: they are read
    rarely, and bytes cost less memory than a message per account."""

    id: int
    currency: str
    type: types_pb2.AccountType.ValueType
    status: types_pb2.AccountStatus.ValueType
    overdraft_limit: int
    created_at_ms: int
    updated_at_ms: int
    holder_bytes: bytes = b""
    balance: int = 0
    held: int = 0
    pending_credit: int = 0
    status_history: list[types_pb2.StatusChange] = field(default_factory=list)
    # What the rarely changing parts of the stored record were built from
    # (holder bytes, status, overdraft limit, creation time), then those parts
    # (`records.account_parts`); rebuilt only when one of the four changes.
    # One flat tuple: a node keeps one per account it has written to.
    record_cache: tuple[bytes, int, int, int, bytes, bytes, bytes] | None = None

    @property
    def available(self) -> int:
        return self.balance - self.held + self.overdraft_limit

    def holder(self) -> types_pb2.Holder:
        return types_pb2.Holder.FromString(self.holder_bytes)

    def to_proto(self, with_available: bool = True) -> types_pb2.Account:
        account = types_pb2.Account(
            id=self.id,
            currency=self.currency,
            type=self.type,
            holder=self.holder(),
            status=self.status,
            balance=self.balance,
            held=self.held,
            overdraft_limit=self.overdraft_limit,
            pending_credit=self.pending_credit,
            created_at_unix_ms=self.created_at_ms,
            updated_at_unix_ms=self.updated_at_ms,
            status_history=self.status_history,
        )
        if with_available:
            account.available = self.available
        return account

    def record_bytes(self) -> bytes:
        """The stored record: the bytes of `to_proto(with_available=False)`
        serialized deterministically, without building the message (a
        StatusChange has no map field, so its plain serialization is the
        deterministic one)."""
        cache = self.record_cache
        if (
            cache is None
            or cache[0] is not self.holder_bytes
            or cache[1] != self.status
            or cache[2] != self.overdraft_limit
            or cache[3] != self.created_at_ms
        ):
            head = records.account_head(self.id, self.currency, self.type, self.holder_bytes)
            parts = records.account_parts(head, self.status, self.overdraft_limit, self.created_at_ms)
            cache = (self.holder_bytes, self.status, self.overdraft_limit, self.created_at_ms, *parts)
            self.record_cache = cache
        history = self.status_history
        return records.account_from_parts(
            cache[4],
            cache[5],
            cache[6],
            self.balance,
            self.held,
            self.pending_credit,
            self.updated_at_ms,
            [change.SerializeToString() for change in history] if history else [],
        )

    @staticmethod
    def from_proto(account: types_pb2.Account) -> AccountState:
        """Also how start-up reads every stored account (1M on a big shard), so
        it is spelled for speed: positional arguments (in field order of the
        dataclass), no copy of an empty status history, and the holder
        serialized without the `deterministic` keyword, whose parsing alone
        cost a tenth of this function. The bytes are the same: deterministic
        serialization only orders map entries, and Holder has no map field
        (`tests/unit/test_store_load.py` checks both)."""
        history = account.status_history
        return AccountState(
            account.id,
            account.currency,
            account.type,
            account.status,
            account.overdraft_limit,
            account.created_at_unix_ms,
            account.updated_at_unix_ms,
            account.holder.SerializeToString(),
            account.balance,
            account.held,
            account.pending_credit,
            list(history) if history else [],
        )


def check_account_invariants(account: AccountState) -> None:
    """What must hold for every account at every write (and after every read).

    One boolean expression on the hot path; the explicit checks below run
    (and name the broken rule) only when it is false."""
    balance, held, pending_credit = account.balance, account.held, account.pending_credit
    if (
        held >= 0
        and pending_credit >= 0
        and -money.BALANCE_MAX_MINOR <= balance <= money.BALANCE_MAX_MINOR
        and balance + pending_credit <= money.BALANCE_MAX_MINOR
        and (held == 0 if account.type == SYSTEM else balance - held + account.overdraft_limit >= 0)
        and (account.status != CLOSED or (balance == 0 and held == 0 and pending_credit == 0))
    ):
        return
    _name_broken_account_invariant(account)
    raise InvariantViolation(f"account {account.id}: invariants disagree")  # unreachable if consistent


def _name_broken_account_invariant(account: AccountState) -> None:
    where = f"account {account.id}"
    invariant(account.held >= 0, f"{where}: held {account.held} < 0")
    invariant(account.pending_credit >= 0, f"{where}: pending_credit {account.pending_credit} < 0")
    invariant(abs(account.balance) <= money.BALANCE_MAX_MINOR, f"{where}: balance out of range")
    invariant(
        account.balance + account.pending_credit <= money.BALANCE_MAX_MINOR,
        f"{where}: balance + pending_credit out of range",
    )
    if account.type == SYSTEM:
        invariant(account.held == 0, f"{where}: a cash account holds {account.held}")
    else:
        invariant(account.available >= 0, f"{where}: available {account.available} < 0")
    if account.status == CLOSED:
        invariant(
            account.balance == 0 and account.held == 0 and account.pending_credit == 0,
            f"{where}: closed with money on it",
        )


def client_body(transfer: types_pb2.Transfer | Body) -> tuple[int, int, int, int, str, str, str]:
    """What two submissions of one id must agree on (internals: body equality).
    The cash side of a deposit/withdrawal counts as the 0 the client gave."""
    debit = 0 if transfer.kind == DEPOSIT else transfer.debit_account_id
    credit = 0 if transfer.kind == WITHDRAWAL else transfer.credit_account_id
    return (
        transfer.kind,
        debit,
        credit,
        transfer.amount,
        transfer.currency,
        transfer.memo,
        transfer.reference,
    )


def _same_body(stored: types_pb2.Transfer, given: types_pb2.Transfer | Body) -> bool:
    # A presumed-abort tombstone written without a body matches any body: the
    # late Prepare then sees ABORTED, which is the point of the tombstone.
    if stored.kind == types_pb2.TRANSFER_KIND_UNSPECIFIED:
        return True
    return client_body(stored) == client_body(given)


def _set_outcome(transfer: types_pb2.Transfer, error: BankError | None) -> None:
    if error is None:
        transfer.code, transfer.reason, transfer.message = 0, "", ""
    else:
        transfer.code, transfer.reason, transfer.message = error.code_value, error.reason, error.message


def _rejected(given: types_pb2.Transfer, error: BankError) -> types_pb2.Transfer:
    """An item refused before anything was recorded: the id stays free."""
    out = types_pb2.Transfer()
    out.CopyFrom(given)
    out.status = types_pb2.TRANSFER_STATUS_REJECTED
    _set_outcome(out, error)
    return out


def _leg_answer(
    stored: bytes, record: ledger_pb2.Leg, error: BankError | None = None, done: bool = False
) -> bytes:
    """The answer for one item about a stored leg: its stored bytes (`record`
    parsed from them) and the item's outcome. `done`: the leg is in the state
    the caller asked for (code 0). Otherwise an ABORTED leg answers with why
    it aborted, which is what a Prepare caller needs to abort the other leg.
    A stored leg carries no outcome, so appended fields are the only ones."""
    if error is not None:
        return stored + records.leg_outcome(error.code_value, error.reason)
    if record.state == ABORTED and not done:
        return stored + records.leg_outcome(record.transfer.code, record.transfer.reason)
    return stored


def _leg_refused(given: types_pb2.Transfer, role: int, error: BankError) -> bytes:
    """The answer for an item refused before any leg was read or stored."""
    return ledger_pb2.Leg(
        transfer=given,
        role=role,  # type: ignore[arg-type]
        state=UNKNOWN,
        code=error.code_value,
        reason=error.reason,
    ).SerializeToString()


def _body_refused(body: Body, role: int, error: BankError) -> bytes:
    """`_leg_refused` of a checked body (as a Transfer: cross-shard, no times)."""
    transfer_bytes = body.encoded(types_pb2.TRANSFER_STATUS_UNSPECIFIED, 0, True)
    return records.leg(transfer_bytes, role, UNKNOWN) + records.leg_outcome(error.code_value, error.reason)


def _account_refused(account_id: int, error: BankError) -> ledger_pb2.AccountResult:
    return ledger_pb2.AccountResult(
        account=types_pb2.Account(id=account_id),
        code=error.code_value,
        reason=error.reason,
        message=error.message,
    )


def _check_batch(count: int) -> BankError | None:
    if count == 0:
        return errors.invalid(errors.BATCH_EMPTY, "the batch has no items")
    if count > limits.BATCH_ITEMS_MAX:
        return BankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.BATCH_TOO_LARGE,
            f"at most {limits.BATCH_ITEMS_MAX} items per request",
        )
    return None


def _check_actor(actor: str, required: bool) -> BankError | None:
    if len(actor) > limits.ACTOR_LENGTH_MAX or (required and not actor):
        return errors.invalid(
            errors.INVALID_ARGUMENT, f"actor must be 1-{limits.ACTOR_LENGTH_MAX} characters"
        )
    return None


def _check_customer_id(account_id: int) -> None:
    ids.check_account_id(account_id)
    if not ids.is_customer_account_id(account_id):
        raise errors.invalid(errors.SYSTEM_ACCOUNT, "a cash account cannot be named here")


def _check_holder(holder: types_pb2.Holder, today: dt.date) -> None:
    identity.check_name(holder.name)
    if holder.id_type == types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID:
        identity.check_cn_resident_id(holder.id_number, today)
    elif holder.id_type == types_pb2.ID_DOCUMENT_TYPE_PASSPORT:
        identity.check_passport(holder.id_number)
    else:
        raise errors.invalid(errors.INVALID_ID_NUMBER, "id_type must be CN_RESIDENT_ID or PASSPORT")
    identity.check_phone(holder.phone)
    identity.check_country(holder.country)
    if len(holder.customer_id) > CUSTOMER_ID_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_ARGUMENT, f"customer_id is longer than {CUSTOMER_ID_LENGTH_MAX}")


def _id_conflict() -> BankError:
    return BankError(
        grpc.StatusCode.ALREADY_EXISTS, errors.TRANSFER_ID_CONFLICT, "this id was used with another body"
    )


def _slot_moved(account_id: int) -> BankError:
    return BankError(grpc.StatusCode.ABORTED, errors.SLOT_MOVED, f"account {account_id} is not on this shard")


def _malformed_import(request: ledger_pb2.ImportSlotsRequest) -> BankError | None:
    """What an import must be before anything is applied: a broken account or
    id in it is refused whole (INVALID_ARGUMENT), never a crash mid-drain."""
    try:
        for account in request.accounts:
            check_account_invariants(AccountState.from_proto(account))
        for record in request.records:
            ids.normalize_transfer_id(record.transfer.id)
            if record.state not in (PREPARED, COMMITTED, ABORTED):
                raise errors.invalid(errors.INVALID_ARGUMENT, f"record {record.transfer.id} has no state")
    except InvariantViolation as broken:
        return errors.invalid(errors.INVALID_ARGUMENT, f"imported account breaks a rule: {broken}")
    except BankError as error:
        return error
    return None


def _single(role: int) -> int:
    """The role a single-shard record under this 2PC role's key has: 0 under
    t/ (the record holder's key), none under l/."""
    return types_pb2.LEG_ROLE_UNSPECIFIED if role == DEBIT else -1


def _slot_moving(account_id: int) -> BankError:
    return BankError(
        grpc.StatusCode.UNAVAILABLE, errors.SLOT_MOVING, f"account {account_id} is moving shards: retry"
    )


class Ledger:
    """All accounts of one shard in memory, and the rules that change them."""

    def __init__(
        self,
        shard_id: str,
        reader: Reader,
        owns: Owns,
        *,
        accounts: dict[int, AccountState] | None = None,
        journal_seq: int = 0,
        journal_hash: bytes = journal.GENESIS_HASH,
        max_epoch: int = 0,
        in_doubt: dict[tuple[int, str], int] | None = None,
        transfers_applied: int = 0,
        observe: Observer | None = None,
        opened: Callable[[AccountState], None] | None = None,
        fenced: set[int] | None = None,
        staged: set[int] | None = None,
        checkpoint: ledger_pb2.ImportCheckpoint | None = None,
    ) -> None:
        self.shard_id = shard_id
        self.shard_index = shard_index(shard_id)
        self.accounts: dict[int, AccountState] = accounts if accounts is not None else {}
        self.journal_seq = journal_seq
        self.journal_hash = journal_hash
        self.max_epoch = max_epoch
        # (role, transfer id) -> ms from which each PREPARED record/leg counts
        # as in doubt: its prepared_at, or a review hold's deadline.
        self.in_doubt: dict[tuple[int, str], int] = in_doubt if in_doubt is not None else {}
        self.transfers_applied = transfers_applied
        # Slot moves (docs/moves.md): slots whose writes are refused while
        # they move away (fenced) or that hold copies not yet ours (staged).
        self.fenced: set[int] = fenced if fenced is not None else set()
        self.staged: set[int] = staged if staged is not None else set()
        self.checkpoint = checkpoint or ledger_pb2.ImportCheckpoint()
        self._reader = reader
        self._owns = owns
        # The risk activity index (shardbank.activity) follows every posting.
        self._observe = observe
        self._opened = opened
        self._writes: dict[bytes, bytes | None] = {}
        self._dirty: set[int] = set()

    # ------------------------------------------------------------------ drain

    def apply(self, requests: Sequence[Request], now_ms: int) -> tuple[list[Response], Writes]:
        """Apply a drain of requests in order: (one response each, the writes)."""
        invariant(not self._writes and not self._dirty, "apply re-entered with writes pending")
        epoch_before, applied_before = self.max_epoch, self.transfers_applied
        responses = [self._apply_request(request, now_ms) for request in requests]
        accounts, pending = self.accounts, self._writes
        for account_id in sorted(self._dirty):
            account = accounts[account_id]
            check_account_invariants(account)
            pending[keys.account_key(account_id)] = account.record_bytes()
        if self.max_epoch != epoch_before:
            invariant(self.max_epoch > epoch_before, "max epoch went down")
            self._writes[keys.META_EPOCH] = keys.u64(self.max_epoch)
        if self.transfers_applied != applied_before:
            self._writes[keys.META_APPLIED] = keys.u64(self.transfers_applied)
        writes = self._writes.items()
        self._writes = {}
        self._dirty = set()
        return responses, writes

    def _apply_request(self, request: Request, now_ms: int) -> Response:
        if isinstance(request, ledger_pb2.CreateAccountsRequest):
            return self._create_accounts(request, now_ms)
        if isinstance(request, ledger_pb2.UpdateContactsRequest):
            return self._update_contacts(request, now_ms)
        if isinstance(request, ledger_pb2.ChangeStatusRequest):
            return self._change_statuses(request, now_ms)
        if isinstance(request, ledger_pb2.ApplyTransfersRequest):
            batch_error = _check_batch(len(request.transfers))
            if batch_error is not None:
                return batch_error
            answers = [self._apply_transfer(t, now_ms) for t in request.transfers]
            return ledger_pb2.TransfersResponse.FromString(records.answers(answers))
        if isinstance(request, ledger_pb2.ImportSlotsRequest):
            return self._import(request, now_ms)
        if isinstance(request, ledger_pb2.MarkSlotsRequest):
            return self._mark(request)
        if isinstance(request, ReleasePlan):
            return self._release(request, now_ms)
        if isinstance(request, ledger_pb2.PrepareRequest):
            fence = self._fence(request.epoch, len(request.items))
            if fence is not None:
                return fence
            legs = [self._prepare(item, request.epoch, now_ms) for item in request.items]
            return ledger_pb2.LegsResponse.FromString(records.answers(legs))
        fence = self._fence(request.epoch, len(request.items))
        if fence is not None:
            return fence
        role = DEBIT if isinstance(request, ledger_pb2.DecideRequest) else CREDIT
        legs = [self._resolve(item, role, request.epoch, now_ms) for item in request.items]
        return ledger_pb2.LegsResponse.FromString(records.answers(legs))

    def _fence(self, epoch: int, count: int) -> BankError | None:
        """Whole-request checks of a 2PC call; raises the max epoch seen."""
        batch_error = _check_batch(count)
        if batch_error is not None:
            return batch_error
        if epoch == 0:
            return errors.invalid(errors.INVALID_ARGUMENT, "a 2PC request needs the coordinator epoch")
        if epoch < self.max_epoch:
            return BankError(
                grpc.StatusCode.ABORTED, errors.STALE_EPOCH, f"epoch {epoch} < highest seen {self.max_epoch}"
            )
        self.max_epoch = epoch
        return None

    # ------------------------------------------------------------------ I/O-free helpers

    def _read(self, key: bytes) -> bytes | None:
        if key in self._writes:
            return self._writes[key]
        return self._reader(key)

    def _read_leg(self, key: bytes) -> ledger_pb2.Leg | None:
        value = self._read(key)
        return None if value is None else ledger_pb2.Leg.FromString(value)

    def _read_record(self, key: bytes) -> tuple[bytes, ledger_pb2.Leg] | None:
        """(stored bytes, parsed) of a transfer record or leg, if any."""
        value = self._read(key)
        return None if value is None else (value, ledger_pb2.Leg.FromString(value))

    def _journal(self, entry: types_pb2.JournalEntry) -> int:
        """Append one entry to the hash chain; returns its seq."""
        seq = self.journal_seq + 1
        entry.seq = seq
        self._chain(seq, entry.SerializeToString(deterministic=True))
        return seq

    def _journal_transfer(
        self,
        kind: types_pb2.JournalKind.ValueType,
        now_ms: int,
        transfer_id: str,
        postings: list[bytes],
        transfer_bytes: bytes,
        epoch: int = 0,
        role: int = 0,
    ) -> int:
        """`_journal` for an entry about one transfer, from its serialized body."""
        seq = self.journal_seq + 1
        entry_bytes = records.transfer_entry(
            seq, kind, now_ms, transfer_id, postings, transfer_bytes, epoch, role
        )
        self._chain(seq, entry_bytes)
        return seq

    def _chain(self, seq: int, entry_bytes: bytes) -> None:
        invariant(seq == self.journal_seq + 1, f"journal seq {seq} after {self.journal_seq}")
        value, head = journal.encode(self.journal_hash, entry_bytes)
        self._writes[keys.journal_key(seq)] = value
        self.journal_seq, self.journal_hash = seq, head

    def _history(self, account: AccountState, transfer_bytes: bytes, delta: int, seq: int) -> None:
        self._writes[keys.history_key(account.id, seq)] = records.history(
            transfer_bytes, delta, account.balance, seq
        )

    def _touch(self, account: AccountState, now_ms: int) -> None:
        account.updated_at_ms = now_ms
        self._dirty.add(account.id)
        check_account_invariants(account)

    # ------------------------------------------------------------------ accounts

    def _create_accounts(self, request: ledger_pb2.CreateAccountsRequest, now_ms: int) -> Response:
        whole = _check_batch(len(request.accounts)) or _check_actor(request.actor, required=False)
        if whole is not None:
            return whole
        return ledger_pb2.AccountsResponse(
            results=[self._create_account(a, now_ms) for a in request.accounts]
        )

    def _create_account(self, given: types_pb2.Account, now_ms: int) -> ledger_pb2.AccountResult:
        try:
            _check_customer_id(given.id)
            money.currency(given.currency)
            if given.type not in (types_pb2.ACCOUNT_TYPE_PERSONAL, BUSINESS):
                raise errors.invalid(errors.INVALID_ACCOUNT_TYPE, "type must be PERSONAL or BUSINESS")
            _check_holder(given.holder, _date_of(now_ms))
            if not 0 <= given.overdraft_limit <= limits.OVERDRAFT_LIMIT_MAX_MINOR:
                raise errors.invalid(
                    errors.INVALID_OVERDRAFT_LIMIT,
                    f"overdraft_limit must be 0..{limits.OVERDRAFT_LIMIT_MAX_MINOR}",
                )
        except BankError as error:
            return _account_refused(given.id, error)
        if not self._owns(given.id):
            return _account_refused(given.id, _slot_moved(given.id))
        if self._moving(given.id):
            return _account_refused(given.id, _slot_moving(given.id))
        holder_bytes = given.holder.SerializeToString(deterministic=True)
        existing = self.accounts.get(given.id)
        if existing is not None:
            same = (existing.currency, existing.type, existing.holder_bytes, existing.overdraft_limit) == (
                given.currency,
                given.type,
                holder_bytes,
                given.overdraft_limit,
            )
            if same:  # a retried opening: the first outcome again
                return ledger_pb2.AccountResult(account=existing.to_proto())
            exists = BankError(
                grpc.StatusCode.ALREADY_EXISTS, errors.ACCOUNT_EXISTS, "account id already in use"
            )
            return _account_refused(given.id, exists)
        account = AccountState(
            id=given.id,
            currency=given.currency,
            type=given.type,
            status=ACTIVE,
            overdraft_limit=given.overdraft_limit,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
            holder_bytes=holder_bytes,
        )
        self._open(account, now_ms)
        return ledger_pb2.AccountResult(account=account.to_proto())

    def _open(self, account: AccountState, now_ms: int) -> None:
        invariant(account.id not in self.accounts, f"account {account.id} opened twice")
        invariant(account.balance == 0 and account.held == 0, "an account opens empty")
        self.accounts[account.id] = account
        if self._opened is not None:
            self._opened(account)
        self._touch(account, now_ms)
        self._journal_account(types_pb2.JOURNAL_KIND_ACCOUNT_OPENED, account, now_ms)

    def _journal_account(
        self, kind: types_pb2.JournalKind.ValueType, account: AccountState, now_ms: int
    ) -> None:
        """An entry carrying the whole account (opened, updated, imported)."""
        self._journal(
            types_pb2.JournalEntry(
                kind=kind,
                at_unix_ms=now_ms,
                account=account.to_proto(with_available=False),
                account_id=account.id,
            )
        )

    def _cash_account(self, account_id: int, currency_code: str, now_ms: int) -> AccountState:
        """This shard's cash account in a currency, opened on first use."""
        account = self.accounts.get(account_id)
        if account is not None:
            return account
        invariant(
            account_id == ids.system_account_id(self.shard_index, currency_code), "not our cash account"
        )
        account = AccountState(
            id=account_id,
            currency=currency_code,
            type=SYSTEM,
            status=ACTIVE,
            overdraft_limit=0,
            created_at_ms=now_ms,
            updated_at_ms=now_ms,
        )
        self._open(account, now_ms)
        return account

    def _update_contacts(self, request: ledger_pb2.UpdateContactsRequest, now_ms: int) -> Response:
        whole = _check_batch(len(request.updates)) or _check_actor(request.actor, required=False)
        if whole is not None:
            return whole
        return ledger_pb2.AccountsResponse(results=[self._update_contact(u, now_ms) for u in request.updates])

    def _update_contact(self, update: ledger_pb2.ContactUpdate, now_ms: int) -> ledger_pb2.AccountResult:
        try:
            _check_customer_id(update.account_id)
            if not update.phone and not update.name:
                raise errors.invalid(errors.INVALID_ARGUMENT, "nothing to update: give a phone or a name")
            if update.phone:
                identity.check_phone(update.phone)
            if update.name:
                identity.check_name(update.name)
        except BankError as error:
            return _account_refused(update.account_id, error)
        account = self._owned_account(update.account_id)
        if isinstance(account, BankError):
            return _account_refused(update.account_id, account)
        if account.status == CLOSED:
            return _account_refused(
                update.account_id, errors.precondition(errors.ACCOUNT_CLOSED, "account is closed")
            )
        holder = account.holder()
        if update.phone:
            holder.phone = update.phone
        if update.name:
            holder.name = update.name
        account.holder_bytes = holder.SerializeToString(deterministic=True)
        self._touch(account, now_ms)
        self._journal_account(types_pb2.JOURNAL_KIND_ACCOUNT_UPDATED, account, now_ms)
        return ledger_pb2.AccountResult(account=account.to_proto())

    def _owned_account(self, account_id: int) -> AccountState | BankError:
        if not self._owns(account_id):
            return _slot_moved(account_id)
        if self._moving(account_id):
            return _slot_moving(account_id)
        account = self.accounts.get(account_id)
        if account is None:
            return errors.not_found(errors.ACCOUNT_NOT_FOUND, f"no account {account_id}")
        return account

    def _existing(self, account_id: int, why: str) -> AccountState:
        """An account that must exist (a prepared leg's): missing is corruption."""
        account = self.accounts.get(account_id)
        if account is None:
            raise InvariantViolation(f"{why}: account {account_id} is missing")
        return account

    def _change_statuses(self, request: ledger_pb2.ChangeStatusRequest, now_ms: int) -> Response:
        whole = _check_batch(len(request.items)) or _check_actor(request.actor, required=True)
        if whole is not None:
            return whole
        return ledger_pb2.AccountsResponse(
            results=[self._change_status(item, request.actor, now_ms) for item in request.items]
        )

    def _change_status(
        self, item: ledger_pb2.StatusRequestItem, actor: str, now_ms: int
    ) -> ledger_pb2.AccountResult:
        try:
            _check_customer_id(item.account_id)
            if item.action not in (
                ledger_pb2.STATUS_ACTION_FREEZE,
                ledger_pb2.STATUS_ACTION_UNFREEZE,
                ledger_pb2.STATUS_ACTION_CLOSE,
            ):
                raise errors.invalid(errors.INVALID_ACTION, "action must be FREEZE, UNFREEZE or CLOSE")
            if not 1 <= len(item.reason) <= limits.STATUS_REASON_LENGTH_MAX:
                raise errors.invalid(
                    errors.INVALID_REASON, f"reason must be 1-{limits.STATUS_REASON_LENGTH_MAX} characters"
                )
        except BankError as error:
            return _account_refused(item.account_id, error)
        account = self._owned_account(item.account_id)
        if isinstance(account, BankError):
            return _account_refused(item.account_id, account)
        target, refusal = _status_target(account, item.action)
        if refusal is not None:
            return _account_refused(item.account_id, refusal)
        change = types_pb2.StatusChange(
            from_status=account.status, to_status=target, actor=actor, reason=item.reason, at_unix_ms=now_ms
        )
        account.status = target
        account.status_history.append(change)
        del account.status_history[:-STATUS_HISTORY_MAX]
        self._touch(account, now_ms)
        self._journal(
            types_pb2.JournalEntry(
                kind=types_pb2.JOURNAL_KIND_ACCOUNT_STATUS,
                at_unix_ms=now_ms,
                account_id=account.id,
                status_change=change,
            )
        )
        return ledger_pb2.AccountResult(account=account.to_proto())

    # ------------------------------------------------------------------ transfers

    def _body(self, given: types_pb2.Transfer, cross_shard: bool) -> Body:
        """The normalized body of a well-formed transfer, or INVALID_ARGUMENT.
        Each field of `given` is read once (a message attribute read is a
        call into upb)."""
        transfer_id = ids.normalize_transfer_id(given.id)
        kind, amount, currency = given.kind, given.amount, given.currency
        memo, reference = given.memo, given.reference
        allowed = (TRANSFER, PAYMENT) if cross_shard else (DEPOSIT, WITHDRAWAL, TRANSFER, PAYMENT)
        if kind not in allowed:
            raise errors.invalid(errors.INVALID_TRANSFER_KIND, "kind is not valid for this call")
        money.check_amount(amount)
        money.currency(currency)
        if len(memo) > limits.MEMO_LENGTH_MAX:
            raise errors.invalid(errors.INVALID_ARGUMENT, f"memo is longer than {limits.MEMO_LENGTH_MAX}")
        if len(reference) > limits.REFERENCE_LENGTH_MAX:
            raise errors.invalid(
                errors.INVALID_ARGUMENT, f"reference is longer than {limits.REFERENCE_LENGTH_MAX}"
            )
        debit, credit = given.debit_account_id, given.credit_account_id
        cash = ids.system_account_id(self.shard_index, currency)
        if kind == DEPOSIT:
            if debit not in (0, cash):
                raise errors.invalid(
                    errors.SYSTEM_ACCOUNT, "a deposit's debit side is the cash account: leave it 0"
                )
            debit = cash
            self._check_customer_id(credit)
        elif kind == WITHDRAWAL:
            if credit not in (0, cash):
                raise errors.invalid(
                    errors.SYSTEM_ACCOUNT, "a withdrawal's credit side is the cash account: leave it 0"
                )
            credit = cash
            self._check_customer_id(debit)
        else:
            self._check_customer_id(debit)
            self._check_customer_id(credit)
        if debit == credit:
            raise errors.invalid(errors.SAME_ACCOUNT, "debit and credit are the same account")
        return Body(
            transfer_id,
            kind,
            debit,
            credit,
            amount,
            currency,
            memo,
            reference,
            given.risk if given.HasField("risk") else None,
            given.review_deadline_unix_ms,
        )

    def _check_customer_id(self, account_id: int) -> None:
        """Fast path for accounts we hold (their id was checked at opening):
        the Luhn check is a large share of a transfer's CPU time."""
        known = self.accounts.get(account_id)
        if known is None or known.type == SYSTEM:
            _check_customer_id(account_id)

    def _debit_refusal(self, account_id: int, transfer: types_pb2.Transfer | Body) -> BankError | None:
        account = self.accounts.get(account_id)
        if account is None:
            if ids.is_system_account_id(account_id):
                return None  # our cash account, opened on first use
            return errors.not_found(errors.ACCOUNT_NOT_FOUND, f"no debit account {account_id}")
        refusal = _usable(account, transfer)
        if refusal is not None:
            return refusal
        if account.type == SYSTEM:
            if account.balance - transfer.amount < -money.BALANCE_MAX_MINOR:
                return errors.precondition(errors.BALANCE_OVERFLOW, "cash account balance out of range")
            return None
        if account.available < transfer.amount:
            return errors.precondition(errors.INSUFFICIENT_FUNDS, "available balance is too low")
        return None

    def _credit_refusal(self, account_id: int, transfer: types_pb2.Transfer | Body) -> BankError | None:
        account = self.accounts.get(account_id)
        if account is None:
            if ids.is_system_account_id(account_id):
                return None
            return errors.not_found(errors.ACCOUNT_NOT_FOUND, f"no credit account {account_id}")
        refusal = _usable(account, transfer)
        if refusal is not None:
            return refusal
        if transfer.kind == PAYMENT and account.type != BUSINESS:
            return errors.precondition(errors.NOT_A_MERCHANT, "a payment's credit account must be a business")
        if account.balance + account.pending_credit + transfer.amount > money.BALANCE_MAX_MINOR:
            return errors.precondition(errors.BALANCE_OVERFLOW, "credit would exceed the largest balance")
        return None

    def _routing_refusal(self, transfer: Body) -> BankError | None:
        """SLOT_MOVED when none of the customer accounts is ours, CROSS_SHARD
        when only one of them is (the gateway sends those to the coordinator)."""
        kind = transfer.kind
        if kind == DEPOSIT:
            credit = transfer.credit_account_id
            return self._moving_refusal(credit) if self._owns(credit) else _slot_moved(credit)
        debit = transfer.debit_account_id
        debit_owned = self._owns(debit)
        if kind == WITHDRAWAL:
            return self._moving_refusal(debit) if debit_owned else _slot_moved(debit)
        credit = transfer.credit_account_id
        credit_owned = self._owns(credit)
        if not debit_owned and not credit_owned:
            return _slot_moved(debit)
        if not (debit_owned and credit_owned):
            return errors.precondition(errors.CROSS_SHARD, "debit and credit are on different shards")
        return self._moving_refusal(debit) or self._moving_refusal(credit)

    def _moving(self, account_id: int) -> bool:
        """Is the account in a slot being moved (fenced here or only staged)?"""
        marked = self.fenced or self.staged
        return bool(marked) and slot_data.in_slots(account_id, self.fenced | self.staged)

    def _moving_refusal(self, account_id: int) -> BankError | None:
        return _slot_moving(account_id) if self._moving(account_id) else None

    def _block_routing_refusal(self, transfer: Body) -> BankError | None:
        """A transfer the gateway blocked is recorded (ABORTED, nothing moves)
        at its record holder alone, even when its accounts are on two shards."""
        holder = transfer.credit_account_id if transfer.kind == DEPOSIT else transfer.debit_account_id
        return None if self._owns(holder) else _slot_moved(holder)

    def _apply_transfer(self, given: types_pb2.Transfer, now_ms: int) -> bytes:
        """One ApplyTransfers item; its answer, a serialized Transfer. The body
        is checked as a `Body` and serialized once (`records.transfer`) for the
        record, the journal, the history and the answer."""
        try:
            body = self._body(given, cross_shard=False)
        except BankError as error:
            return _rejected(given, error).SerializeToString()
        key = keys.transfer_key(body.id)
        record = self._read_leg(key)
        if record is not None:
            if not _same_body(record.transfer, given):
                return _rejected(given, _id_conflict()).SerializeToString()
            return record.transfer.SerializeToString()
        risk = body.risk
        blocked = risk is not None and risk.decision == types_pb2.RISK_DECISION_BLOCK
        routing = self._block_routing_refusal(body) if blocked else self._routing_refusal(body)
        if routing is not None:
            return body.encoded(
                types_pb2.TRANSFER_STATUS_REJECTED,
                0,
                False,
                routing.code_value,
                routing.reason,
                routing.message,
            )
        if blocked:
            refusal: BankError | None = errors.precondition(
                errors.RISK_BLOCKED, "the transfer was refused by risk control"
            )
        else:
            refusal = self._debit_refusal(body.debit_account_id, body) or self._credit_refusal(
                body.credit_account_id, body
            )
        if refusal is not None:
            status = types_pb2.TRANSFER_STATUS_ABORTED
            transfer_bytes = body.encoded(
                status, now_ms, False, refusal.code_value, refusal.reason, refusal.message
            )
            self._writes[key] = records.leg(transfer_bytes, 0, ABORTED)
            self._journal_transfer(
                types_pb2.JOURNAL_KIND_TRANSFER_REFUSED, now_ms, body.id, [], transfer_bytes
            )
            return transfer_bytes
        transfer_bytes = self._post(body, now_ms)
        self._writes[key] = records.leg(transfer_bytes, 0, COMMITTED)
        return transfer_bytes

    def _post(self, body: Body, now_ms: int) -> bytes:
        """Move the money of a checked single-shard transfer, in one step;
        returns the transfer's serialized body (as recorded everywhere)."""
        transfer_id, currency = body.id, body.currency
        debit = self._cash_account(body.debit_account_id, currency, now_ms)
        credit = self._cash_account(body.credit_account_id, currency, now_ms)
        amount = body.amount
        debit_delta, credit_delta = -amount, amount
        invariant(debit_delta + credit_delta == 0, f"transfer {transfer_id}: postings do not sum to 0")
        invariant(debit.currency == credit.currency == currency, f"transfer {transfer_id}: currencies")
        invariant(
            debit.status == ACTIVE and credit.status == ACTIVE, f"transfer {transfer_id}: account not active"
        )
        debit.balance += debit_delta
        credit.balance += credit_delta
        self._touch(debit, now_ms)
        self._touch(credit, now_ms)
        transfer_bytes = body.encoded(types_pb2.TRANSFER_STATUS_COMMITTED, now_ms)
        seq = self.journal_seq + 1
        entry_bytes, debit_history, credit_history = records.posted_transfer(
            seq,
            now_ms,
            transfer_id,
            transfer_bytes,
            amount,
            debit.id,
            debit.balance,
            credit.id,
            credit.balance,
        )
        self._chain(seq, entry_bytes)
        self._writes[keys.history_key(debit.id, seq)] = debit_history
        self._writes[keys.history_key(credit.id, seq)] = credit_history
        if self._observe is not None:
            self._observe(debit.id, now_ms, debit_delta, credit.id)
            self._observe(credit.id, now_ms, credit_delta, debit.id)
        self.transfers_applied += 1
        return transfer_bytes

    # ------------------------------------------------------------------ two-phase commit
    #
    # Each item's answer is a serialized Leg: the bytes of the leg as stored
    # (written by this drain or read back) with the item's outcome appended
    # (`_leg_answer`), so a LegsResponse is parsed once instead of copying a
    # Leg message per item. New legs are built from their `Body` as bytes.

    def _prepare(self, item: ledger_pb2.PrepareItem, epoch: int, now_ms: int) -> bytes:
        role, given = item.role, item.transfer
        try:
            if role not in (DEBIT, CREDIT):
                raise errors.invalid(errors.INVALID_ARGUMENT, "role must be DEBIT or CREDIT")
            body = self._body(given, cross_shard=True)
            _check_review_deadline(body.review_deadline_unix_ms, now_ms)
        except BankError as error:
            return _leg_refused(given, role, error)
        key = keys.transfer_key(body.id) if role == DEBIT else keys.leg_key(body.id)
        found = self._read_record(key)
        if found is not None:
            stored, record = found
            # A single-shard record under this id (role 0) with the same body:
            # the transfer was settled here before a slot move made it
            # cross-shard. Its answer keeps role 0, which tells the
            # coordinator to follow it and ABORT the credit leg (finishing
            # that leg with COMMIT would credit a second time).
            if not _same_body(record.transfer, body) or record.role not in (role, _single(role)):
                return _leg_refused(given, role, _id_conflict())
            return _leg_answer(stored, record)
        refused, account = self._new_leg(body, role, key, epoch, now_ms)
        if account is None:
            return refused
        account_id, amount = account.id, body.amount
        if role == DEBIT:
            account.held += amount
            posting = records.posting(account_id, held_delta=amount)
        else:
            account.pending_credit += amount
            posting = records.posting(account_id, pending_credit_delta=amount)
        self._touch(account, now_ms)
        deadline_ms = body.review_deadline_unix_ms
        reason = errors.UNDER_REVIEW if deadline_ms else ""
        transfer_bytes = body.encoded(types_pb2.TRANSFER_STATUS_PENDING, now_ms, True, 0, reason)
        kind = types_pb2.JOURNAL_KIND_LEG_PREPARED
        _, stored = self._record_new_leg(
            key, transfer_bytes, body.id, role, PREPARED, epoch, now_ms, kind, [posting]
        )
        # A review hold waits on purpose: it counts as in doubt (presumed
        # abandoned by recovery) from its deadline on, not from now.
        doubt_from_ms = max(now_ms, deadline_ms)
        self.in_doubt[(role, body.id)] = doubt_from_ms
        self._writes[keys.in_doubt_key(role, body.id)] = keys.u64(doubt_from_ms)
        return stored

    def _new_leg(
        self, body: Body, role: int, key: bytes, epoch: int, now_ms: int
    ) -> tuple[bytes, AccountState | None]:
        """Check a leg (or record) new to this shard as Prepare does: slot here
        and not moving, then the account's own refusals. Refused: (the answer,
        None), a business refusal recorded ABORTED (final for the id). Else
        (b"", its account): the caller records the leg."""
        account_id = body.debit_account_id if role == DEBIT else body.credit_account_id
        if not self._owns(account_id):
            return _body_refused(body, role, _slot_moved(account_id)), None
        if self._moving(account_id):
            return _body_refused(body, role, _slot_moving(account_id)), None
        if role == DEBIT:
            refusal = self._debit_refusal(account_id, body)
        else:
            refusal = self._credit_refusal(account_id, body)
        if refusal is not None:
            code, reason = refusal.code_value, refusal.reason
            status = types_pb2.TRANSFER_STATUS_ABORTED
            transfer_bytes = body.encoded(status, now_ms, True, code, reason, refusal.message)
            kind = types_pb2.JOURNAL_KIND_LEG_ABORTED
            _, stored = self._record_new_leg(
                key, transfer_bytes, body.id, role, ABORTED, epoch, now_ms, kind, []
            )
            # An ABORTED leg answers with why it aborted: what a Prepare
            # caller needs to abort the other leg.
            return stored + records.leg_outcome(code, reason), None
        account = self.accounts[account_id]
        invariant(account.type != SYSTEM, f"transfer {body.id}: 2PC leg on a cash account")
        return b"", account

    def _record_new_leg(
        self,
        key: bytes,
        transfer_bytes: bytes,
        transfer_id: str,
        role: int,
        state: int,
        epoch: int,
        now_ms: int,
        kind: types_pb2.JournalKind.ValueType,
        postings: list[bytes],
    ) -> tuple[int, bytes]:
        """Store a leg first recorded now (prepared_at = now) and journal it:
        (journal seq, the stored leg bytes)."""
        stored = records.leg(transfer_bytes, role, state, epoch, now_ms)
        self._writes[key] = stored
        seq = self._journal_transfer(kind, now_ms, transfer_id, postings, transfer_bytes, epoch, role)
        return seq, stored

    def _record_leg(
        self,
        key: bytes,
        record: ledger_pb2.Leg,
        kind: types_pb2.JournalKind.ValueType,
        postings: list[bytes],
        now_ms: int,
    ) -> tuple[int, bytes, bytes]:
        """Store a leg and journal it, its transfer serialized once for both:
        (journal seq, transfer bytes, the stored leg bytes)."""
        invariant(record.code == 0 and not record.reason, "a stored leg carries no request outcome")
        transfer = record.transfer
        # Transfer has no map field: its plain serialization is the
        # deterministic one, without parsing the keyword (tests/unit/test_records.py).
        transfer_bytes = transfer.SerializeToString()
        role, epoch = record.role, record.epoch
        stored = records.leg(transfer_bytes, role, record.state, epoch, record.prepared_at_unix_ms)
        self._writes[key] = stored
        seq = self._journal_transfer(kind, now_ms, transfer.id, postings, transfer_bytes, epoch, role)
        return seq, transfer_bytes, stored

    def _resolve(self, item: ledger_pb2.DecideItem, role: int, epoch: int, now_ms: int) -> bytes:
        """Decide (role DEBIT, the record holder) or Finish (role CREDIT)."""
        has_body = item.HasField("transfer")
        given = item.transfer if has_body else types_pb2.Transfer(id=item.transfer_id)
        try:
            transfer_id = ids.normalize_transfer_id(item.transfer_id)
            if item.decision not in (COMMIT, ABORT):
                raise errors.invalid(errors.INVALID_ARGUMENT, "decision must be COMMIT or ABORT")
            if len(item.reason) > limits.STATUS_REASON_LENGTH_MAX:
                raise errors.invalid(errors.INVALID_REASON, "reason is too long")
            if item.direct and (role != DEBIT or not has_body):
                raise errors.invalid(errors.INVALID_ARGUMENT, "a direct decide is a Decide with the body")
        except BankError as error:
            return _leg_refused(given, role, error)
        key = keys.transfer_key(transfer_id) if role == DEBIT else keys.leg_key(transfer_id)
        found = self._read_record(key)
        body = None
        if has_body:
            try:
                body = self._decided_body(
                    item.transfer, transfer_id, None if found is None else found[1], role
                )
            except BankError as error:
                return _leg_refused(given, role, error)
        if found is None:
            return self._resolve_unknown(item, role, transfer_id, body, epoch, now_ms)
        stored, record = found
        if record.role not in (role, _single(role)) or (
            body is not None and not _same_body(record.transfer, body)
        ):
            return _leg_refused(given, role, _id_conflict())
        if record.role != role:  # settled single-shard (see _prepare): its state, unchanged
            return _leg_answer(stored, record, done=True)
        wanted = COMMITTED if item.decision == COMMIT else ABORTED
        if record.state == wanted:
            return _leg_answer(stored, record, done=True)
        if item.direct and record.state == PREPARED and record.transfer.review_deadline_unix_ms:
            # A review hold waits for its officer: a direct decide is a plain
            # (re-)submission that never prepared here, so it decides nothing.
            return _leg_answer(stored, record)
        if record.state != PREPARED:
            contradiction = errors.precondition(
                errors.CONTRADICTORY_DECISION,
                f"transfer {transfer_id} is already {ledger_pb2.LegState.Name(record.state)}",
            )
            return _leg_answer(stored, record, contradiction)
        deadline_ms = record.transfer.review_deadline_unix_ms
        if role == DEBIT and wanted == COMMITTED and deadline_ms and now_ms >= deadline_ms:
            # The record holder's clock has the last word on a review's
            # deadline: an approval that arrives late does not move money.
            expired = errors.precondition(errors.REVIEW_EXPIRED, f"review of {transfer_id} expired")
            return _leg_answer(stored, record, expired)
        return self._settle(record, key, wanted, item, epoch, now_ms)

    def _decided_body(
        self, given: types_pb2.Transfer, transfer_id: str, record: ledger_pb2.Leg | None, role: int
    ) -> Body | None:
        """The checked body of a Decide/Finish item, or INVALID_ARGUMENT;
        None when it is the body of `record` itself.

        The common case is the leg this shard prepared, asked about with the
        very body it stored: that body passed `_body` at Prepare, so an equal
        one needs no second pass (the Luhn check of the other shard's account
        was a tenth of a node's 2PC time). Anything else (no record, a
        tombstone, a single-shard record, another body) is checked in full,
        so errors come out exactly as before."""
        if (
            record is not None
            and record.role == role
            and record.transfer.kind != types_pb2.TRANSFER_KIND_UNSPECIFIED
            and client_body(record.transfer) == client_body(given)
            and ids.normalize_transfer_id(given.id) == transfer_id
        ):
            return None
        body = self._body(given, cross_shard=True)
        if body.id != transfer_id:
            raise errors.invalid(errors.INVALID_TRANSFER_ID, "transfer.id differs from transfer_id")
        return body

    def _resolve_unknown(
        self,
        item: ledger_pb2.DecideItem,
        role: int,
        transfer_id: str,
        body: Body | None,
        epoch: int,
        now_ms: int,
    ) -> bytes:
        """No record here: COMMIT is refused, ABORT leaves a tombstone (presumed abort)."""
        if item.decision == COMMIT and item.direct and body is not None:
            return self._commit_unprepared(body, epoch, now_ms)
        given = types_pb2.Transfer(id=transfer_id) if body is None else body.message(cross_shard=True)
        if item.decision == COMMIT:
            return _leg_refused(given, role, errors.not_found(errors.TRANSFER_NOT_FOUND, "no such leg here"))
        if body is not None:
            account_id = body.debit_account_id if role == DEBIT else body.credit_account_id
            if not self._owns(account_id):
                return _leg_refused(given, role, _slot_moved(account_id))
            if self._moving(account_id):
                return _leg_refused(given, role, _slot_moving(account_id))
        tombstone = given
        tombstone.status = types_pb2.TRANSFER_STATUS_ABORTED
        tombstone.created_at_unix_ms = tombstone.updated_at_unix_ms = now_ms
        tombstone.code = item.code or grpc.StatusCode.ABORTED.value[0]
        tombstone.reason = item.reason
        record = ledger_pb2.Leg(transfer=tombstone, role=role, state=ABORTED, epoch=epoch)  # type: ignore[arg-type]
        key = keys.transfer_key(transfer_id) if role == DEBIT else keys.leg_key(transfer_id)
        _, _, stored = self._record_leg(key, record, types_pb2.JOURNAL_KIND_LEG_ABORTED, [], now_ms)
        return stored  # done as asked: no outcome

    def _commit_unprepared(self, body: Body, epoch: int, now_ms: int) -> bytes:
        """A direct COMMIT at the record holder with no record yet: the credit
        leg is PREPARED elsewhere, so check the debit as a Prepare would and
        post it in the same step: the record is the decision, written once
        (no hold, no in-doubt entry, one journal entry instead of two)."""
        if body.review_deadline_unix_ms:
            review = errors.invalid(errors.INVALID_ARGUMENT, "a review hold is prepared, not decided direct")
            return _body_refused(body, DEBIT, review)
        key = keys.transfer_key(body.id)
        refused, account = self._new_leg(body, DEBIT, key, epoch, now_ms)
        if account is None:
            return refused
        account_id, amount = account.id, body.amount
        account.balance -= amount
        self._touch(account, now_ms)
        transfer_bytes = body.encoded(types_pb2.TRANSFER_STATUS_COMMITTED, now_ms, True)
        posting = records.posting(account_id, -amount)
        kind = types_pb2.JOURNAL_KIND_LEG_COMMITTED
        seq, stored = self._record_new_leg(
            key, transfer_bytes, body.id, DEBIT, COMMITTED, epoch, now_ms, kind, [posting]
        )
        self._history(account, transfer_bytes, -amount, seq)
        self.transfers_applied += 1
        if self._observe is not None:
            self._observe(account_id, now_ms, -amount, body.credit_account_id)
        return stored  # done as asked: no outcome

    def _settle(
        self,
        record: ledger_pb2.Leg,
        key: bytes,
        wanted: ledger_pb2.LegState.ValueType,
        item: ledger_pb2.DecideItem,
        epoch: int,
        now_ms: int,
    ) -> bytes:
        """PREPARED -> COMMITTED or ABORTED, moving the hold / pending credit;
        returns the answer (the settled leg, done as asked)."""
        transfer = record.transfer
        amount = transfer.amount
        debit_side = record.role == DEBIT
        account_id = transfer.debit_account_id if debit_side else transfer.credit_account_id
        account = self._existing(account_id, f"transfer {transfer.id}: prepared leg")
        balance_delta = 0
        if debit_side:
            invariant(account.held >= amount, f"transfer {transfer.id}: hold {account.held} < {amount}")
            account.held -= amount
            if wanted == COMMITTED:
                balance_delta = -amount
            posting = records.posting(account_id, balance_delta, held_delta=-amount)
        else:
            invariant(account.pending_credit >= amount, f"transfer {transfer.id}: pending credit < {amount}")
            account.pending_credit -= amount
            if wanted == COMMITTED:
                balance_delta = amount
            posting = records.posting(account_id, balance_delta, pending_credit_delta=-amount)
        account.balance += balance_delta
        self._touch(account, now_ms)
        record.state = wanted
        record.epoch = epoch
        transfer.updated_at_unix_ms = now_ms
        if wanted == COMMITTED:
            transfer.status = types_pb2.TRANSFER_STATUS_COMMITTED
            _set_outcome(transfer, None)
            kind = types_pb2.JOURNAL_KIND_LEG_COMMITTED
        else:
            transfer.status = types_pb2.TRANSFER_STATUS_ABORTED
            transfer.code = item.code or grpc.StatusCode.ABORTED.value[0]
            transfer.reason, transfer.message = item.reason, ""
            kind = types_pb2.JOURNAL_KIND_LEG_ABORTED
        seq, transfer_bytes, stored = self._record_leg(key, record, kind, [posting], now_ms)
        if wanted == COMMITTED:
            self._history(account, transfer_bytes, balance_delta, seq)
            self.transfers_applied += 1
            if self._observe is not None:
                other = transfer.credit_account_id if debit_side else transfer.debit_account_id
                self._observe(account_id, now_ms, balance_delta, other)
        del self.in_doubt[(record.role, transfer.id)]
        self._writes[keys.in_doubt_key(record.role, transfer.id)] = None
        return stored

    # ------------------------------------------------------------------ reads (durable state only)

    def get_account(self, account_id: int) -> ledger_pb2.AccountResult:
        if ids.is_customer_account_id(account_id) and not self._owns(account_id):
            return _account_refused(account_id, _slot_moved(account_id))
        if self.staged and slot_data.in_slots(account_id, self.staged):
            return _account_refused(account_id, _slot_moving(account_id))
        account = self.accounts.get(account_id)
        if account is None:
            return _account_refused(
                account_id, errors.not_found(errors.ACCOUNT_NOT_FOUND, f"no account {account_id}")
            )
        return ledger_pb2.AccountResult(account=account.to_proto())

    def get_transfer(self, transfer_id: str) -> types_pb2.Transfer:
        """The record held here, else the credit leg, else code NOT_FOUND."""
        try:
            transfer_id = ids.normalize_transfer_id(transfer_id)
        except BankError as error:
            return _rejected(types_pb2.Transfer(id=transfer_id[: ids.TRANSFER_ID_LENGTH_MAX]), error)
        for key in (keys.transfer_key(transfer_id), keys.leg_key(transfer_id)):
            value = self._reader(key)
            if value is not None:
                record = ledger_pb2.Leg.FromString(value)
                invariant(
                    record.transfer.status == _TRANSFER_STATUS_OF_STATE.get(record.state),
                    f"transfer {transfer_id}: stored status disagrees with its leg state",
                )
                return record.transfer
        missing = types_pb2.Transfer(id=transfer_id)
        _set_outcome(missing, errors.not_found(errors.TRANSFER_NOT_FOUND, "no such transfer here"))
        return missing

    def review_holds(self, now_ms: int) -> int:
        """PREPARED legs waiting for a review whose deadline is still ahead."""
        return sum(1 for doubt_from in self.in_doubt.values() if doubt_from > now_ms)

    def in_doubt_legs(self, now_ms: int, older_than_ms: int, limit: int) -> list[ledger_pb2.Leg]:
        """PREPARED records and legs in doubt for at least older_than_ms,
        oldest first (a review hold from its deadline on)."""
        limit = min(limit or IN_DOUBT_LIMIT_DEFAULT, limits.BATCH_ITEMS_MAX)
        due = sorted(
            (prepared_at, role, transfer_id)
            for (role, transfer_id), prepared_at in self.in_doubt.items()
            if prepared_at <= now_ms - older_than_ms
        )
        legs = []
        for _, role, transfer_id in due[:limit]:
            key = keys.transfer_key(transfer_id) if role == DEBIT else keys.leg_key(transfer_id)
            value = self._reader(key)
            if value is None:
                raise InvariantViolation(f"in-doubt index names missing leg {transfer_id}")
            record = ledger_pb2.Leg.FromString(value)
            invariant(record.state == PREPARED, f"in-doubt index names settled leg {transfer_id}")
            if self._is_copy(record):
                continue  # a staged copy: the source resolves the original
            legs.append(record)
        return legs

    def _is_copy(self, record: ledger_pb2.Leg) -> bool:
        account_id = slot_data.record_account(record)
        return not self._owns(account_id) or slot_data.in_slots(account_id, self.staged)

    def in_doubt_in(self, slot_set: set[int], now_ms: int) -> int:
        """PREPARED records and legs of accounts in `slot_set` that are in
        doubt now (a move waits for 0). A review hold before its deadline is
        not: it may wait a day for an officer, and it moves with its slot as a
        PREPARED record (the import keeps its deadline in the index)."""
        count = 0
        for (role, transfer_id), doubt_from_ms in self.in_doubt.items():
            if doubt_from_ms > now_ms:
                continue
            key = keys.transfer_key(transfer_id) if role == DEBIT else keys.leg_key(transfer_id)
            value = self._reader(key)
            if value is None:
                raise InvariantViolation(f"in-doubt index names missing leg {transfer_id}")
            count += slot_data.in_slots(slot_data.record_account(ledger_pb2.Leg.FromString(value)), slot_set)
        return count

    # ------------------------------------------------------------------ slot moves (docs/moves.md)

    def _mark(self, request: ledger_pb2.MarkSlotsRequest) -> Response:
        """FENCED (source), STAGED (target) or NONE; durable with the drain."""
        fence = self._fence(request.epoch, 1)
        if fence is not None:
            return fence
        chosen = set(request.slots)
        if not chosen or any(slot >= slots.SLOT_COUNT for slot in chosen):
            return errors.invalid(errors.INVALID_ARGUMENT, f"slots must be 0..{slots.SLOT_COUNT - 1}")
        if request.mark == ledger_pb2.SLOT_MARK_FENCED:
            if chosen & self.staged:
                return errors.precondition(errors.SLOT_NOT_STAGED, "slots staged here cannot be fenced")
            self.fenced |= chosen
        elif request.mark == ledger_pb2.SLOT_MARK_STAGED:
            if chosen & self.fenced:
                return errors.precondition(errors.SLOT_NOT_STAGED, "slots fenced here cannot be staged")
            self.staged |= chosen
            if self.checkpoint.move_id != request.move_id:
                self.checkpoint = ledger_pb2.ImportCheckpoint(move_id=request.move_id)
                self._writes[keys.META_IMPORT] = self.checkpoint.SerializeToString(deterministic=True)
        elif request.mark == ledger_pb2.SLOT_MARK_NONE:
            self.fenced -= chosen
            self.staged -= chosen
        else:
            return errors.invalid(errors.INVALID_ARGUMENT, "mark must be NONE, FENCED or STAGED")
        self._writes[keys.META_FENCED] = slot_data.encode_slots(self.fenced)
        self._writes[keys.META_STAGED] = slot_data.encode_slots(self.staged)
        return self.mark_state(request.move_id)

    def mark_state(self, move_id: str) -> ledger_pb2.MarkSlotsResponse:
        checkpoint = self.checkpoint if move_id and self.checkpoint.move_id == move_id else None
        return ledger_pb2.MarkSlotsResponse(
            fenced_slots=sorted(self.fenced),
            staged_slots=sorted(self.staged),
            checkpoint=checkpoint,
            journal_seq=self.journal_seq,
        )

    def _import(self, request: ledger_pb2.ImportSlotsRequest, now_ms: int) -> Response:
        """Copies from the source into STAGED slots, journaled so that replay
        rebuilds them, with the move's checkpoint in the same write."""
        fence = self._fence(request.epoch, 1)
        if fence is not None:
            return fence
        count = len(request.accounts) + len(request.records) + len(request.history)
        if count > limits.BATCH_ITEMS_MAX:
            return errors.BankError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, errors.BATCH_TOO_LARGE, "too many items in one import"
            )
        if not request.move_id or request.checkpoint.move_id != request.move_id:
            return errors.invalid(errors.INVALID_ARGUMENT, "an import needs its move id and checkpoint")
        if request.move_id != self.checkpoint.move_id:
            return errors.precondition(errors.SLOT_NOT_STAGED, f"no move {request.move_id} staged here")
        named = [a.id for a in request.accounts] + [h.account_id for h in request.history]
        named += [slot_data.record_account(r) for r in request.records]
        if any(not slot_data.in_slots(account_id, self.staged) for account_id in named):
            return errors.precondition(errors.SLOT_NOT_STAGED, "an item is outside the slots staged here")
        conflict = _malformed_import(request) or self._import_conflict(request.records)
        if conflict is not None:
            return conflict
        for account in request.accounts:
            self._import_account(account, now_ms)
        for record in request.records:
            self._import_record(record, now_ms)
        for moved in request.history:
            seq = self._journal(
                types_pb2.JournalEntry(
                    kind=types_pb2.JOURNAL_KIND_HISTORY_IMPORTED,
                    at_unix_ms=now_ms,
                    account_id=moved.account_id,
                    transfer_id=moved.entry.transfer.id,
                )
            )
            entry = types_pb2.HistoryEntry()
            entry.CopyFrom(moved.entry)
            entry.journal_seq = seq
            self._writes[keys.history_key(moved.account_id, seq)] = entry.SerializeToString(
                deterministic=True
            )
        self.checkpoint = ledger_pb2.ImportCheckpoint()
        self.checkpoint.CopyFrom(request.checkpoint)
        self._writes[keys.META_IMPORT] = self.checkpoint.SerializeToString(deterministic=True)
        return ledger_pb2.ImportSlotsResponse(checkpoint=self.checkpoint)

    def _import_conflict(self, incoming: Sequence[ledger_pb2.Leg]) -> BankError | None:
        """A record of ours (not a staged copy) under an incoming id: the same
        id was used on two shards; never overwrite it."""
        for record in incoming:
            key = (
                keys.leg_key(record.transfer.id)
                if record.role == CREDIT
                else keys.transfer_key(record.transfer.id)
            )
            existing = self._read_leg(key)
            if existing is not None and not slot_data.in_slots(
                slot_data.record_account(existing), self.staged
            ):
                return BankError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    errors.TRANSFER_ID_CONFLICT,
                    f"transfer {record.transfer.id} is recorded here for another account",
                )
        return None

    def _import_account(self, account: types_pb2.Account, now_ms: int) -> None:
        invariant(ids.is_customer_account_id(account.id), f"import of cash account {account.id}")
        state = AccountState.from_proto(account)
        check_account_invariants(state)
        self.accounts[state.id] = state
        self._dirty.add(state.id)
        self._journal_account(types_pb2.JOURNAL_KIND_ACCOUNT_IMPORTED, state, now_ms)

    def _import_record(self, given: ledger_pb2.Leg, now_ms: int) -> None:
        record = ledger_pb2.Leg()
        record.CopyFrom(given)
        record.code, record.reason = 0, ""
        transfer_id = ids.normalize_transfer_id(record.transfer.id)
        role = record.role
        key = keys.leg_key(transfer_id) if role == CREDIT else keys.transfer_key(transfer_id)
        self._writes[key] = record.SerializeToString(deterministic=True)
        self._journal(
            types_pb2.JournalEntry(
                kind=types_pb2.JOURNAL_KIND_RECORD_IMPORTED,
                at_unix_ms=now_ms,
                transfer_id=transfer_id,
                transfer=record.transfer,
                role=role,
                epoch=record.epoch,
                leg_state=record.state,
            )
        )
        pair = (role, transfer_id)
        if record.state == PREPARED:
            # In doubt from the same moment as on the source: a review hold
            # only from its deadline (see _prepare).
            doubt_from_ms = max(record.prepared_at_unix_ms, record.transfer.review_deadline_unix_ms)
            self.in_doubt[pair] = doubt_from_ms
            self._writes[keys.in_doubt_key(role, transfer_id)] = keys.u64(doubt_from_ms)
        elif pair in self.in_doubt:
            del self.in_doubt[pair]
            self._writes[keys.in_doubt_key(role, transfer_id)] = None

    def _release(self, plan: ReleasePlan, now_ms: int) -> Response:
        """Drop what a ReleaseSlots scan chose, journaled (verify stays whole)."""
        fence = self._fence(plan.epoch, 1)
        if fence is not None:
            return fence
        released_accounts = released_records = 0
        for account_id in plan.accounts:
            account = self.accounts.pop(account_id, None)
            if account is None:
                continue
            invariant(account.type != SYSTEM, f"release of cash account {account_id}")
            self._dirty.discard(account_id)
            self._writes[keys.account_key(account_id)] = None
            self._journal(
                types_pb2.JournalEntry(
                    kind=types_pb2.JOURNAL_KIND_ACCOUNT_RELEASED, at_unix_ms=now_ms, account_id=account_id
                )
            )
            released_accounts += 1
        for key in plan.record_keys:
            record = self._read_leg(key)
            if record is None:
                continue
            transfer_id = record.transfer.id
            pair = (record.role, transfer_id)
            # A prepared original may go only as a review hold (copied to the
            # target like any record; a move never waits a day for an officer);
            # a 2PC leg in flight must have ended before the fence lifted.
            invariant(
                record.state != PREPARED
                or record.transfer.review_deadline_unix_ms > 0
                or slot_data.in_slots(slot_data.record_account(record), self.staged),
                f"transfer {transfer_id}: release of a prepared original",
            )
            self._writes[key] = None
            self._journal(
                types_pb2.JournalEntry(
                    kind=types_pb2.JOURNAL_KIND_RECORD_RELEASED,
                    at_unix_ms=now_ms,
                    transfer_id=transfer_id,
                    transfer=types_pb2.Transfer(id=transfer_id),
                    role=record.role,
                )
            )
            if pair in self.in_doubt:
                del self.in_doubt[pair]
                self._writes[keys.in_doubt_key(record.role, transfer_id)] = None
            released_records += 1
        for key in plan.history_keys:
            self._writes[key] = None
        if plan.done:
            self.fenced -= plan.slots
            self.staged -= plan.slots
            self._writes[keys.META_FENCED] = slot_data.encode_slots(self.fenced)
            self._writes[keys.META_STAGED] = slot_data.encode_slots(self.staged)
            if self.checkpoint.move_id == plan.move_id:
                self.checkpoint = ledger_pb2.ImportCheckpoint()
                self._writes[keys.META_IMPORT] = None
        return ledger_pb2.ReleaseSlotsResponse(
            accounts=released_accounts,
            records=released_records,
            history=len(plan.history_keys),
            done=plan.done,
        )


# Longest review a transfer may be held for (the gateway's deadlines are far
# shorter); a bound so a bad value cannot hold money for ever.
REVIEW_HOLD_MS_MAX = 30 * 24 * 3600 * 1000


def _check_review_deadline(deadline_ms: int, now_ms: int) -> None:
    """A 2PC leg keeps the gateway's review deadline (and risk assessment,
    both outside the body two submissions must agree on): within bounds."""
    if deadline_ms < 0 or deadline_ms > now_ms + REVIEW_HOLD_MS_MAX:
        raise errors.invalid(errors.INVALID_REVIEW_DEADLINE, "review deadline is out of range")


def _usable(account: AccountState, transfer: types_pb2.Transfer | Body) -> BankError | None:
    if account.currency != transfer.currency:
        return errors.precondition(errors.CURRENCY_MISMATCH, f"account {account.id} is in {account.currency}")
    if account.status == CLOSED:
        return errors.precondition(errors.ACCOUNT_CLOSED, f"account {account.id} is closed")
    if account.status == FROZEN:
        return errors.precondition(errors.ACCOUNT_FROZEN, f"account {account.id} is frozen")
    return None


def _status_target(
    account: AccountState, action: int
) -> tuple[types_pb2.AccountStatus.ValueType, BankError | None]:
    """The status an action leads to, or why it may not happen now."""
    if account.status == CLOSED:
        return CLOSED, errors.precondition(errors.ACCOUNT_CLOSED, "account is closed")
    if action == ledger_pb2.STATUS_ACTION_FREEZE:
        if account.status == FROZEN:
            return FROZEN, errors.precondition(errors.ACCOUNT_ALREADY_FROZEN, "account is already frozen")
        return FROZEN, None
    if action == ledger_pb2.STATUS_ACTION_UNFREEZE:
        if account.status != FROZEN:
            return ACTIVE, errors.precondition(errors.ACCOUNT_NOT_FROZEN, "account is not frozen")
        return ACTIVE, None
    if account.status == FROZEN:
        return CLOSED, errors.precondition(errors.ACCOUNT_FROZEN, "unfreeze the account before closing it")
    if account.balance != 0:
        return CLOSED, errors.precondition(errors.BALANCE_NOT_ZERO, "balance must be 0 to close")
    if account.held != 0 or account.pending_credit != 0:
        return CLOSED, errors.precondition(errors.FUNDS_HELD, "transfers are still pending on the account")
    return CLOSED, None


def _date_of(now_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()
