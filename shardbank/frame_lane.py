"""The frame lane: a node's write stream on a plain TCP connection.

Why: under one-transfer-per-call traffic (S3, S4) most of what a node and a
coordinator spent per transfer was grpc.aio plumbing per message, not the
money rules. The same `WriteMessage`/`WriteReply` protobufs as length-prefixed
frames on an asyncio connection cost a fraction of that (docs/performance.md,
"The frame lane"), and many frames that arrive together are read in one go,
so they meet in one group commit. The protobufs stay the contract; only the
framing is ours (ledger.proto, `FrameHello`).

This module is the codec and the caller's end. `FrameCall` looks to
`shardbank.node_stream.NodeStream` like a grpc.aio stream-stream call (async
iteration over replies, `cancel()`), so deadlines, reopening, backoff and the
"stream broke = outcome unknown" rule are NodeStream's, unchanged. What the
lane adds:

- the handshake: the node's `FrameHello` (version, fresh nonce), then our
  `FrameAuth` with a service token over the WriteStream method and that nonce;
  messages follow at once (the node reads the auth first, and refuses the
  connection with a WriteReply of id 0 and an error if it is bad);
- the connection ending or failing to open ends iteration with a `BankError`
  (UNAVAILABLE SHARD_UNAVAILABLE, or the node's refusal as it said it).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog
from google.protobuf.message import DecodeError

from shardbank import errors, limits, service_auth
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2

log = structlog.get_logger("frame_lane")

VERSION = 1
# Set to "grpc" in a caller's environment to keep its writes on the gRPC
# stream even to nodes that announce a frame lane (a firewall that passes only
# the gRPC port; a side-by-side measurement). Read by `ShardDirectory`.
TRANSPORT_ENV = "SHARDBANK_NODE_TRANSPORT"
# What a token on the lane is signed for, with the connection's nonce appended.
METHOD = "/" + ledger_pb2.DESCRIPTOR.services_by_name["LedgerNode"].full_name + "/WriteStream"
NONCE_BYTES = 32
HEADER = struct.Struct(">I")
# The largest frame either end accepts: the same bound as one gRPC message.
FRAME_BYTES_MAX = limits.MESSAGE_BYTES_MAX


class Message(Protocol):
    def SerializeToString(self) -> bytes: ...


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return HEADER.pack(len(body)) + body


def signed_method(nonce: bytes) -> str:
    return f"{METHOD}#{nonce.hex()}"


class FrameTooLarge(ValueError):
    pass


class Deframer:
    """Cuts a byte stream into frame bodies. A length past `limit` is an error
    (the peer is broken or hostile), never that much buffering; the limit may
    change between frames (a node takes only a small frame before the caller
    has authenticated)."""

    def __init__(self, limit: int = FRAME_BYTES_MAX) -> None:
        self._buffer = bytearray()
        self._start = 0
        self.limit = limit

    def push(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def pop(self) -> bytes | None:
        """The next whole frame's body, None until one has arrived."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(buffer, start)
        if size > self.limit:
            raise FrameTooLarge(f"frame of {size} bytes, at most {self.limit}")
        end = start + HEADER.size + size
        if len(buffer) < end:
            return None
        self._start = end
        return bytes(buffer[start + HEADER.size : end])

    def feed(self, data: bytes) -> list[bytes]:
        self.push(data)
        bodies: list[bytes] = []
        while (body := self.pop()) is not None:
            bodies.append(body)
        return bodies


@dataclass(frozen=True)
class Credentials:
    """Who the caller is on the lane: the cluster secret (empty: auth off) and
    its component id (shard-1, coord-1, gw-1)."""

    secret: bytes
    component_id: str

    def token(self, nonce: bytes) -> str:
        if not self.secret:
            return ""
        return service_auth.sign(
            self.secret, self.component_id, signed_method(nonce), service_auth.wall_clock_ms()
        )


def unavailable(message: str) -> BankError:
    return BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, message)


def refusal_reply(failure: BankError) -> ledger_pb2.WriteReply:
    """What a node sends before it closes a connection it refuses."""
    error = ledger_pb2.WriteError(code=failure.code.value[0], reason=failure.reason, message=failure.message)
    return ledger_pb2.WriteReply(id=0, error=error)


class _Receiver(asyncio.Protocol):
    """Frames in: the first is the node's hello (`hello`), the rest replies,
    then the end, as events on one queue."""

    def __init__(self, inbox: asyncio.Queue[bytes | BankError], name: str) -> None:
        self._inbox = inbox
        self._deframer = Deframer()
        self._name = name
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            bodies = self._deframer.feed(data)
        except FrameTooLarge as exc:
            self._end(unavailable(f"{self._name} sent a bad frame: {exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        for body in bodies:
            if not self.hello.done():
                self.hello.set_result(body)
            else:
                self._inbox.put_nowait(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(unavailable(f"frame lane to {self._name} ended"))

    def _end(self, failure: BankError) -> None:
        if not self.hello.done():
            self.hello.set_exception(failure)
        self._inbox.put_nowait(failure)


class FrameCall:
    """One connection: what NodeStream calls a call (see module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        name: str,
        requests: AsyncIterator[ledger_pb2.WriteMessage],
    ) -> None:
        self._inbox: asyncio.Queue[bytes | BankError] = asyncio.Queue()
        self._name = name
        self._receiver: _Receiver | None = None
        self._ended: BankError | None = None
        self._sender = asyncio.ensure_future(self._send(host, port, credentials, requests))

    async def _send(
        self, host: str, port: int, credentials: Credentials, requests: AsyncIterator[ledger_pb2.WriteMessage]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, receiver = await loop.create_connection(
                lambda: _Receiver(self._inbox, self._name), host, port
            )
        except OSError as exc:
            # NodeStream retries (backing off to one open a second); a node
            # that is down says so here, and so does a lane a firewall drops.
            log.warning(
                "frame_lane_unreachable",
                node=self._name,
                address=f"{host}:{port}",
                error=type(exc).__name__,
                hint=f"if only the node's gRPC port is reachable: {TRANSPORT_ENV}=grpc on callers, "
                "or --frame-listen '' on the node",
            )
            failure = unavailable(
                f"cannot reach {self._name}'s frame lane at {host}:{port} ({type(exc).__name__})"
            )
            self._inbox.put_nowait(failure)
            return
        self._receiver = receiver
        try:
            hello = ledger_pb2.FrameHello.FromString(await receiver.hello)
        except BankError:
            return  # the inbox has the end already
        except DecodeError:
            hello = ledger_pb2.FrameHello()  # refused just below, as a version mismatch
        if hello.version != VERSION or len(hello.nonce) != NONCE_BYTES:
            transport.abort()
            self._inbox.put_nowait(
                BankError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    errors.SHARD_UNAVAILABLE,
                    f"{self._name} speaks frame lane version {hello.version}, this caller {VERSION}",
                )
            )
            return
        transport.write(frame(ledger_pb2.FrameAuth(version=VERSION, token=credentials.token(hello.nonce))))
        async for message in requests:
            if transport.is_closing():
                return
            transport.write(frame(message))
        transport.close()  # NodeStream is done with this call (closed, or failed what was pending)

    def __aiter__(self) -> FrameCall:
        return self

    async def __anext__(self) -> ledger_pb2.WriteReply:
        if self._ended is not None:
            raise self._ended
        event = await self._inbox.get()
        if isinstance(event, BankError):
            self._ended = event
            raise event
        try:
            reply = ledger_pb2.WriteReply.FromString(event)
        except DecodeError:
            self.cancel()
            self._ended = unavailable(f"{self._name} sent a frame that is not a WriteReply")
            raise self._ended from None
        if reply.id == 0 and reply.WhichOneof("body") == "error":
            error = reply.error
            self._ended = BankError(errors.status_code(error.code), error.reason, error.message)
            raise self._ended
        return reply

    def cancel(self) -> bool:
        self._sender.cancel()
        if self._receiver is not None and self._receiver.transport is not None:
            self._receiver.transport.abort()
        self._inbox.put_nowait(unavailable(f"frame lane to {self._name} cancelled"))
        return True


def opener(
    address: str, credentials: Credentials, name: str
) -> Callable[[AsyncIterator[ledger_pb2.WriteMessage]], FrameCall]:
    """What NodeStream opens a stream with, for a node's announced frame address."""
    host, _, port = address.rpartition(":")
    return lambda requests: FrameCall(host, int(port), credentials, name, requests)
