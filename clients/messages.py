"""Pure request building (the `messages` of one call) and outcome checking shared by the sync and async
clients: no channels, no I/O, so the two clients differ only in how they call.
"""

from __future__ import annotations

from typing import TypeVar

import grpc

from clients import errors
from shardbank import errors as bank_errors
from shardbank import ids
from shardbank.v1 import bank_pb2, ledger_pb2, risk_pb2, types_pb2

ACCOUNT_TYPES: dict[str, types_pb2.AccountType.ValueType] = {
    "personal": types_pb2.ACCOUNT_TYPE_PERSONAL,
    "business": types_pb2.ACCOUNT_TYPE_BUSINESS,
}
ID_TYPES: dict[str, types_pb2.IdDocumentType.ValueType] = {
    "cn_resident_id": types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
    "passport": types_pb2.ID_DOCUMENT_TYPE_PASSPORT,
}
_T = TypeVar("_T")

TRANSFER_KINDS: dict[str, types_pb2.TransferKind.ValueType] = {
    "deposit": types_pb2.TRANSFER_KIND_DEPOSIT,
    "withdrawal": types_pb2.TRANSFER_KIND_WITHDRAWAL,
    "transfer": types_pb2.TRANSFER_KIND_TRANSFER,
    "payment": types_pb2.TRANSFER_KIND_PAYMENT,
}


def _choice(table: dict[str, _T], name: str, reason: str, what: str) -> _T:
    found = table.get(name)
    if found is None:
        raise errors.InvalidArgument(
            grpc.StatusCode.INVALID_ARGUMENT, reason, f"{what} must be one of {', '.join(table)}"
        )
    return found


def open_account(
    name: str,
    id_number: str,
    phone: str,
    currency: str,
    account_type: str,
    id_type: str,
    overdraft_limit: int,
    country: str = "",
    idempotency_key: str = "",
) -> bank_pb2.OpenAccountsRequest:
    holder = types_pb2.Holder(
        name=name,
        id_type=_choice(ID_TYPES, id_type, bank_errors.INVALID_ID_NUMBER, "id_type"),
        id_number=id_number,
        phone=phone,
        country=country,
    )
    item = bank_pb2.OpenAccountRequest(
        currency=currency,
        type=_choice(ACCOUNT_TYPES, account_type, bank_errors.INVALID_ACCOUNT_TYPE, "account_type"),
        holder=holder,
        overdraft_limit=overdraft_limit,
        idempotency_key=idempotency_key,
    )
    return bank_pb2.OpenAccountsRequest(accounts=[item])


def update_contact(account_id: int, phone: str | None, name: str | None) -> ledger_pb2.UpdateContactsRequest:
    update = ledger_pb2.ContactUpdate(account_id=account_id, phone=phone or "", name=name or "")
    return ledger_pb2.UpdateContactsRequest(updates=[update])


def change_status(
    account_id: int, action: ledger_pb2.StatusAction.ValueType, reason: str, actor: str
) -> ledger_pb2.ChangeStatusRequest:
    item = ledger_pb2.StatusRequestItem(account_id=account_id, action=action, reason=reason)
    return ledger_pb2.ChangeStatusRequest(items=[item], actor=actor)


def transfer_id(given: str | None) -> str:
    """The id to send: the caller's (canonical form) or a fresh uuid4.

    Called once per logical transfer, before the first attempt: every retry
    resends this same id, which is what makes retrying safe.
    """
    if given is None or given == "":
        return ids.new_transfer_id()
    return known_transfer_id(given)


def known_transfer_id(text: str) -> str:
    """A transfer id to look up: canonical form, never a fresh one."""
    try:
        return ids.normalize_transfer_id(text.strip())
    except bank_errors.BankError as exc:
        raise errors.from_bank_error(exc) from None


def transfer(
    kind: str,
    debit_account_id: int,
    credit_account_id: int,
    amount_minor: int,
    currency: str,
    transfer_id_given: str | None,
    memo: str,
    reference: str = "",
) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=transfer_id(transfer_id_given),
        kind=_choice(TRANSFER_KINDS, kind, bank_errors.INVALID_TRANSFER_KIND, "kind"),
        debit_account_id=debit_account_id,
        credit_account_id=credit_account_id,
        amount=amount_minor,
        currency=currency,
        memo=memo,
        reference=reference,
    )


def with_ids(transfers: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
    """Copies of the batch, each with an id (a fresh uuid4 where it had none)."""
    stamped: list[types_pb2.Transfer] = []
    for item in transfers:
        copy = types_pb2.Transfer()
        copy.CopyFrom(item)
        copy.id = transfer_id(item.id)
        stamped.append(copy)
    return stamped


def account_result(response: ledger_pb2.AccountsResponse) -> types_pb2.Account:
    """The one account of a batch of one, or its refusal raised."""
    if len(response.results) != 1:
        raise errors.Internal(
            grpc.StatusCode.INTERNAL, bank_errors.INTERNAL, f"expected 1 result, got {len(response.results)}"
        )
    result = response.results[0]
    if result.code != 0:
        raise errors.from_outcome(result.code, result.reason, result.message)
    return result.account


def transfer_outcomes(
    sent: list[types_pb2.Transfer], response: ledger_pb2.TransfersResponse
) -> list[types_pb2.Transfer]:
    """Outcomes in the order sent; a reply that does not match is an error."""
    outcomes = list(response.transfers)
    if len(outcomes) != len(sent):
        raise errors.Internal(
            grpc.StatusCode.INTERNAL,
            bank_errors.INTERNAL,
            f"sent {len(sent)} transfers, got {len(outcomes)} outcomes",
        )
    for item, outcome in zip(sent, outcomes, strict=True):
        if outcome.id and outcome.id != item.id:
            raise errors.Internal(
                grpc.StatusCode.INTERNAL, bank_errors.INTERNAL, f"outcome for {outcome.id}, sent {item.id}"
            )
        if not outcome.id:
            outcome.id = item.id
    return outcomes


def checked(outcome: types_pb2.Transfer) -> types_pb2.Transfer:
    """The outcome, or its refusal raised (an item code of 0 is success)."""
    if outcome.code != 0:
        raise errors.from_transfer(outcome)
    return outcome


def list_alerts(
    status: str = "",
    rule: str = "",
    account_id: int = 0,
    decision: str = "",
    page_size: int = 0,
    page_token: str = "",
    created_since_unix_ms: int = 0,
    created_until_unix_ms: int = 0,
) -> risk_pb2.ListAlertsRequest:
    return risk_pb2.ListAlertsRequest(
        status=status,
        rule=rule,
        account_id=account_id,
        decision=decision,
        page_size=page_size,
        page_token=page_token,
        created_since_unix_ms=created_since_unix_ms,
        created_until_unix_ms=created_until_unix_ms,
    )


def review(transfer_id: str, approve: bool, note: str = "") -> risk_pb2.ReviewTransferRequest:
    action = risk_pb2.REVIEW_ACTION_APPROVE if approve else risk_pb2.REVIEW_ACTION_REJECT
    return risk_pb2.ReviewTransferRequest(transfer_id=transfer_id, action=action, note=note)
