"""One exception hierarchy: the class follows the reason, then the code."""

from __future__ import annotations

import grpc
import pytest

from clients import errors
from shardbank import errors as bank_errors
from shardbank.v1 import types_pb2

FP = grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (FP, "INSUFFICIENT_FUNDS", errors.InsufficientFunds),
        (FP, "ACCOUNT_FROZEN", errors.AccountFrozen),
        (FP, "ACCOUNT_CLOSED", errors.AccountClosed),
        (FP, "CURRENCY_MISMATCH", errors.CurrencyMismatch),
        (FP, "NOT_A_MERCHANT", errors.NotAMerchant),
        (FP, "BALANCE_NOT_ZERO", errors.AccountNotEmpty),
        (FP, "ACCOUNT_NOT_FROZEN", errors.FailedPrecondition),
        (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND", errors.AccountNotFound),
        (grpc.StatusCode.NOT_FOUND, "TRANSFER_NOT_FOUND", errors.TransferNotFound),
        (grpc.StatusCode.ALREADY_EXISTS, "TRANSFER_ID_CONFLICT", errors.TransferIdConflict),
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT", errors.InvalidArgument),
        (grpc.StatusCode.INVALID_ARGUMENT, "SOMETHING_NEW", errors.InvalidArgument),
        (grpc.StatusCode.UNAVAILABLE, "NOT_LEADER", errors.Unavailable),
        (grpc.StatusCode.ABORTED, "SLOT_MOVED", errors.Aborted),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "BATCH_TOO_LARGE", errors.ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", errors.DeadlineExceeded),
        (grpc.StatusCode.PERMISSION_DENIED, "FORBIDDEN", errors.PermissionDenied),
        (grpc.StatusCode.UNKNOWN, "UNKNOWN", errors.ShardbankError),
    ],
)
def test_class_by_reason_then_code(
    code: grpc.StatusCode, reason: str, cls: type[errors.ShardbankError]
) -> None:
    error = errors.make_error(code, reason, "why")
    assert type(error) is cls
    assert (error.code, error.reason, error.message) == (code, reason, "why")
    assert isinstance(error, errors.ShardbankError)
    assert isinstance(error, bank_errors.BankError)


def test_from_item_outcome_numbers() -> None:
    error = errors.from_outcome(9, "INSUFFICIENT_FUNDS", "need 1.00 more")
    assert isinstance(error, errors.InsufficientFunds)
    assert error.code == FP
    assert error.code_value == 9


def test_from_transfer_keeps_the_outcome() -> None:
    transfer_id = "6f9619ff-8b86-4011-b42d-00c04fc964ff"
    outcome = types_pb2.Transfer(id=transfer_id, code=6, reason="TRANSFER_ID_CONFLICT")
    error = errors.from_transfer(outcome)
    assert isinstance(error, errors.TransferIdConflict)
    assert error.transfer is outcome


def test_empty_reason_falls_back_to_code_name() -> None:
    error = errors.make_error(grpc.StatusCode.UNAVAILABLE, "")
    assert isinstance(error, errors.Unavailable)
    assert error.reason == "UNAVAILABLE"


def test_from_bank_error_keeps_metadata() -> None:
    source = bank_errors.BankError(grpc.StatusCode.UNAVAILABLE, "NOT_LEADER", "ask the leader")
    source.metadata = {"leader-address": "127.0.0.1:50071"}
    error = errors.from_bank_error(source)
    assert isinstance(error, errors.Unavailable)
    assert error.metadata == {"leader-address": "127.0.0.1:50071"}
    assert errors.from_bank_error(error) is error


def test_catching_by_family() -> None:
    with pytest.raises(errors.FailedPrecondition):
        raise errors.make_error(FP, "ACCOUNT_FROZEN")
    with pytest.raises(errors.NotFound):
        raise errors.make_error(grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
