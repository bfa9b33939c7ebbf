"""The edge's in-process channel (gateway.http.local): a call runs the
server's interceptor and servicer and fails exactly as a grpc.aio call would
(code, details, rich status, deadline, escaped exceptions, the concurrency
bound), so `rpc_failure` maps it as before."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpc
import pytest
from grpc_status import rpc_status

from gateway.auth import keys, permissions, principal
from gateway.auth.interceptor import AuthInterceptor
from gateway.auth.ratelimit import RateLimiter
from gateway.http import local
from gateway.http.errors import rpc_failure
from gateway.http.local import LocalChannel, LocalRpcError
from shardbank import errors
from shardbank.v1 import bank_pb2, bank_pb2_grpc, types_pb2

Behavior = Callable[[Any, Any], Awaitable[Any]]


class Bank(bank_pb2_grpc.BankServicer):
    """GetAccount runs `behavior`; it records who called and with what."""

    def __init__(self, behavior: Behavior) -> None:
        self.behavior = behavior

    async def GetAccount(self, request: Any, context: Any) -> Any:
        return await self.behavior(request, context)


class Keys:
    """A KeyCache holding one customer key."""

    def __init__(self) -> None:
        self.tokens: dict[str, keys.Token] = {}
        self.keys: dict[str, keys.ApiKey] = {}
        token = keys.new_token()
        self.tokens[permissions.CUSTOMER] = token
        self.keys[token.key_id] = keys.ApiKey(
            token.key_id, permissions.CUSTOMER, "c1", keys.hash_secret(token.secret), 1
        )

    async def authenticate(self, token: keys.Token) -> keys.ApiKey | None:
        key = self.keys.get(token.key_id)
        return key if key is not None and keys.matches(key, token) else None

    def bearer(self, role: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[role].text}"), ("x-request-id", "req-1"))


def _stub(channel: LocalChannel) -> Any:
    return bank_pb2_grpc.BankStub(cast(grpc.Channel, channel))


def _channel(behavior: Behavior, interceptors: list[Any] | None = None) -> LocalChannel:
    channel = LocalChannel(interceptors or [])
    bank_pb2_grpc.add_BankServicer_to_server(Bank(behavior), channel)
    return channel


def _failure(work: Awaitable[Any]) -> LocalRpcError:
    with pytest.raises(LocalRpcError) as caught:
        asyncio.run(_run(work))
    return caught.value


async def _run(work: Awaitable[Any]) -> Any:
    return await work


def test_a_call_passes_the_message_metadata_and_deadline_and_returns_the_reply() -> None:
    seen: dict[str, Any] = {}
    reply = types_pb2.Account(id=7)

    async def behavior(request: Any, context: Any) -> Any:
        seen["request"] = request
        seen["metadata"] = dict(context.invocation_metadata())
        seen["remaining"] = context.time_remaining()
        seen["peer"] = context.peer()
        return reply

    async def main() -> Any:
        stub = _stub(_channel(behavior))
        return await stub.GetAccount(
            bank_pb2.GetAccountRequest(account_id=7), timeout=3.0, metadata=(("x-request-id", "r"),)
        )

    assert asyncio.run(main()) is reply
    assert seen["request"].account_id == 7
    assert seen["metadata"] == {"x-request-id": "r"}
    assert 0 < seen["remaining"] <= 3.0
    assert seen["peer"] == local.PEER


def test_an_abort_is_an_rpc_error_with_its_rich_status() -> None:
    async def behavior(_request: Any, context: Any) -> Any:
        refused = errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")
        refused.metadata["shard"] = "shard-2"
        await errors.abort(context, refused)

    failure = _failure(_stub(_channel(behavior)).GetAccount(bank_pb2.GetAccountRequest(), timeout=1.0))
    assert failure.code() == grpc.StatusCode.NOT_FOUND
    assert failure.details() == "no such account"
    assert rpc_status.from_call(failure) is not None
    parsed = errors.from_rpc_error(failure)
    assert (parsed.reason, parsed.metadata) == (errors.ACCOUNT_NOT_FOUND, {"shard": "shard-2"})


def test_past_the_deadline_the_servicer_is_cancelled_and_the_call_is_deadline_exceeded() -> None:
    cancelled = asyncio.Event()

    async def behavior(_request: Any, _context: Any) -> Any:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    failure = _failure(_stub(_channel(behavior)).GetAccount(bank_pb2.GetAccountRequest(), timeout=0.05))
    assert failure.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert rpc_failure(failure).message == "the call to the gRPC gateway failed (DEADLINE_EXCEEDED)"
    assert cancelled.is_set()


@pytest.mark.parametrize("escaped", [RuntimeError("secret internals"), TimeoutError("its own timeout")])
def test_an_exception_the_servicer_lets_escape_is_unknown_without_its_text(escaped: Exception) -> None:
    async def behavior(_request: Any, _context: Any) -> Any:
        raise escaped

    failure = _failure(_stub(_channel(behavior)).GetAccount(bank_pb2.GetAccountRequest(), timeout=5.0))
    assert failure.code() == grpc.StatusCode.UNKNOWN
    assert str(escaped) not in failure.details()


def test_an_unregistered_method_is_unimplemented() -> None:
    channel = LocalChannel()
    failure = _failure(_stub(channel).GetAccount(bank_pb2.GetAccountRequest(), timeout=1.0))
    assert failure.code() == grpc.StatusCode.UNIMPLEMENTED


def test_calls_past_the_in_flight_bound_are_resource_exhausted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "CALLS_IN_FLIGHT_MAX", 2)
    release = asyncio.Event()

    async def behavior(_request: Any, _context: Any) -> Any:
        await release.wait()
        return types_pb2.Account(id=1)

    async def main() -> tuple[list[Any], LocalRpcError]:
        stub = _stub(_channel(behavior))
        held = [
            asyncio.create_task(stub.GetAccount(bank_pb2.GetAccountRequest(), timeout=5.0)) for _ in range(2)
        ]
        await asyncio.sleep(0)
        with pytest.raises(LocalRpcError) as caught:
            await stub.GetAccount(bank_pb2.GetAccountRequest(), timeout=5.0)
        release.set()
        return list(await asyncio.gather(*held)), caught.value

    answered, refused = asyncio.run(main())
    assert [a.id for a in answered] == [1, 1]
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_auth_interceptor_binds_the_principal_and_refuses_like_on_the_server() -> None:
    key_cache = Keys()
    seen: list[principal.Principal | None] = []

    async def behavior(_request: Any, _context: Any) -> Any:
        seen.append(principal.current())
        return types_pb2.Account(id=1)

    limiter = RateLimiter(clock=lambda: 0.0)  # no refill: the burst is all there is
    interceptor = AuthInterceptor(cast(keys.KeyCache, key_cache), limiter)
    stub = _stub(_channel(behavior, [interceptor]))

    def call(metadata: tuple[tuple[str, str], ...]) -> Awaitable[Any]:
        return stub.GetAccount(bank_pb2.GetAccountRequest(), timeout=1.0, metadata=metadata)

    asyncio.run(_run(call(key_cache.bearer(permissions.CUSTOMER))))
    (caller,) = seen
    assert caller is not None
    assert (caller.role, caller.customer_id, caller.request_id, caller.peer) == (
        permissions.CUSTOMER, "c1", "req-1", local.PEER
    )  # fmt: skip
    assert principal.current() is None, "unbound after the call"

    missing = _failure(call((("x-request-id", "req-2"),)))
    assert (missing.code(), errors.from_rpc_error(missing).reason) == (
        grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"
    )  # fmt: skip

    # The rest of the burst (one token went above), then one more: refused with retry-after.
    burst = permissions.RATE_LIMITS[permissions.CUSTOMER].burst
    for _ in range(burst - 1):
        asyncio.run(_run(call(key_cache.bearer(permissions.CUSTOMER))))
    limited = _failure(call(key_cache.bearer(permissions.CUSTOMER)))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    mapped = rpc_failure(limited)
    assert mapped.reason == "RATE_LIMITED"
    assert mapped.headers["Retry-After"] == mapped.metadata["retry_after_s"]
    assert ("retry-after", mapped.headers["Retry-After"]) in limited.trailing_metadata()
    assert len(seen) == burst, "refused calls never reach the servicer"


def test_the_peer_is_the_http_client_the_edge_names() -> None:
    """Audit records name the HTTP client's address (set by the edge from the
    socket), bounded; without it, the edge itself."""
    peers: list[str] = []

    async def behavior(request: Any, context: Any) -> Any:
        peers.append(context.peer())
        return types_pb2.Account(id=7)

    async def main() -> None:
        stub = _stub(_channel(behavior))
        for address in ("10.1.2.3", "x" * 100):
            named = ((local.PEER_METADATA, address),)
            await stub.GetAccount(bank_pb2.GetAccountRequest(account_id=7), timeout=3.0, metadata=named)
        await stub.GetAccount(bank_pb2.GetAccountRequest(account_id=7), timeout=3.0)

    asyncio.run(main())
    assert peers == ["http:10.1.2.3", "http:" + "x" * local.PEER_LENGTH_MAX, local.PEER]
