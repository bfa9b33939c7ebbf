"""Edge checks of every public request: pure functions, no I/O.

Each `check_*` takes one item as the caller sent it and returns a clean copy
to send on (normalized ids and phones, output fields dropped), or raises
`BankError` (INVALID_ARGUMENT with a stable reason). The servicer turns a
raised item error into that item's outcome (code 3, REJECTED for transfers)
and sends the rest on; whole-request problems (batch size, page size of a
read) are raised for the whole call.

The same checks run again at the node (the last line of defence); the
gateway's job is to refuse early, precisely and before anything is recorded,
so an INVALID_ARGUMENT never costs a transfer id.
"""

from __future__ import annotations

import re
from collections.abc import Sized

import grpc

from shardbank import errors, identity, ids, limits, money

# Transfer shape checks are shared with the coordinator; re-exported here so
# the gateway has one module of edge checks.
from shardbank.transfer_checks import TRANSFER_KINDS as TRANSFER_KINDS
from shardbank.transfer_checks import check_customer_account_id as check_customer_account_id
from shardbank.transfer_checks import check_text as check_text
from shardbank.transfer_checks import check_transfer as check_transfer
from shardbank.transfer_checks import has_forbidden_characters as has_forbidden_characters
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2

# Opaque token of ListHistory; bounded so a caller cannot ship megabytes.
PAGE_TOKEN_LENGTH_MAX = 512
# Holder.customer_id: a principal name, bounded like an actor.
CUSTOMER_ID_LENGTH_MAX = limits.ACTOR_LENGTH_MAX

OPENABLE_TYPES = frozenset({types_pb2.ACCOUNT_TYPE_PERSONAL, types_pb2.ACCOUNT_TYPE_BUSINESS})
STATUS_ACTIONS = frozenset(
    {ledger_pb2.STATUS_ACTION_FREEZE, ledger_pb2.STATUS_ACTION_UNFREEZE, ledger_pb2.STATUS_ACTION_CLOSE}
)


# Whole requests.


def check_batch(items: Sized) -> None:
    """1..BATCH_ITEMS_MAX items; else the whole call is refused."""
    if len(items) == 0:
        raise errors.invalid(errors.BATCH_EMPTY, "the batch has no items")
    if len(items) > limits.BATCH_ITEMS_MAX:
        raise errors.BankError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            errors.BATCH_TOO_LARGE,
            f"{len(items)} items; at most {limits.BATCH_ITEMS_MAX} per call",
        )


def check_actor(actor: str) -> None:
    if len(actor) > limits.ACTOR_LENGTH_MAX or has_forbidden_characters(actor):
        raise errors.invalid(
            errors.INVALID_ARGUMENT, f"actor must be at most {limits.ACTOR_LENGTH_MAX} printable characters"
        )


def check_history_request(request: ledger_pb2.ListHistoryRequest) -> ledger_pb2.ListHistoryRequest:
    check_customer_account_id(request.account_id)
    if request.page_size > limits.HISTORY_PAGE_SIZE_MAX:
        raise errors.invalid(
            errors.INVALID_PAGE_SIZE, f"page_size must be 0..{limits.HISTORY_PAGE_SIZE_MAX} (0 means default)"
        )
    if len(request.page_token) > PAGE_TOKEN_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_PAGE_TOKEN, "page_token is not one this service issued")
    return ledger_pb2.ListHistoryRequest(
        account_id=request.account_id, page_size=request.page_size, page_token=request.page_token
    )


def check_lookup_account_id(account_id: int) -> None:
    """GetAccount takes customer and system (cash) accounts. A cash account id
    ends in the ISO numeric code of a currency we know; any other id below
    10^15 names no account that can exist (and must not be routed to a shard)."""
    ids.check_account_id(account_id)
    if ids.is_system_account_id(account_id) and ids.system_account_currency(account_id) is None:
        raise errors.invalid(
            errors.INVALID_ACCOUNT_ID, "not a cash account id: shard index * 1000 + a currency's ISO code"
        )


def check_transfer_id_lookup(text: str) -> str:
    return ids.normalize_transfer_id(text)


# Items.


def check_submitted_transfer(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """A client's transfer: `check_transfer`, and no field only the gateway
    sets (the risk decision, a review deadline) may come from the client."""
    if transfer.HasField("risk") or transfer.review_deadline_unix_ms:
        raise errors.invalid(
            errors.INVALID_ARGUMENT, "risk and review_deadline_unix_ms are set by the bank, not by clients"
        )
    return check_transfer(transfer)


_IDEMPOTENCY_KEY_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{limits.IDEMPOTENCY_KEY_LENGTH_MAX}}}")


def check_open(item: bank_pb2.OpenAccountRequest) -> types_pb2.Account:
    """The account to create (id 0: routing picks it), or raises BankError."""
    money.currency(item.currency)
    if item.type not in OPENABLE_TYPES:
        raise errors.invalid(errors.INVALID_ACCOUNT_TYPE, "type must be PERSONAL or BUSINESS")
    holder = check_holder(item.holder)
    if not 0 <= item.overdraft_limit <= limits.OVERDRAFT_LIMIT_MAX_MINOR:
        raise errors.invalid(
            errors.INVALID_OVERDRAFT_LIMIT,
            f"overdraft_limit must be 0..{limits.OVERDRAFT_LIMIT_MAX_MINOR} minor units",
        )
    if item.idempotency_key and not _IDEMPOTENCY_KEY_RE.fullmatch(item.idempotency_key):
        raise errors.invalid(
            errors.INVALID_IDEMPOTENCY_KEY,
            f"idempotency_key must be 1-{limits.IDEMPOTENCY_KEY_LENGTH_MAX} of A-Z a-z 0-9 . _ : -",
        )
    return types_pb2.Account(
        currency=item.currency, type=item.type, holder=holder, overdraft_limit=item.overdraft_limit
    )


def check_holder(holder: types_pb2.Holder) -> types_pb2.Holder:
    identity.check_name(holder.name)
    id_number = holder.id_number.upper()
    if holder.id_type == types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID:
        identity.check_cn_resident_id(id_number)
    elif holder.id_type == types_pb2.ID_DOCUMENT_TYPE_PASSPORT:
        identity.check_passport(id_number)
    else:
        raise errors.invalid(errors.INVALID_ID_NUMBER, "id_type must be CN_RESIDENT_ID or PASSPORT")
    phone = identity.normalize_phone(holder.phone)
    identity.check_phone(phone)
    country = holder.country.upper()
    identity.check_country(country)
    if len(holder.customer_id) > CUSTOMER_ID_LENGTH_MAX or has_forbidden_characters(holder.customer_id):
        raise errors.invalid(
            errors.INVALID_ARGUMENT,
            f"customer_id must be at most {CUSTOMER_ID_LENGTH_MAX} printable characters",
        )
    return types_pb2.Holder(
        name=holder.name,
        id_type=holder.id_type,
        id_number=id_number,
        phone=phone,
        customer_id=holder.customer_id,
        country=country,
    )


def check_contact_update(update: ledger_pb2.ContactUpdate) -> ledger_pb2.ContactUpdate:
    check_customer_account_id(update.account_id)
    if not update.phone and not update.name:
        raise errors.invalid(errors.INVALID_ARGUMENT, "nothing to update: give a phone, a name or both")
    phone = ""
    if update.phone:
        phone = identity.normalize_phone(update.phone)
        identity.check_phone(phone)
    if update.name:
        identity.check_name(update.name)
    return ledger_pb2.ContactUpdate(account_id=update.account_id, phone=phone, name=update.name)


def check_status_item(item: ledger_pb2.StatusRequestItem) -> ledger_pb2.StatusRequestItem:
    check_customer_account_id(item.account_id)
    if item.action not in STATUS_ACTIONS:
        raise errors.invalid(errors.INVALID_ACTION, "action must be FREEZE, UNFREEZE or CLOSE")
    reason_max = limits.STATUS_REASON_LENGTH_MAX
    if not 1 <= len(item.reason) <= reason_max or has_forbidden_characters(item.reason):
        raise errors.invalid(errors.INVALID_REASON, f"reason must be 1..{reason_max} printable characters")
    return ledger_pb2.StatusRequestItem(account_id=item.account_id, action=item.action, reason=item.reason)


# Text.
