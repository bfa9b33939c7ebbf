"""The one way the HTTP edge calls the gateway's `Bank`, `Risk` and health
services: generated stubs on the in-process `LocalChannel` (`local`), so a
call runs the gRPC server's own interceptor and servicer without the wire.

Every call carries a deadline (no call may hang an HTTP request forever), the
request id (`x-request-id`, so the gateway's logs and ours line up) and the
caller's `Authorization` header unchanged (`authorization`): authentication
is the gRPC side's job (its interceptor), the edge only passes credentials
through and maps UNAUTHENTICATED / PERMISSION_DENIED like any other status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2_grpc

from gateway.http import limits
from gateway.http.coalesce import TransferCoalescer
from gateway.http.errors import INVALID_HEADER, REQUEST_ID_KEY, rpc_failure
from gateway.http.local import LocalChannel, caller_metadata
from shardbank import errors
from shardbank.v1 import bank_pb2_grpc, risk_pb2_grpc

if TYPE_CHECKING:
    from grpc_health.v1.health_pb2_grpc import HealthStub

    from shardbank.v1.bank_pb2_grpc import BankAsyncStub
    from shardbank.v1.risk_pb2_grpc import RiskAsyncStub

Req = TypeVar("Req")
Resp = TypeVar("Resp")


@dataclass(frozen=True)
class Upstream:
    """The gateway's services as stubs on the in-process channel."""

    bank: BankAsyncStub
    risk: RiskAsyncStub
    health: HealthStub
    call_deadline_s: float

    @classmethod
    def on(cls, channel: LocalChannel, call_deadline_s: float = limits.CALL_DEADLINE_S) -> Upstream:
        # The generated stubs only call `channel.unary_unary(...)`, which LocalChannel has.
        wire = cast(grpc.Channel, channel)
        return cls(
            bank=cast("BankAsyncStub", bank_pb2_grpc.BankStub(wire)),
            risk=cast("RiskAsyncStub", risk_pb2_grpc.RiskStub(wire)),
            health=health_pb2_grpc.HealthStub(wire),
            call_deadline_s=call_deadline_s,
        )


UPSTREAM_KEY = web.AppKey("upstream", Upstream)
# Single-transfer routes submit through this (`coalesce`), on the same stubs.
COALESCER_KEY = web.AppKey("coalescer", TransferCoalescer)


def upstream(request: web.Request) -> Upstream:
    return request.app[UPSTREAM_KEY]


def authorization_of(request: web.Request) -> str | None:
    """The Authorization header to forward (None when absent; an empty one is
    forwarded empty, and refused upstream as malformed), checked so that it
    can be gRPC metadata: printable ASCII, bounded, given once."""
    authorization = request.headers.getall("Authorization", [])
    if len(authorization) > 1:
        raise errors.invalid(INVALID_HEADER, "Authorization given more than once")
    if not authorization:
        return None
    value = authorization[0]
    # gRPC metadata values are printable ASCII; anything else would make
    # the call itself fail with an unhelpful error.
    if len(value) > limits.AUTHORIZATION_LENGTH_MAX or not (value.isascii() and value.isprintable()):
        raise errors.invalid(
            INVALID_HEADER,
            f"Authorization must be at most {limits.AUTHORIZATION_LENGTH_MAX} printable ASCII characters",
        )
    return value


def peer_of(request: web.Request) -> str:
    """The HTTP client's address as the socket says (not a forwarded header),
    for the audit records of what it does; empty when unknown."""
    return request.remote or ""


def call_metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    return caller_metadata(request[REQUEST_ID_KEY], authorization_of(request), peer_of(request))


async def call(
    request: web.Request, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], message: Req
) -> Resp:
    """One unary call; a gRPC status comes back as a BankError (HttpError)."""
    try:
        reply: Resp = await method(
            message, timeout=upstream(request).call_deadline_s, metadata=call_metadata(request)
        )
    except grpc.RpcError as exc:
        raise rpc_failure(exc) from None
    return reply
