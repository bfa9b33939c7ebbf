"""Shape checks of a transfer's input fields, shared by every service that
takes transfers from outside its process (the gateway at the edge, the
coordinator again as an internal service any caller could reach), so the two
can never disagree. Business checks (funds, status, the accounts' currency)
are the ledger nodes' job.
"""

from __future__ import annotations

import unicodedata

from shardbank import errors, ids, limits, money
from shardbank.v1 import types_pb2

# Unicode categories refused in free text: controls, format characters
# (bidi overrides), surrogates, private use, unassigned, line/para separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
TRANSFER_KINDS = frozenset(
    {
        types_pb2.TRANSFER_KIND_DEPOSIT,
        types_pb2.TRANSFER_KIND_WITHDRAWAL,
        types_pb2.TRANSFER_KIND_TRANSFER,
        types_pb2.TRANSFER_KIND_PAYMENT,
    }
)


def check_customer_account_id(account_id: int) -> None:
    if ids.is_customer_account_id(account_id):
        return
    if ids.is_system_account_id(account_id):
        raise errors.invalid(errors.SYSTEM_ACCOUNT, "system accounts cannot be used here")
    raise errors.invalid(errors.INVALID_ACCOUNT_ID, "account id is not 16 digits with a valid check digit")


def check_transfer(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """A clean copy of the input fields (canonical id), or raises BankError."""
    transfer_id = ids.normalize_transfer_id(transfer.id)
    if transfer.kind not in TRANSFER_KINDS:
        raise errors.invalid(
            errors.INVALID_TRANSFER_KIND, "kind must be DEPOSIT, WITHDRAWAL, TRANSFER or PAYMENT"
        )
    _check_transfer_accounts(transfer)
    money.check_amount(transfer.amount)
    money.currency(transfer.currency)
    check_text("memo", transfer.memo, limits.MEMO_LENGTH_MAX)
    check_text("reference", transfer.reference, limits.REFERENCE_LENGTH_MAX)
    clean = input_fields(transfer)
    clean.id = transfer_id
    return clean


def input_fields(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """Only what a client sets (output fields dropped, so they never reach a
    node's body comparison or an echo)."""
    return types_pb2.Transfer(
        id=transfer.id,
        kind=transfer.kind,
        debit_account_id=transfer.debit_account_id,
        credit_account_id=transfer.credit_account_id,
        amount=transfer.amount,
        currency=transfer.currency,
        memo=transfer.memo,
        reference=transfer.reference,
    )


def _check_transfer_accounts(transfer: types_pb2.Transfer) -> None:
    """The customer side(s) valid; the cash side of a deposit/withdrawal left 0 (the node picks it)."""
    debit, credit = transfer.debit_account_id, transfer.credit_account_id
    if transfer.kind == types_pb2.TRANSFER_KIND_DEPOSIT:
        check_customer_account_id(credit)
        _check_cash_side("debit_account_id", debit)
    elif transfer.kind == types_pb2.TRANSFER_KIND_WITHDRAWAL:
        check_customer_account_id(debit)
        _check_cash_side("credit_account_id", credit)
    else:
        check_customer_account_id(debit)
        check_customer_account_id(credit)
        if debit == credit:
            raise errors.invalid(errors.SAME_ACCOUNT, "debit and credit accounts must differ")


def _check_cash_side(field: str, account_id: int) -> None:
    if account_id != 0:
        raise errors.invalid(
            errors.INVALID_ACCOUNT_ID, f"{field} must be 0: the shard's cash account is chosen by the node"
        )


def has_forbidden_characters(text: str) -> bool:
    # Every forbidden category is one `str.isprintable` refuses (it also refuses
    # Zs other than the space), so a printable text needs no per-character look.
    if text.isprintable():
        return False
    return any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def check_text(field: str, text: str, length_max: int) -> None:
    if len(text) > length_max:
        raise errors.invalid(errors.INVALID_ARGUMENT, f"{field} longer than {length_max} characters")
    if has_forbidden_characters(text):
        raise errors.invalid(errors.INVALID_ARGUMENT, f"{field} contains control characters")
