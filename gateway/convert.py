"""Between node messages and public ones, and the outcomes the gateway makes up itself."""

from __future__ import annotations

import grpc

from gateway.auth import permissions, principal
from shardbank import errors, identity, ids, limits, transfer_checks
from shardbank.v1 import ledger_pb2, types_pb2


def public_account(account: types_pb2.Account, reveal_identity: bool | None = None) -> types_pb2.Account:
    """The account as the public API shows it.

    Every account leaving the gateway goes through here. The holder's ID
    number and phone are masked (`shardbank.identity`) unless the caller's
    role may see them (`permissions.UNMASKED_ROLES`: teller, auditor, admin,
    service); a customer gets its own masked too, because replies end up in
    app logs and screenshots. `reveal_identity=None` decides by the caller
    bound for this RPC; with no caller at all (no authentication installed:
    in-process tests) nothing is masked.
    """
    shown = types_pb2.Account()
    shown.CopyFrom(account)
    if reveal_identity is None:
        caller = principal.current()
        reveal_identity = caller is None or permissions.reveals_identity(caller.role)
    if not reveal_identity:
        if shown.holder.id_number:
            shown.holder.id_number = identity.mask_id_number(shown.holder.id_number)
        if shown.holder.phone:
            shown.holder.phone = identity.mask_phone(shown.holder.phone)
    return shown


def public_transfer(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """The transfer as the caller may see it: the risk assessment's details
    (score, rules, alert) only for the roles that work with risk
    (`permissions.RISK_VISIBLE_ROLES`); anyone else sees the decision alone,
    so an alert-only AML rule never tips a customer off, and a held transfer
    reads PENDING / UNDER_REVIEW."""
    caller = principal.current()
    if caller is None or permissions.sees_risk(caller.role) or not transfer.HasField("risk"):
        return transfer
    shown = types_pb2.Transfer()
    shown.CopyFrom(transfer)
    shown.risk.CopyFrom(types_pb2.RiskAssessment(decision=transfer.risk.decision))
    return shown


def public_account_result(result: ledger_pb2.AccountResult) -> ledger_pb2.AccountResult:
    shown = ledger_pb2.AccountResult(code=result.code, reason=result.reason, message=result.message)
    if result.HasField("account"):
        shown.account.CopyFrom(public_account(result.account))
    return shown


def failed_account(error: errors.BankError) -> ledger_pb2.AccountResult:
    return ledger_pb2.AccountResult(code=error.code_value, reason=error.reason, message=error.message)


def _echo(transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """The item's input fields, as given."""
    return transfer_checks.input_fields(transfer)


def _fits(text: str, length_max: int) -> str:
    """The text when the reply schema allows it, else empty (never echo junk back)."""
    return text if len(text) <= length_max and text.isprintable() else ""


def rejected_transfer(transfer: types_pb2.Transfer, error: errors.BankError) -> types_pb2.Transfer:
    """Refused at the edge: nothing recorded, the id stays free. Input that
    broke a limit is not echoed, so the reply still matches its schema."""
    outcome = _echo(transfer)
    outcome.id = _fits(outcome.id, ids.TRANSFER_ID_LENGTH_MAX)
    outcome.currency = _fits(outcome.currency, 3)
    outcome.memo = _fits(outcome.memo, limits.MEMO_LENGTH_MAX)
    outcome.reference = _fits(outcome.reference, limits.REFERENCE_LENGTH_MAX)
    outcome.status = types_pb2.TRANSFER_STATUS_REJECTED
    outcome.code = error.code_value
    outcome.reason = error.reason
    outcome.message = error.message
    return outcome


def unsettled_transfer(
    transfer: types_pb2.Transfer, error: errors.BankError, cross_shard: bool
) -> types_pb2.Transfer:
    """The gateway could not learn the outcome. Never claims it committed:
    status PENDING when it went to the coordinator (legs may be prepared),
    else UNSPECIFIED (unknown); resending the same id is safe. A request the
    destination refused as malformed recorded nothing: REJECTED."""
    outcome = _echo(transfer)
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        outcome.status = types_pb2.TRANSFER_STATUS_REJECTED
    elif cross_shard:
        outcome.status = types_pb2.TRANSFER_STATUS_PENDING
    else:
        outcome.status = types_pb2.TRANSFER_STATUS_UNSPECIFIED
    outcome.code = error.code_value
    outcome.reason = error.reason
    outcome.message = error.message
    outcome.cross_shard = cross_shard
    return outcome
