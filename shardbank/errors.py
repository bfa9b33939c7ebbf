"""One error model for every component.

A refusal is a `BankError(code, reason, message)`: `code` is a google.rpc.Code
(as grpc.StatusCode), `reason` a stable machine-readable word that clients
branch on (never the message text). On the wire it is a gRPC status carrying
google.rpc.Status with an ErrorInfo(reason=..., domain="shardbank") detail, or,
inside a batch, the per-item `code`/`reason` fields.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "shardbank"

# Reasons. One word, one meaning; the table in README's "Errors" section.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
INVALID_AMOUNT = "INVALID_AMOUNT"
INVALID_CURRENCY = "INVALID_CURRENCY"
INVALID_ACCOUNT_ID = "INVALID_ACCOUNT_ID"
INVALID_TRANSFER_ID = "INVALID_TRANSFER_ID"
INVALID_TRANSFER_KIND = "INVALID_TRANSFER_KIND"
INVALID_NAME = "INVALID_NAME"
INVALID_ID_NUMBER = "INVALID_ID_NUMBER"
INVALID_PHONE = "INVALID_PHONE"
INVALID_ACCOUNT_TYPE = "INVALID_ACCOUNT_TYPE"
INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
INVALID_PAGE_SIZE = "INVALID_PAGE_SIZE"
INVALID_REASON = "INVALID_REASON"
INVALID_ACTION = "INVALID_ACTION"
INVALID_OVERDRAFT_LIMIT = "INVALID_OVERDRAFT_LIMIT"
INVALID_COUNTRY = "INVALID_COUNTRY"
INVALID_IDEMPOTENCY_KEY = "INVALID_IDEMPOTENCY_KEY"
SAME_ACCOUNT = "SAME_ACCOUNT"
CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
TRANSFER_NOT_FOUND = "TRANSFER_NOT_FOUND"
ACCOUNT_EXISTS = "ACCOUNT_EXISTS"
INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
ACCOUNT_FROZEN = "ACCOUNT_FROZEN"
ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
ACCOUNT_NOT_FROZEN = "ACCOUNT_NOT_FROZEN"
ACCOUNT_ALREADY_FROZEN = "ACCOUNT_ALREADY_FROZEN"
BALANCE_NOT_ZERO = "BALANCE_NOT_ZERO"
FUNDS_HELD = "FUNDS_HELD"
NOT_A_MERCHANT = "NOT_A_MERCHANT"
SYSTEM_ACCOUNT = "SYSTEM_ACCOUNT"
BALANCE_OVERFLOW = "BALANCE_OVERFLOW"
TRANSFER_ID_CONFLICT = "TRANSFER_ID_CONFLICT"
SLOT_MOVED = "SLOT_MOVED"
# The slot is being moved (fenced on the source, staged on the target): retry.
SLOT_MOVING = "SLOT_MOVING"
# A move step asked of a node whose slots are not in the state it needs.
SLOT_NOT_STAGED = "SLOT_NOT_STAGED"
SLOT_STILL_OWNED = "SLOT_STILL_OWNED"
# A credit leg aborted because its id was settled single-shard before a move
# made it cross-shard (the settled record is the transfer's outcome).
SETTLED_SINGLE_SHARD = "SETTLED_SINGLE_SHARD"
STALE_EPOCH = "STALE_EPOCH"
CONTRADICTORY_DECISION = "CONTRADICTORY_DECISION"
PREPARE_TIMEOUT = "PREPARE_TIMEOUT"
CROSS_SHARD = "CROSS_SHARD"
NOT_LEADER = "NOT_LEADER"
SHARD_UNAVAILABLE = "SHARD_UNAVAILABLE"
BATCH_TOO_LARGE = "BATCH_TOO_LARGE"
BATCH_EMPTY = "BATCH_EMPTY"
OVERLOADED = "OVERLOADED"
# Risk review (docs/2pc.md "Review holds"): a held transfer is PENDING with
# UNDER_REVIEW; rejected by an officer RISK_REJECTED; undecided past its
# deadline REVIEW_EXPIRED.
UNDER_REVIEW = "UNDER_REVIEW"
RISK_REJECTED = "RISK_REJECTED"
REVIEW_EXPIRED = "REVIEW_EXPIRED"
REVIEW_APPROVED = "REVIEW_APPROVED"
NOT_UNDER_REVIEW = "NOT_UNDER_REVIEW"
REVIEW_NOT_SUPPORTED = "REVIEW_NOT_SUPPORTED"
INVALID_REVIEW_DEADLINE = "INVALID_REVIEW_DEADLINE"
# A service-to-service call without a valid token (shardbank.service_auth).
SERVICE_UNAUTHENTICATED = "SERVICE_UNAUTHENTICATED"
SERVICE_READ_ONLY = "SERVICE_READ_ONLY"
INTERNAL = "INTERNAL"
# Risk control (gateway/risk): refused; held for review but no reviewer is wired.
RISK_BLOCKED = "RISK_BLOCKED"
RISK_REVIEW_UNAVAILABLE = "RISK_REVIEW_UNAVAILABLE"

_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """grpc.StatusCode from its google.rpc.Code number."""
    return _CODE_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


class BankError(Exception):
    """A refusal with a gRPC status code and a machine-readable reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str = "") -> None:
        super().__init__(f"{code.name} {reason}: {message}" if message else f"{code.name} {reason}")
        self.code = code
        self.reason = reason
        self.message = message or reason
        self.metadata: dict[str, str] = {}

    @property
    def code_value(self) -> int:
        return int(self.code.value[0])

    def to_status(self) -> grpc.Status:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata))
        proto = status_pb2.Status(code=self.code_value, message=self.message, details=[detail])
        return rpc_status.to_status(proto)


def invalid(reason: str, message: str = "") -> BankError:
    return BankError(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def precondition(reason: str, message: str = "") -> BankError:
    return BankError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def not_found(reason: str, message: str = "") -> BankError:
    return BankError(grpc.StatusCode.NOT_FOUND, reason, message)


async def abort(context: grpc.aio.ServicerContext, error: BankError) -> NoReturn:
    """Abort an aio RPC with the error's rich status."""
    await context.abort_with_status(error.to_status())
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def from_rpc_error(error: grpc.RpcError) -> BankError:
    """Parse a caught RpcError back into a BankError (reason from ErrorInfo)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else ""
    reason = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    metadata: dict[str, str] = {}
    try:
        status = rpc_status.from_call(error)
    except Exception:  # a status without rich details, or a malformed one
        status = None
    if status is not None:
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                metadata = dict(info.metadata)
    result = BankError(
        code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN, reason, details or ""
    )
    result.metadata = metadata
    return result
