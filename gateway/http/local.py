"""The HTTP edge's channel to the gateway's own gRPC services, in process.

Why: the edge runs inside the gateway process, and it used to call the
gateway's own gRPC port over loopback. Every HTTP request then paid a
grpc.aio client call *and* a server call (serialization both ways, HTTP/2
framing, completion queues, call objects) without leaving the process: the
largest part of the gateway's CPU per transfer under S4 (docs/performance.md).

`LocalChannel` stands where that channel stood: the generated stubs
(`bank_pb2_grpc.BankStub(channel)`) work on it unchanged, but a call runs the
server's own interceptors and servicer method in the caller's task, passing
the message objects as they are. What a gRPC caller gets stays exactly the
edge's too, because it is the same code:

- The servicers are registered here by the same generated
  `add_*Servicer_to_server` functions as on the gRPC server, and the
  interceptors are the server's (`gateway.auth.interceptor.AuthInterceptor`):
  authentication, the rate limit (`x-coalesced-requests` included), the
  permission check, the request id and the bound `Principal` have one code
  path.
- A refusal or abort raises `LocalRpcError`, a `grpc.RpcError` carrying the
  status's code, details and trailing metadata (the rich status with
  ErrorInfo and RetryInfo, `retry-after`), so the edge maps it with the same
  `gateway.http.errors.rpc_failure` as a status that came over the wire.
- The call's `timeout` is the servicer context's `time_remaining()` (the
  handlers' `Budget`) and is enforced: past it the servicer is cancelled and
  the call fails DEADLINE_EXCEEDED without rich details, as a grpc client's
  call does. An exception a servicer lets escape is UNKNOWN (grpc's answer),
  logged here with its traceback.
- Calls in flight are bounded by CALLS_IN_FLIGHT_MAX (the server's
  `maximum_concurrent_rpcs`), refused RESOURCE_EXHAUSTED past it.

What is gone with the wire: serialization. Neither side may keep a message
after the call: the edge builds a fresh request per call and only reads the
reply, and the servicers build their replies anew.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from shardbank import limits

log = structlog.get_logger("gateway.http")

# Calls running at once, like the gRPC server's `maximum_concurrent_rpcs`:
# in-process calls must not escape the bound every other caller has.
CALLS_IN_FLIGHT_MAX = limits.CONCURRENT_RPCS_MAX
# The peer a servicer sees (`context.peer()`, written into audit records):
# `http:<client address>` from the edge's PEER_METADATA (only the edge calls
# this channel, and it sets that key itself from the socket, never from a
# header); PEER when the edge could not tell.
PEER = "local:http-edge"
PEER_METADATA = "x-shardbank-http-peer"
PEER_LENGTH_MAX = 64


def caller_metadata(request_id: str, authorization: str | None, peer: str) -> tuple[tuple[str, str], ...]:
    """What every edge call carries: the request id, the caller's
    `Authorization` unchanged (None: absent), and its address (empty: unknown)."""
    metadata = [("x-request-id", request_id)]
    if authorization is not None:
        metadata.append(("authorization", authorization))
    if peer:
        metadata.append((PEER_METADATA, peer))
    return tuple(metadata)


Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class LocalRpcError(grpc.RpcError):  # type: ignore[misc]
    """A call's failure with what a grpc.aio call error offers the edge:
    `code()`, `details()` and `trailing_metadata()` (so
    `grpc_status.rpc_status.from_call` reads its rich status)."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence[Any] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing_metadata = tuple(trailing_metadata)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._trailing_metadata

    def initial_metadata(self) -> tuple[Any, ...]:
        return ()


@dataclass(frozen=True)
class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class LocalContext:
    """The part of `grpc.aio.ServicerContext` the servicers and the
    interceptor use: deadline, metadata, peer and abort."""

    def __init__(self, deadline_s: float | None, metadata: tuple[tuple[str, str], ...]) -> None:
        self._deadline_s = deadline_s
        self._metadata = metadata

    def time_remaining(self) -> float | None:
        if self._deadline_s is None:
            return None
        return max(0.0, self._deadline_s - asyncio.get_running_loop().time())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        for key, value in self._metadata:
            if key == PEER_METADATA and value:
                return f"http:{value[:PEER_LENGTH_MAX]}"
        return PEER

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> None:
        raise LocalRpcError(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise LocalRpcError(status.code, status.details, status.trailing_metadata)


class LocalChannel:
    """The server side is filled like a `grpc.aio.Server` (generic handlers
    and interceptors); the client side is what generated stubs call."""

    def __init__(self, interceptors: Iterable[grpc.aio.ServerInterceptor] = ()) -> None:
        self._handlers: list[grpc.GenericRpcHandler] = []
        self._in_flight = 0
        resolve: Continuation = self._lookup
        for interceptor in reversed(list(interceptors)):  # the first one is the outermost, as on a server
            resolve = functools.partial(interceptor.intercept_service, resolve)
        self._resolve = resolve

    # As a server (what `add_*Servicer_to_server` calls).

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._handlers.extend(handlers)

    def add_registered_method_handlers(self, _service: str, _handlers: Mapping[str, Any]) -> None:
        """The same handlers reach us through `add_generic_rpc_handlers`."""

    async def _lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        for handler in self._handlers:
            found = handler.service(details)
            if found is not None:
                return found
        return None

    # As a channel (what generated stubs call).

    def unary_unary(self, method: str, *_args: Any, **_kwargs: Any) -> LocalUnaryUnary:
        return LocalUnaryUnary(self, method)

    def unary_stream(self, method: str, *_args: Any, **_kwargs: Any) -> Callable[..., Any]:
        """Stubs make one per streaming method; the edge calls none of them."""
        return functools.partial(_not_served, method)

    stream_unary = unary_stream
    stream_stream = unary_stream

    async def call(
        self, method: str, request: Any, timeout: float | None, metadata: Sequence[tuple[str, str]] | None
    ) -> Any:
        if self._in_flight >= CALLS_IN_FLIGHT_MAX:
            raise LocalRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        loop = asyncio.get_running_loop()
        deadline_s = None if timeout is None else loop.time() + timeout
        details = _CallDetails(method, tuple(metadata or ()))
        self._in_flight += 1
        try:
            handler = await self._resolve(details)
            if handler is None or handler.unary_unary is None:
                raise LocalRpcError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            context = LocalContext(deadline_s, details.invocation_metadata)
            return await _within(deadline_s, handler.unary_unary(request, context))
        finally:
            self._in_flight -= 1


async def _within(deadline_s: float | None, work: Awaitable[Any]) -> Any:
    """The servicer's answer, DEADLINE_EXCEEDED past the deadline, UNKNOWN for an escaped exception."""
    try:
        async with asyncio.timeout_at(deadline_s) as scope:
            return await work
    except LocalRpcError:
        raise
    except TimeoutError:
        if not scope.expired():
            raise _unknown() from None
        raise LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
    except asyncio.CancelledError:
        raise
    except Exception:
        raise _unknown() from None


def _not_served(method: str, *_args: Any, **_kwargs: Any) -> Any:
    raise LocalRpcError(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served in process")


def _unknown() -> LocalRpcError:
    log.exception("local_call_failed")
    return LocalRpcError(grpc.StatusCode.UNKNOWN, "Unexpected error in the servicer")


class LocalUnaryUnary:
    """One method of a stub: `await method(request, timeout=..., metadata=...)`."""

    def __init__(self, channel: LocalChannel, method: str) -> None:
        self._channel = channel
        self._method = method

    async def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        **_options: Any,
    ) -> Any:
        return await self._channel.call(self._method, request, timeout, metadata)
