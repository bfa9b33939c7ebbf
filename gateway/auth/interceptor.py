"""The one gate in front of every `Bank` RPC (gRPC clients and the HTTP edge
alike: the edge calls this same gRPC API with the caller's `Authorization`
forwarded as metadata, through `gateway.http.local.LocalChannel`, which runs
this interceptor in process).

For a Bank method: authenticate the `authorization: Bearer sbk_...` metadata
(missing -> UNAUTHENTICATED `UNAUTHENTICATED`; malformed, unknown or
revoked -> UNAUTHENTICATED `INVALID_CREDENTIALS`), take a token from the key's rate-limit bucket (empty
-> RESOURCE_EXHAUSTED `RATE_LIMITED` with `retry-after`), check the role
against the permission table (-> PERMISSION_DENIED `PERMISSION_DENIED`), then
run the servicer with the `Principal` bound for the handlers' per-request
checks (ownership, transfer kinds, status actions). Health and reflection
are other services and pass untouched.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.auth import keys, permissions
from gateway.auth import principal as principals
from gateway.auth.principal import Principal
from gateway.auth.ratelimit import RateLimiter, retry_after_s
from shardbank import errors

log = structlog.get_logger("gateway.auth")

UNAUTHENTICATED = "UNAUTHENTICATED"
INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
PERMISSION_DENIED = "PERMISSION_DENIED"
RATE_LIMITED = "RATE_LIMITED"
RETRY_AFTER_METADATA = "retry-after"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Behavior = Callable[[Any, Any], Awaitable[Any]]


def unauthenticated(message: str, reason: str = INVALID_CREDENTIALS) -> errors.BankError:
    return errors.BankError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def permission_denied(message: str) -> errors.BankError:
    return errors.BankError(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED, message)


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[Any, ...]) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def rate_limited_status(wait_s: float) -> grpc.Status:
    """RESOURCE_EXHAUSTED RATE_LIMITED with RetryInfo and `retry-after` (whole seconds)."""
    seconds = retry_after_s(wait_s)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=RATE_LIMITED, domain=errors.DOMAIN, metadata={"retry_after_s": str(seconds)}
        )
    )
    retry = any_pb2.Any()
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
    proto = status_pb2.Status(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        message=f"too many requests for this API key; retry after {seconds} s",
        details=[info, retry],
    )
    status = rpc_status.to_status(proto)
    return _Status(
        status.code, status.details, (*status.trailing_metadata, (RETRY_AFTER_METADATA, str(seconds)))
    )


# Sent by the HTTP edge on a call that carries several requests (gateway.http.coalesce).
COALESCED_REQUESTS_METADATA = "x-coalesced-requests"
COALESCED_DIGITS_MAX = 6


def _metadata_values(metadata: Sequence[Any] | None, name: str) -> list[str]:
    return [str(value) for key, value in (metadata or ()) if key == name]


def coalesced_requests(metadata: Sequence[Any] | None) -> int:
    """How many requests a call stands for: the HTTP edge's shared calls say so
    in `x-coalesced-requests`, so the key's rate limit counts requests, not
    calls. Unchecked on purpose: a larger count only makes the caller's own
    limit stricter; anything but one plain number counts as 1."""
    values = _metadata_values(metadata, COALESCED_REQUESTS_METADATA)
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > COALESCED_DIGITS_MAX:
        return 1
    return max(1, int(values[0]))


def _refusal(handler: grpc.RpcMethodHandler, status: grpc.Status) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: Any) -> Any:
        await context.abort_with_status(status)

    return grpc.unary_unary_rpc_method_handler(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _as_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    inner: Behavior = handler.unary_unary

    async def behavior(request: Any, context: Any) -> Any:
        token = principals.bind(
            Principal(principal.key_id, principal.role, principal.customer_id, context.peer(),
                      principal.request_id)
        )  # fmt: skip
        try:
            return await inner(request, context)
        finally:
            principals.unbind(token)

    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, key_cache: keys.KeyCache, limiter: RateLimiter | None = None) -> None:
        self._keys = key_cache
        self._limiter = limiter or RateLimiter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        rpc = permissions.rpc_name(details.method)
        if rpc is None or handler is None or handler.unary_unary is None:
            return handler
        metadata = details.invocation_metadata
        try:
            key = await self._authenticate(_metadata_values(metadata, "authorization"))
        except errors.BankError as refused:
            log.info("auth_refused", rpc=rpc, code=refused.code.name, reason=refused.reason)
            return _refusal(handler, refused.to_status())
        wait_s = self._limiter.take(
            key.key_id, permissions.RATE_LIMITS[key.role], coalesced_requests(metadata)
        )
        if wait_s > 0:
            log.info("rate_limited", rpc=rpc, key_id=key.key_id, role=key.role)
            return _refusal(handler, rate_limited_status(wait_s))
        if not permissions.may_call(key.role, rpc):
            log.info("permission_denied", rpc=rpc, key_id=key.key_id, role=key.role)
            denied = permission_denied(f"role {key.role} may not call {rpc}")
            return _refusal(handler, denied.to_status())
        given = _metadata_values(metadata, "x-request-id")
        request_id = given[0] if len(given) == 1 and _REQUEST_ID_RE.fullmatch(given[0]) else uuid.uuid4().hex
        return _as_principal(handler, Principal(key.key_id, key.role, key.customer_id, "", request_id))

    async def _authenticate(self, values: list[str]) -> keys.ApiKey:
        if not values:
            raise unauthenticated("no credentials: send authorization: Bearer <API key>", UNAUTHENTICATED)
        if len(values) > 1:
            raise unauthenticated("authorization given more than once")
        token = keys.parse_authorization(values[0])
        if token is None:
            raise unauthenticated("malformed credentials: expected Bearer sbk_<key id>_<secret>")
        key = await self._keys.authenticate(token)
        if key is None:
            # Unknown, wrong secret and revoked look the same to the caller.
            raise unauthenticated("invalid credentials")
        return key
