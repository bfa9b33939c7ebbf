"""The node's end of the frame lane (`shardbank.frame_lane`): WriteStream's
messages on plain TCP, answered by the same handler as the gRPC stream.

Why a second listener: a grpc.aio stream message cost the node ~350-400 µs of
CPU in plumbing and was read one per event-loop turn; a frame costs a few
tens of µs and every frame that arrived is read at once, so concurrent
messages meet in one group commit (docs/performance.md, "The frame lane").

Per connection, in order:

1. the node sends a `FrameHello` (version, 32 fresh random bytes);
2. the caller's first frame must be a `FrameAuth` whose token
   (`shardbank.service_auth`) signs the WriteStream method and that nonce
   within `AUTH_TIMEOUT_S`; a missing, bad or reader-key token gets a
   WriteReply of id 0 with the error (UNAUTHENTICATED / PERMISSION_DENIED, as
   the gRPC interceptor would answer) and the connection is closed;
3. then every frame is a `WriteMessage`, answered as its own task
   (`LedgerNodeServicer._answer`, so the same checks, writer, logs and
   metrics as the gRPC stream) with replies written as they finish.

Limits: frames up to `frame_lane.FRAME_BYTES_MAX`; at most `IN_FLIGHT_MAX`
messages of one connection being answered (past that the node stops reading
it, and TCP holds the caller back) and reading also pauses while the
caller is not taking its replies; at most `CONNECTIONS_MAX` connections.
A frame that is not a WriteMessage ends the connection (framing can no
longer be trusted). Stopping: no new connections, no more reads, answers in
flight get their replies out, then the connections close; the callers fail
what the node never read UNAVAILABLE and resend it (idempotent ids).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import grpc
import structlog
from google.protobuf.message import DecodeError

from shardbank import errors, frame_lane, service_auth
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2

log = structlog.get_logger("frame_server")

# As write_stream.IN_FLIGHT_MAX: a caller's lanes keep a few batches in
# flight, the coordinator a few rounds; a runaway caller holds at most this
# many messages in the writer.
IN_FLIGHT_MAX = 256
# Each caller process keeps one connection per node.
CONNECTIONS_MAX = 1024
# A connection that has not authenticated by then is closed.
AUTH_TIMEOUT_S = 5.0
# The largest frame taken before the caller has authenticated: a FrameAuth
# is a version and a token of at most service_auth.TOKEN_LENGTH_MAX bytes, so
# 1024 connections cannot make the node buffer 16 MiB each unauthenticated.
AUTH_FRAME_BYTES_MAX = 1024

Answer = Callable[[ledger_pb2.WriteMessage], Awaitable[ledger_pb2.WriteReply]]


class _Gate:
    """Checks a connection's FrameAuth like ServerAuthInterceptor checks a call."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._reader = service_auth.reader_secret(secret) if secret else b""

    def check(self, auth: ledger_pb2.FrameAuth, nonce: bytes) -> BankError | None:
        if auth.version != frame_lane.VERSION:
            return BankError(
                grpc.StatusCode.UNIMPLEMENTED,
                errors.INVALID_ARGUMENT,
                f"frame lane version {auth.version}, this node speaks {frame_lane.VERSION}",
            )
        if not self._secret:
            return None
        return service_auth.judge(
            self._secret,
            self._reader,
            auth.token,
            frame_lane.signed_method(nonce),
            service_auth.wall_clock_ms(),
            read_only=False,
            named=frame_lane.METHOD,
        )


class _Connection(asyncio.Protocol):
    def __init__(self, lane: FrameServer) -> None:
        self._lane = lane
        self._deframer = frame_lane.Deframer(AUTH_FRAME_BYTES_MAX)
        self._transport: asyncio.Transport | None = None
        self._nonce = os.urandom(frame_lane.NONCE_BYTES)
        self._authenticated = False
        self._answering: set[asyncio.Task[ledger_pb2.WriteReply]] = set()
        self._read_paused = False
        self._write_paused = False
        self._auth_timer: asyncio.TimerHandle | None = None
        self.peer = ""
        self.idle = asyncio.Event()
        self.idle.set()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self._lane.admit(self):
            message = "too many frame lane connections"
            self._refuse(BankError(grpc.StatusCode.RESOURCE_EXHAUSTED, errors.OVERLOADED, message))
            return
        self._send(ledger_pb2.FrameHello(version=frame_lane.VERSION, nonce=self._nonce))
        self._auth_timer = asyncio.get_running_loop().call_later(
            AUTH_TIMEOUT_S, self._refuse, service_auth.refusal("no frame lane auth in time")
        )

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._deframer.push(data)
        while True:
            try:
                body = self._deframer.pop()
            except frame_lane.FrameTooLarge as exc:
                self._refuse(errors.invalid(errors.INVALID_ARGUMENT, str(exc)))
                return
            if body is None:
                break
            if not self._take(body):
                return
        self._pace()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pace()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._pace()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        self._lane.forget(self)
        self._transport = None
        if self._authenticated:
            log.info("frame_lane_closed", peer=self.peer, answering=len(self._answering))

    # ---- frames

    def _take(self, body: bytes) -> bool:
        """One frame; False when the connection was refused and closed."""
        if not self._authenticated:
            return self._authenticate(body)
        try:
            message = ledger_pb2.WriteMessage.FromString(body)
        except DecodeError:
            self._refuse(errors.invalid(errors.INVALID_ARGUMENT, "a frame is not a WriteMessage"))
            return False
        task = asyncio.ensure_future(self._lane.answer(message))
        self._answering.add(task)
        self.idle.clear()
        task.add_done_callback(self._deliver)
        return True

    def _authenticate(self, body: bytes) -> bool:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        try:
            auth = ledger_pb2.FrameAuth.FromString(body)
        except DecodeError:
            self._refuse(service_auth.refusal("the first frame is not a FrameAuth"))
            return False
        failure = self._lane.gate.check(auth, self._nonce)
        if failure is not None:
            self._lane.refusals.note(failure.message, peer=self.peer)
            self._refuse(failure)
            return False
        self._authenticated = True
        self._deframer.limit = frame_lane.FRAME_BYTES_MAX
        log.info("frame_lane_opened", peer=self.peer)
        return True

    def _deliver(self, task: asyncio.Task[ledger_pb2.WriteReply]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is None:
            self._send(task.result())
        if not self._answering:
            self.idle.set()
        self._pace()

    def _send(self, message: frame_lane.Message) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame_lane.frame(message))

    def _pace(self) -> None:
        """Read while there is room in the writer and the caller takes its replies."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        hold = self._lane.stopping or self._write_paused or len(self._answering) >= IN_FLIGHT_MAX
        if hold and not self._read_paused:
            transport.pause_reading()
            self._read_paused = True
        elif not hold and self._read_paused:
            transport.resume_reading()
            self._read_paused = False

    def _refuse(self, failure: BankError) -> None:
        self._send(frame_lane.refusal_reply(failure))
        if self._transport is not None:
            self._transport.close()

    # ---- stopping

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def drain_and_close(self) -> None:
        self._pace()
        await self.idle.wait()
        if self._transport is not None:
            self._transport.close()


class FrameServer:
    """The lane's listener and its connections."""

    def __init__(self, answer: Answer, secret: bytes) -> None:
        self.answer = answer
        self.gate = _Gate(secret)
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.refusals = service_auth.RefusalLog("frame_lane_refused")

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks one); returns the port."""
        self._server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    @property
    def connections(self) -> int:
        return len(self._connections)

    def admit(self, connection: _Connection) -> bool:
        if self.stopping or len(self._connections) >= CONNECTIONS_MAX:
            return False
        self._connections.add(connection)
        return True

    def forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)

    async def stop(self, grace_s: float) -> None:
        """No new connections or reads; answers in flight are sent (within
        `grace_s`), then every connection is closed."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        drains = [asyncio.ensure_future(c.drain_and_close()) for c in self._connections]
        if drains:
            _, late = await asyncio.wait(drains, timeout=grace_s)
            for drain in late:
                drain.cancel()
        for connection in list(self._connections):
            connection.abort()  # past the grace: its caller fails the rest UNAVAILABLE
        if self._server is not None:
            await self._server.wait_closed()
