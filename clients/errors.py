"""The client's exception hierarchy: one root, subclasses chosen by reason.

Every refusal a caller can see — a gRPC status on the whole call or a non-zero
per-item outcome of a batch — becomes a `ShardbankError(code, reason,
message)`. It is a `shardbank.errors.BankError`, so code that already catches
those (e.g. around `money.parse_amount`) catches client errors too. Callers
branch on the class or on `reason`, never on the message text.

The subclass is picked by reason first (`INSUFFICIENT_FUNDS` ->
`InsufficientFunds`), then by status code (any INVALID_ARGUMENT ->
`InvalidArgument`), else the root class.
"""

from __future__ import annotations

import grpc

from shardbank import errors as bank_errors
from shardbank.v1 import types_pb2


class ShardbankError(bank_errors.BankError):
    """A refusal: gRPC status code, stable reason, human message.

    `transfer` is the item's outcome when the error came from a batch item
    (its `id` is the transfer id to ask `get_transfer` about later).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str = "",
        transfer: types_pb2.Transfer | None = None,
    ) -> None:
        super().__init__(code, reason, message)
        self.transfer = transfer

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.code, self.reason, self.message, self.transfer))


# By status code.
class InvalidArgument(ShardbankError):
    """Malformed request: nothing was recorded (a transfer id stays free)."""


class NotFound(ShardbankError):
    pass


class AlreadyExists(ShardbankError):
    pass


class FailedPrecondition(ShardbankError):
    """The state refuses it (funds, status); don't retry until it changes."""


class Aborted(ShardbankError):
    """Retry at a higher level (stale slot map, fenced epoch, 2PC aborted)."""


class Unavailable(ShardbankError):
    """Retryable: the client already retried it within its bounds."""


class DeadlineExceeded(ShardbankError):
    """The outcome is unknown: ask `get_transfer` with the same id, or resend it."""


class ResourceExhausted(ShardbankError):
    pass


class PermissionDenied(ShardbankError):
    pass


class Unauthenticated(ShardbankError):
    pass


class Internal(ShardbankError):
    pass


# By reason.
class AccountNotFound(NotFound):
    pass


class TransferNotFound(NotFound):
    pass


class TransferIdConflict(AlreadyExists):
    """The same transfer id was used before with a different body."""


class InsufficientFunds(FailedPrecondition):
    pass


class AccountFrozen(FailedPrecondition):
    pass


class AccountClosed(FailedPrecondition):
    pass


class CurrencyMismatch(FailedPrecondition):
    pass


class NotAMerchant(FailedPrecondition):
    pass


class AccountNotEmpty(FailedPrecondition):
    """Closing needs a zero balance and nothing held."""


_BY_REASON: dict[str, type[ShardbankError]] = {
    bank_errors.ACCOUNT_NOT_FOUND: AccountNotFound,
    bank_errors.TRANSFER_NOT_FOUND: TransferNotFound,
    bank_errors.TRANSFER_ID_CONFLICT: TransferIdConflict,
    bank_errors.INSUFFICIENT_FUNDS: InsufficientFunds,
    bank_errors.ACCOUNT_FROZEN: AccountFrozen,
    bank_errors.ACCOUNT_CLOSED: AccountClosed,
    bank_errors.CURRENCY_MISMATCH: CurrencyMismatch,
    bank_errors.NOT_A_MERCHANT: NotAMerchant,
    bank_errors.BALANCE_NOT_ZERO: AccountNotEmpty,
    bank_errors.FUNDS_HELD: AccountNotEmpty,
}

_BY_CODE: dict[grpc.StatusCode, type[ShardbankError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.DATA_LOSS: Internal,
}


def error_class(code: grpc.StatusCode, reason: str) -> type[ShardbankError]:
    """The most specific class for a (code, reason) pair."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, ShardbankError)


def make_error(
    code: grpc.StatusCode, reason: str, message: str = "", transfer: types_pb2.Transfer | None = None
) -> ShardbankError:
    return error_class(code, reason)(code, reason or code.name, message, transfer)


def from_outcome(code_value: int, reason: str, message: str) -> ShardbankError:
    """An item's per-item outcome (`code` number, `reason`, `message`)."""
    return make_error(bank_errors.status_code(code_value), reason, message)


def from_transfer(outcome: types_pb2.Transfer) -> ShardbankError:
    return make_error(bank_errors.status_code(outcome.code), outcome.reason, outcome.message, outcome)


def from_bank_error(error: bank_errors.BankError) -> ShardbankError:
    if isinstance(error, ShardbankError):
        return error
    result = make_error(error.code, error.reason, error.message)
    result.metadata = dict(error.metadata)
    return result


def from_rpc_error(error: grpc.RpcError) -> ShardbankError:
    """A caught gRPC error (sync or aio) with its ErrorInfo reason, if any."""
    return from_bank_error(bank_errors.from_rpc_error(error))
