"""Service-to-service authentication: signed service tokens.

Every process of a cluster holds one cluster secret (32 random bytes, hex, in a
file: `--cluster-secret-file PATH` or `$SHARDBANK_CLUSTER_SECRET_FILE`). A
caller (gateway, coordinator, a test) adds to every call the metadata

    x-shardbank-service: <component_id>.<unix_ms>.<hex HMAC-SHA256(secret, "component_id|unix_ms|method")>

and ledger nodes and coordinators refuse a call without a valid one:
UNAUTHENTICATED, ErrorInfo reason `SERVICE_UNAUTHENTICATED`. The token binds
the caller's id, the time (accepted within `CLOCK_SKEW_MS_MAX` either way) and
the full method name; it does not bind the request body and is not single-use
(a token seen on the wire can be replayed for the same method within the skew
window): it keeps out callers that do not hold the secret, it is no
replacement for TLS on an untrusted network. Health and reflection stay open,
so probes and orchestration need no secret.

An empty secret turns authentication off (unit tests, standalone nodes): no
token is sent and none is checked; the process logs a warning at start.

A second, weaker credential exists for read-only tools (the reports): the
*reader key*, HMAC-SHA256(cluster secret, READER_KEY_CONTEXT). Every process
holding the cluster secret derives it; whoever holds only the reader key
cannot derive the secret back. Nodes accept a token signed with it for the
ledger's read methods (`READ_ONLY_METHODS`) and answer any other method
PERMISSION_DENIED `SERVICE_READ_ONLY`. So the back office can run the
end-of-day and AML reports without the key that can move money.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog

from shardbank import errors
from shardbank.v1 import ledger_pb2

log = structlog.get_logger("service_auth")

METADATA_KEY = "x-shardbank-service"
SECRET_FILE_ENV = "SHARDBANK_CLUSTER_SECRET_FILE"
SECRET_FILE_NAME = "cluster.secret"
# Bytes of a generated secret (HMAC-SHA256's block is 64, its output 32).
SECRET_BYTES = 32
# A shorter secret than this is refused when read: it would be guessable.
SECRET_BYTES_MIN = 16
# How far a token's time may be from the receiver's clock, either way (hosts'
# clocks drift; a call in flight takes at most limits.CALL_DEADLINE_S).
CLOCK_SKEW_MS_MAX = 60_000
# Component ids: what `LocalCluster` and the flags use (shard-1, coord-1, gw-1).
COMPONENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The longest token accepted: id + 13-digit ms + 64 hex + two dots, with room.
TOKEN_LENGTH_MAX = 256
# Services any caller may reach: probes and reflection.
OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# Refusals are logged at most once per this interval (with a count), so a
# misconfigured caller cannot flood the log.
REFUSAL_LOG_INTERVAL_S = 5.0
# The reader key (see module doc): its file beside cluster.secret, and what
# it is derived with.
READER_SECRET_FILE_NAME = "reader.secret"
READER_KEY_CONTEXT = b"shardbank reader key v1"
# What a reader-key token may call: the ledger nodes' reads, nothing that writes.
_LEDGER_NODE = "/" + ledger_pb2.DESCRIPTOR.services_by_name["LedgerNode"].full_name + "/"
READ_ONLY_METHODS = frozenset(
    _LEDGER_NODE + name
    for name in (
        "ReadJournal", "ListAccounts", "ListInDoubt", "GetNodeInfo", "GetAccounts", "GetTransfers",
        "ListHistory", "GetActivity", "DigestSlots",
    )
)  # fmt: skip


class SecretError(ValueError):
    """The cluster secret file is missing, unreadable or malformed."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- the secret ----------------------------------------------------------------


def generate_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret in a file of hex; SecretError when it is not one."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        secret = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SecretError(f"cannot read the cluster secret from {path}: {exc}") from None
    if len(secret) < SECRET_BYTES_MIN:
        raise SecretError(
            f"the cluster secret in {path} has {len(secret)} bytes, at least {SECRET_BYTES_MIN}"
        )
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("cluster_secret_readable_by_others", path=str(path), mode=oct(mode))
    return secret


def _create_key_file(path: str | os.PathLike[str], key: bytes) -> bool:
    """Write `key` as hex to a new file of mode 0600; False if the file exists
    (it is never overwritten, and never briefly readable by others)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key.hex() + "\n")
    return True


def ensure_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read the secret at `path`, creating it (mode 0600) on first use."""
    secret = generate_secret()
    return secret if _create_key_file(path, secret) else read_secret(path)


def reader_secret(cluster_secret: bytes) -> bytes:
    """The reader key of a cluster secret (see module doc)."""
    return hmac.new(cluster_secret, READER_KEY_CONTEXT, hashlib.sha256).digest()


def ensure_reader_file(path: str | os.PathLike[str], cluster_secret: bytes) -> None:
    """Write the reader key beside the secret (mode 0600) unless it is there."""
    _create_key_file(path, reader_secret(cluster_secret))


def load_cluster_secret(path: str | None, component_id: str) -> bytes:
    """The secret a process runs with: `path` (the flag) if given, else the file
    named by $SHARDBANK_CLUSTER_SECRET_FILE, else none (auth off, with a warning)."""
    chosen = path if path is not None else os.environ.get(SECRET_FILE_ENV, "")
    if not chosen:
        log.warning(
            "service_auth_off",
            component_id=component_id,
            why="no --cluster-secret-file and no $" + SECRET_FILE_ENV,
        )
        return b""
    secret = read_secret(chosen)
    log.info("service_auth_on", component_id=component_id, secret_file=chosen)
    return secret


def add_secret_argument(parser: Any) -> None:
    """`--cluster-secret-file` on an argparse parser (same text everywhere)."""
    parser.add_argument(
        "--cluster-secret-file",
        default=None,
        help=f"file with the cluster secret (hex); default ${SECRET_FILE_ENV}; empty: no service auth",
    )


# ---- tokens --------------------------------------------------------------------


def _mac(secret: bytes, component_id: str, unix_ms: int, method: str) -> str:
    message = f"{component_id}|{unix_ms}|{method}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, component_id: str, method: str, unix_ms: int) -> str:
    if not secret:
        raise ValueError("signing needs a secret")
    if COMPONENT_ID_PATTERN.fullmatch(component_id) is None:
        raise ValueError(f"component id {component_id!r} must match {COMPONENT_ID_PATTERN.pattern}")
    return f"{component_id}.{unix_ms}.{_mac(secret, component_id, unix_ms, method)}"


# A well-formed token this secret did not sign (perhaps the reader key did).
BAD_SIGNATURE = "bad signature"


@dataclass(frozen=True)
class Verdict:
    """`caller` is set when the token is valid, else `why` says what was wrong."""

    caller: str = ""
    why: str = ""


def verify(
    secret: bytes, token: str | None, method: str, now_ms: int, skew_ms_max: int = CLOCK_SKEW_MS_MAX
) -> Verdict:
    if not token:
        return Verdict(why="no service token")
    if len(token) > TOKEN_LENGTH_MAX:
        return Verdict(why="token too long")
    parts = token.split(".")
    if len(parts) != 3:
        return Verdict(why="malformed token")
    component_id, unix_ms_text, mac = parts
    if COMPONENT_ID_PATTERN.fullmatch(component_id) is None or not unix_ms_text.isdigit():
        return Verdict(why="malformed token")
    unix_ms = int(unix_ms_text)
    expected = _mac(secret, component_id, unix_ms, method)
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return Verdict(why=BAD_SIGNATURE)
    # After the signature: the time in a token is only trusted once it is signed.
    if abs(now_ms - unix_ms) > skew_ms_max:
        return Verdict(why="token time outside the clock skew bound")
    return Verdict(caller=component_id)


def judge(
    secret: bytes, reader: bytes, token: str | None, method: str, now_ms: int, *, read_only: bool, named: str
) -> errors.BankError | None:
    """None when `token` may call `method` (the string it must be signed
    for): signed with the cluster secret, or with the reader key (`reader`,
    from `reader_secret`) when the call only reads (`read_only`); else the
    refusal to answer, naming the call as `named`. The one rule for gRPC
    calls (ServerAuthInterceptor) and frame lane connections."""
    verdict = verify(secret, token, method, now_ms)
    if verdict.caller:
        return None
    if verdict.why == BAD_SIGNATURE and verify(reader, token, method, now_ms).caller:
        return None if read_only else read_only_refusal(named)
    return refusal(verdict.why)


class RefusalLog:
    """Refusals counted, and logged as `event` at most once per
    REFUSAL_LOG_INTERVAL_S with the count since the last line, so a
    misconfigured caller retrying fast cannot flood the log."""

    def __init__(self, event: str) -> None:
        self._event = event
        self.refused = 0
        self._logged_refused = 0
        self._logged_at_s = 0.0

    def note(self, why: str, **fields: str) -> None:
        self.refused += 1
        now_s = time.monotonic()
        if now_s - self._logged_at_s >= REFUSAL_LOG_INTERVAL_S:
            log.warning(
                self._event, **fields, why=why, refused_since_last_log=self.refused - self._logged_refused
            )
            self._logged_at_s = now_s
            self._logged_refused = self.refused


def refusal(why: str) -> errors.BankError:
    return errors.BankError(
        grpc.StatusCode.UNAUTHENTICATED,
        errors.SERVICE_UNAUTHENTICATED,
        f"service call refused: {why}",
    )


def read_only_refusal(method: str) -> errors.BankError:
    return errors.BankError(
        grpc.StatusCode.PERMISSION_DENIED,
        errors.SERVICE_READ_ONLY,
        f"the reader key may call the ledger's reads only, not {method}",
    )


# ---- client side ---------------------------------------------------------------


def _method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


class _Signer:
    def __init__(self, secret: bytes, component_id: str, clock_ms: Callable[[], int]) -> None:
        sign(secret, component_id, "/check", 0)  # fail at construction on a bad id or secret
        self._secret = secret
        self._component_id = component_id
        self._clock_ms = clock_ms

    def details(self, call: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = sign(self._secret, self._component_id, _method_name(call.method), self._clock_ms())
        metadata = grpc.aio.Metadata(*(call.metadata or ()))
        metadata[METADATA_KEY] = token
        return grpc.aio.ClientCallDetails(
            call.method, call.timeout, metadata, call.credentials, call.wait_for_ready
        )


class _UnaryUnary(_Signer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details), request)


class _UnaryStream(_Signer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details), request)


class _StreamUnary(_Signer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


class _StreamStream(_Signer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self.details(client_call_details), request_iterator)


def channel_interceptors(
    secret: bytes, component_id: str, clock_ms: Callable[[], int] = wall_clock_ms
) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a `grpc.aio` channel that sign every call as
    `component_id`; none when the secret is empty (auth off)."""
    if not secret:
        return []
    return [
        _UnaryUnary(secret, component_id, clock_ms),
        _UnaryStream(secret, component_id, clock_ms),
        _StreamUnary(secret, component_id, clock_ms),
        _StreamStream(secret, component_id, clock_ms),
    ]


@dataclass(frozen=True)
class _SyncCallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class SyncSigner(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """The same token on a synchronous channel (tests, tools):
    `grpc.intercept_channel(grpc.insecure_channel(address), SyncSigner(secret, "test"))`."""

    def __init__(self, secret: bytes, component_id: str, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        sign(secret, component_id, "/check", 0)
        self._secret = secret
        self._component_id = component_id
        self._clock_ms = clock_ms

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        method = _method_name(client_call_details.method)
        token = sign(self._secret, self._component_id, method, self._clock_ms())
        metadata = [*(client_call_details.metadata or ()), (METADATA_KEY, token)]
        details = _SyncCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            getattr(client_call_details, "wait_for_ready", None),
            getattr(client_call_details, "compression", None),
        )
        return continuation(details, request)


def signed_channel(address: str, secret: bytes, component_id: str) -> grpc.Channel:
    """A synchronous channel to `address` whose calls carry a token (none if
    the secret is empty)."""
    channel = grpc.insecure_channel(address)
    if not secret:
        return channel
    return grpc.intercept_channel(channel, SyncSigner(secret, component_id))


# ---- server side ---------------------------------------------------------------


def _aborting_handler(like: grpc.RpcMethodHandler | None, status: grpc.Status) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `like` that only aborts with `status`."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover (makes this an async generator)

    request_streaming = like is not None and like.request_streaming
    response_streaming = like is not None and like.response_streaming
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort_unary)


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class ServerAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses every call outside `OPEN_SERVICE_PREFIXES` that has no valid token."""

    def __init__(self, secret: bytes, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        if not secret:
            raise ValueError("a server interceptor needs a secret")
        self._secret = secret
        self._reader = reader_secret(secret)
        self._clock_ms = clock_ms
        self.refusals = RefusalLog("service_call_refused")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = _method_name(handler_call_details.method)
        if method.startswith(OPEN_SERVICE_PREFIXES):
            return await continuation(handler_call_details)
        token = _metadata_value(handler_call_details, METADATA_KEY)
        failure = judge(
            self._secret,
            self._reader,
            token,
            method,
            self._clock_ms(),
            read_only=method in READ_ONLY_METHODS,
            named=method,
        )
        if failure is None:
            return await continuation(handler_call_details)
        self.refusals.note(failure.message, method=method)
        handler = await continuation(handler_call_details)
        return _aborting_handler(handler, failure.to_status())


def server_interceptors(secret: bytes) -> list[grpc.aio.ServerInterceptor]:
    """For `grpc.aio.server(interceptors=...)`; none when the secret is empty."""
    return [ServerAuthInterceptor(secret)] if secret else []
