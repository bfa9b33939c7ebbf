"""Shape checks of a cross-shard transfer, again, at the coordinator.

The gateway checks the same things at the edge; the coordinator checks them
again because it is an internal service that any caller could reach, and a
malformed item must be REJECTED before it leaves a trace on any shard (the id
stays free). Business checks (funds, status, currency of the accounts) are the
nodes' job at prepare.
"""

from __future__ import annotations

from shardbank import errors, ids, limits, money
from shardbank.v1 import types_pb2

CROSS_SHARD_KINDS = (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)


def check_transfer(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """A clean copy of the item's input fields, or raises BankError (INVALID_ARGUMENT).

    Output fields (status, code, timestamps…) are dropped so that they can
    never leak into a node's body comparison.
    """
    transfer_id = ids.normalize_transfer_id(transfer.id)
    if transfer.kind not in CROSS_SHARD_KINDS:
        raise errors.invalid(errors.INVALID_TRANSFER_KIND, "the coordinator takes TRANSFER or PAYMENT only")
    for account_id in (transfer.debit_account_id, transfer.credit_account_id):
        if not ids.is_customer_account_id(account_id):
            if ids.is_system_account_id(account_id):
                raise errors.invalid(errors.SYSTEM_ACCOUNT, "system accounts do not take transfers")
            ids.check_account_id(account_id)
    if transfer.debit_account_id == transfer.credit_account_id:
        raise errors.invalid(errors.SAME_ACCOUNT, "debit and credit accounts must differ")
    money.check_amount(transfer.amount)
    money.currency(transfer.currency)
    if len(transfer.memo) > limits.MEMO_LENGTH_MAX:
        raise errors.invalid(errors.INVALID_ARGUMENT, f"memo longer than {limits.MEMO_LENGTH_MAX} characters")
    if len(transfer.reference) > limits.REFERENCE_LENGTH_MAX:
        raise errors.invalid(
            errors.INVALID_ARGUMENT, f"reference longer than {limits.REFERENCE_LENGTH_MAX} characters"
        )
    return types_pb2.Transfer(
        id=transfer_id,
        kind=transfer.kind,
        debit_account_id=transfer.debit_account_id,
        credit_account_id=transfer.credit_account_id,
        amount=transfer.amount,
        currency=transfer.currency,
        memo=transfer.memo,
        reference=transfer.reference,
        cross_shard=True,
    )
