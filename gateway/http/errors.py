"""One error model for the HTTP edge.

Every error leaves as JSON `{"code", "reason", "message", "details"}`: `code`
is the google.rpc.Code name the gRPC API would have given, `reason` the same
stable word (`shardbank.errors`), so a client branches on the reason whichever
transport it uses. The HTTP status follows google.rpc.Code's mapping with one
deliberate change: FAILED_PRECONDITION is 422, not 400 — the request was
understood and well formed but the account's state forbids it (insufficient
funds, frozen, closed); 400 stays for malformed input and 409 for conflicts
(ALREADY_EXISTS, ABORTED).

The middleware here is the only place an exception becomes a response: a
BankError (ours or parsed from a gRPC status), an aiohttp HTTPException (404
unknown route, 405, 413) or anything else (500 with a request id that is logged
with the traceback; never a stack trace or an HTML page in the response).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping

import grpc
import structlog
from aiohttp import web
from google.protobuf import any_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.http import limits
from shardbank import errors

log = structlog.get_logger("gateway.http")

# Reasons only the HTTP edge gives (the rest are shardbank.errors').
ROUTE_NOT_FOUND = "ROUTE_NOT_FOUND"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
BODY_TOO_LARGE = "BODY_TOO_LARGE"
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
MALFORMED_JSON = "MALFORMED_JSON"
INVALID_BODY = "INVALID_BODY"
INVALID_QUERY = "INVALID_QUERY"
INVALID_HEADER = "INVALID_HEADER"
NOT_SERVING = "NOT_SERVING"

# google.rpc.Code -> HTTP status (google/rpc/code.proto), FAILED_PRECONDITION
# changed to 422 as the module docstring says. Codes absent here -> 500.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Statuses where waiting helps, so the response says how long (Retry-After).
_RETRY_AFTER_STATUSES = frozenset({429, 503})
# Reasons where waiting does not help (a too large batch stays too large).
_NO_RETRY_REASONS = frozenset({errors.BATCH_TOO_LARGE, BODY_TOO_LARGE})

# Where the middleware leaves the request id for handlers (gRPC metadata).
REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(rf"^[A-Za-z0-9._:-]{{1,{limits.REQUEST_ID_LENGTH_MAX}}}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(errors.BankError):
    """A BankError with what only HTTP has: a status that is not the code's
    usual one (405, 413, 415) and response headers (Allow, Retry-After)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str = "",
        *,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(code, reason, message)
        self.http_status = http_status
        self.headers = dict(headers or {})


def http_status_of(error: errors.BankError) -> int:
    if isinstance(error, HttpError) and error.http_status is not None:
        return error.http_status
    return HTTP_STATUS.get(error.code, 500)


def item_error(code: int, reason: str, message: str) -> errors.BankError:
    """The failed outcome of a batch item, as the error of a single-item call."""
    return errors.BankError(errors.status_code(code), reason or errors.status_code(code).name, message)


def broken_reply(what: str) -> errors.BankError:
    """The gateway answered with something other than one outcome per item: its bug, our 500."""
    return errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, f"unexpected reply: {what}")


def rpc_failure(exc: grpc.RpcError) -> errors.BankError:
    """A gRPC status (with its ErrorInfo and RetryInfo) as an HttpError.

    A status without ErrorInfo did not come from a shardbank servicer but from
    grpc itself (connection refused, deadline): its text names internal
    addresses, so it is logged and replaced by a plain sentence.
    """
    parsed = errors.from_rpc_error(exc)
    details = _rich_details(exc)
    message = parsed.message
    if not any(d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) for d in details):
        log.info("http_upstream_status", code=parsed.code.name, upstream_message=parsed.message)
        message = f"the call to the gRPC gateway failed ({parsed.code.name})"
    failure = HttpError(parsed.code, parsed.reason, message)
    failure.metadata = dict(parsed.metadata)
    for detail in details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            delay = retry.retry_delay
            failure.headers["Retry-After"] = str(max(1, int(delay.seconds) + (1 if delay.nanos > 0 else 0)))
    return failure


def _rich_details(exc: grpc.RpcError) -> list[any_pb2.Any]:
    try:
        status = rpc_status.from_call(exc)
    except Exception:  # a rich status that disagrees with the call's code
        return []
    return list(status.details) if status is not None else []


def error_response(error: errors.BankError, request_id: str) -> web.Response:
    status = http_status_of(error)
    details: dict[str, str] = dict(error.metadata)
    if "request_id" in details and details["request_id"] != request_id:
        details["gateway_request_id"] = details["request_id"]
    details["request_id"] = request_id
    headers: dict[str, str] = dict(error.headers) if isinstance(error, HttpError) else {}
    if (
        status in _RETRY_AFTER_STATUSES
        and error.reason not in _NO_RETRY_REASONS
        and "Retry-After" not in headers
    ):
        headers["Retry-After"] = str(limits.RETRY_AFTER_S_DEFAULT)
    body = {"code": error.code.name, "reason": error.reason, "message": error.message, "details": details}
    return web.json_response(body, status=status, headers=headers)


def from_http_exception(exc: web.HTTPException) -> errors.BankError:
    """aiohttp's own refusals (router, body size) in the one error model."""
    if exc.status == 404:
        return HttpError(grpc.StatusCode.NOT_FOUND, ROUTE_NOT_FOUND, "no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return HttpError(
            grpc.StatusCode.UNIMPLEMENTED,
            METHOD_NOT_ALLOWED,
            f"{exc.method} is not allowed here; allowed: {allowed}",
            http_status=405,
            headers={"Allow": allowed},
        )
    if exc.status == 413:
        return body_too_large()
    if 400 <= exc.status < 500:
        return HttpError(
            grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_ARGUMENT, exc.reason, http_status=400
        )
    return errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, "internal error")


def body_too_large() -> HttpError:
    return HttpError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        BODY_TOO_LARGE,
        f"the request body is larger than {limits.BODY_BYTES_MAX} bytes",
        http_status=413,
    )


def request_id_of(request: web.Request) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_of(request)
    request[REQUEST_ID_KEY] = request_id
    try:
        response = await handler(request)
    except errors.BankError as error:
        response = _refused(request, error, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _refused(request, from_http_exception(exc), request_id)
    except grpc.RpcError as exc:  # a call whose handler did not convert it
        response = _refused(request, rpc_failure(exc), request_id)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http_internal_error", request_id=request_id, method=request.method, path=request.path)
        failure = errors.BankError(
            grpc.StatusCode.INTERNAL, errors.INTERNAL, f"internal error; request id {request_id}"
        )
        response = error_response(failure, request_id)
    response.headers["X-Request-Id"] = request_id
    return response


def _refused(request: web.Request, error: errors.BankError, request_id: str) -> web.Response:
    if error.code == grpc.StatusCode.UNKNOWN:
        # UNKNOWN is what grpc makes of an exception a servicer did not catch;
        # its text is that exception's: log it, don't show it.
        log.warning("http_upstream_unknown", request_id=request_id, upstream_message=error.message)
        error = errors.BankError(error.code, error.reason, f"internal error; request id {request_id}")
    response = error_response(error, request_id)
    if response.status >= 500 or error.code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        log.info(
            "http_refused",
            request_id=request_id,
            method=request.method,
            path=request.path,
            status=response.status,
            code=error.code.name,
            reason=error.reason,
        )
    return response
