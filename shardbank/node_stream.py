"""The caller's end of a node's `WriteStream`: writes as messages on one call.

A unary call costs ~600 µs of CPU in the node (and hundreds in the caller) in
grpc.aio plumbing, whatever it carries; under many small concurrent requests
that was most of the cluster's CPU. `NodeStream.send` puts a write request
(`ApplyTransfersRequest`, `PrepareRequest`, `DecideRequest`, `FinishRequest`)
on one long-lived stream per node and returns its reply, or raises a
`BankError` exactly as the unary call's status would read
(`errors.from_rpc_error`):

- a message the node refused gets its own error; the stream stays up;
- the stream breaking (node killed, restarted, connection lost) fails every
  message without a reply UNAVAILABLE / SHARD_UNAVAILABLE: its outcome is
  unknown, and a resend with the same transfer ids is safe (idempotent);
  the next send opens a new stream, after a backoff while opens keep failing;
- a caller whose own deadline passes first gets DEADLINE_EXCEEDED /
  SHARD_UNAVAILABLE (never a claim that its write happened); the node may
  still apply it, as it may a unary call that timed out;
- at most `in_flight_max` messages are out on one stream; more wait (within
  their deadline) for room.

A node without the stream (an older node during a rolling upgrade: the call
ends UNIMPLEMENTED) gets the same request as its unary call instead, when the
caller gave `unary` calls; the stream is tried again `STREAM_RETRY_S` later.
So gateways and coordinators may be upgraded before the nodes.

A stream that answered nothing since a message was sent when that message
times out is presumed stuck
(a peer that stopped without closing the connection) and is torn down, so the
next send opens a fresh one. Deadlines are timers on the reply futures, not
cancellation: a timed-out sender never disturbs the stream it used.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from shardbank import errors, metrics
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2

log = structlog.get_logger("node_stream")

# Messages one stream carries at once (the node answers at most
# `ledger_node.write_stream.IN_FLIGHT_MAX` = 256 at a time; more would wait in
# its socket buffer rather than here, where their deadline is watched).
IN_FLIGHT_MAX = 256
# After a node answered UNIMPLEMENTED (no stream), how long its unary calls
# are used before the stream is tried again (the node may have been upgraded).
STREAM_RETRY_S = 60.0
# Wait before reopening after a stream broke, doubling per failed open up to the max.
REOPEN_BACKOFF_S_MIN = 0.05
REOPEN_BACKOFF_S_MAX = 1.0

WriteRequest = (
    ledger_pb2.ApplyTransfersRequest
    | ledger_pb2.PrepareRequest
    | ledger_pb2.DecideRequest
    | ledger_pb2.FinishRequest
)
# Opens a WriteStream call fed by the given requests (a stub's method).
OpenStream = Callable[[AsyncIterator[ledger_pb2.WriteMessage]], Any]
# The unary call standing for one body, by body name (see `unary_calls`).
UnaryCall = Callable[..., Awaitable[Any]]
# Status codes of a stream's end that are passed on as they are: they say the
# caller itself is wrong (no credentials, a node without the stream), which a
# resend would not fix. Any other end of a stream means "outcome unknown".
PASSED_ON = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED})

_BODY_FIELDS: dict[type, str] = {
    ledger_pb2.ApplyTransfersRequest: "apply_transfers",
    ledger_pb2.PrepareRequest: "prepare",
    ledger_pb2.DecideRequest: "decide",
    ledger_pb2.FinishRequest: "finish",
}
# The unary RPC each body stands for (metrics and logs).
RPC_NAMES = {
    "apply_transfers": "ApplyTransfers",
    "prepare": "Prepare",
    "decide": "Decide",
    "finish": "Finish",
}


@dataclass(eq=False)
class _Generation:
    """One opened stream: its outbox, its call, and its messages without a reply."""

    outbox: asyncio.Queue[ledger_pb2.WriteMessage | None] = field(default_factory=asyncio.Queue)
    pending: dict[int, asyncio.Future[ledger_pb2.WriteReply]] = field(default_factory=dict)
    call: Any = None
    reader: asyncio.Task[None] | None = None
    broken: bool = False
    last_reply_s: float = 0.0


class NodeStream:
    """One caller's stream to one node (see module doc). Not thread-safe: one event loop."""

    def __init__(
        self,
        open_stream: OpenStream,
        name: str,
        in_flight_max: int = IN_FLIGHT_MAX,
        clock: Callable[[], float] = time.monotonic,
        unary: Mapping[str, UnaryCall] | None = None,
    ) -> None:
        """`unary`: body name -> the stub's unary method, the fallback for a
        node without the stream (`unary_calls(stub)`); None: no fallback."""
        if in_flight_max < 1:
            raise ValueError("a stream needs room for one message")
        self._open_stream = open_stream
        self._unary = unary
        self._unary_until_s = 0.0
        self._name = name
        self._room = asyncio.Semaphore(in_flight_max)
        self._ids = itertools.count(1)
        self._clock = clock
        self._current: _Generation | None = None
        self._failed_opens = 0
        self._broke_at_s = 0.0
        self._closed = False

    async def send(self, request: WriteRequest, timeout_s: float) -> ledger_pb2.WriteReply:
        """The node's reply to `request` (never an error reply: that is raised)."""
        body = _BODY_FIELDS[type(request)]
        if self._unary is not None and self._clock() < self._unary_until_s:
            return await self._send_unary(body, request, timeout_s)
        ends_s = self._clock() + timeout_s
        if self._room.locked():
            try:
                await asyncio.wait_for(self._room.acquire(), max(0.0, ends_s - self._clock()))
            except TimeoutError:
                raise self._late(body) from None
        else:
            await self._room.acquire()
        try:
            generation = await self._generation(ends_s, body)
            reply = await self._exchange(generation, body, request, ends_s)
        except BankError as refused:
            if refused.code != grpc.StatusCode.UNIMPLEMENTED or self._unary is None:
                raise
            # The node has no stream (nothing of this request was applied).
            if self._clock() >= self._unary_until_s:
                log.warning("node_stream_unsupported", node=self._name, retry_in_s=STREAM_RETRY_S)
            self._unary_until_s = self._clock() + STREAM_RETRY_S
            return await self._send_unary(body, request, max(0.0, ends_s - self._clock()))
        finally:
            self._room.release()
        if reply.WhichOneof("body") == "error":
            raise BankError(errors.status_code(reply.error.code), reply.error.reason, reply.error.message)
        return reply

    async def _send_unary(self, body: str, request: WriteRequest, timeout_s: float) -> ledger_pb2.WriteReply:
        """The request as its unary call, answered in the stream's reply shape
        and failing the same way (a BankError read from the call's status)."""
        assert self._unary is not None
        try:
            response = await self._unary[body](request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from None
        if isinstance(response, ledger_pb2.TransfersResponse):
            return ledger_pb2.WriteReply(transfers=response)
        return ledger_pb2.WriteReply(legs=response)

    async def close(self) -> None:
        """End the stream; pending messages fail UNAVAILABLE. Sends after this fail."""
        self._closed = True
        if self._current is not None:
            self._break(self._current, "closed")

    async def _exchange(
        self, generation: _Generation, body: str, request: WriteRequest, ends_s: float
    ) -> ledger_pb2.WriteReply:
        loop = asyncio.get_running_loop()
        message_id = next(self._ids)
        message = ledger_pb2.WriteMessage(id=message_id)
        getattr(message, body).CopyFrom(request)
        future: asyncio.Future[ledger_pb2.WriteReply] = loop.create_future()
        generation.pending[message_id] = future
        generation.outbox.put_nowait(message)
        timer = loop.call_later(
            max(0.0, ends_s - self._clock()), self._expire, generation, future, body, self._clock()
        )
        try:
            return await future
        finally:
            timer.cancel()
            generation.pending.pop(message_id, None)

    def _expire(
        self, generation: _Generation, future: asyncio.Future[ledger_pb2.WriteReply], body: str, sent_s: float
    ) -> None:
        if future.done():
            return
        future.set_exception(self._late(body))
        if not generation.broken and generation.last_reply_s < sent_s:
            # Nothing came back since this was sent: the stream may be stuck.
            self._break(generation, "no reply before a deadline")

    def _late(self, body: str) -> BankError:
        return BankError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            errors.SHARD_UNAVAILABLE,
            f"{self._name} did not answer {RPC_NAMES[body]} in time",
        )

    async def _generation(self, ends_s: float, body: str) -> _Generation:
        """The open stream, or a new one (after the backoff if the last one broke)."""
        if self._closed:
            raise _unavailable(f"stream to {self._name} is closed")
        current = self._current
        if current is not None and not current.broken:
            return current
        if current is not None:
            backoff_s = min(REOPEN_BACKOFF_S_MAX, REOPEN_BACKOFF_S_MIN * 2 ** min(self._failed_opens - 1, 10))
            wait_s = self._broke_at_s + backoff_s - self._clock()
            if wait_s > 0:
                await asyncio.sleep(min(wait_s, max(0.0, ends_s - self._clock())))
                if self._clock() >= ends_s:
                    raise self._late(body)
            if self._current is not current and self._current is not None and not self._current.broken:
                return self._current  # another sender reopened meanwhile
        generation = _Generation(last_reply_s=self._clock())
        generation.call = self._open_stream(_requests(generation.outbox))
        generation.reader = asyncio.ensure_future(self._read(generation))
        self._current = generation
        metrics.NODE_STREAM_OPENS.labels(self._name).inc()
        return generation

    async def _read(self, generation: _Generation) -> None:
        """Hand each reply to its sender until the stream ends, then fail the rest."""
        failure = _unavailable(f"stream to {self._name} ended")
        try:
            async for reply in generation.call:
                generation.last_reply_s = self._clock()
                self._failed_opens = 0
                future = generation.pending.get(reply.id)
                if future is not None and not future.done():
                    future.set_result(reply)
        except grpc.RpcError as exc:
            ended = errors.from_rpc_error(exc)
            if ended.code in PASSED_ON:
                failure = ended
            else:
                failure = _unavailable(f"stream to {self._name} broke ({ended.code.name})")
        except BankError as ended:
            # A frame lane's end: already UNAVAILABLE, or the node's refusal as it said it.
            failure = ended
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug here must not leave senders hanging
            log.exception("node_stream_read_failed", node=self._name, error=type(exc).__name__)
        self._fail(generation, failure)

    def _break(self, generation: _Generation, why: str) -> None:
        if generation.broken:
            return
        if not self._closed:
            log.warning("node_stream_broken", node=self._name, why=why, pending=len(generation.pending))
        self._fail(generation, _unavailable(f"stream to {self._name} {why}"))
        generation.call.cancel()
        if generation.reader is not None:
            generation.reader.cancel()

    def _fail(self, generation: _Generation, failure: BankError) -> None:
        if not generation.broken:
            generation.broken = True
            self._failed_opens += 1
            self._broke_at_s = self._clock()
            generation.outbox.put_nowait(None)
            if generation.pending:
                log.warning(
                    "node_stream_failed_pending",
                    node=self._name,
                    pending=len(generation.pending),
                    code=failure.code.name,
                    reason=failure.reason,
                )
        for future in list(generation.pending.values()):
            if not future.done():
                future.set_exception(failure)
        generation.pending.clear()


async def _requests(
    outbox: asyncio.Queue[ledger_pb2.WriteMessage | None],
) -> AsyncIterator[ledger_pb2.WriteMessage]:
    """What the call sends: the outbox, until the stream is done with (None)."""
    while (message := await outbox.get()) is not None:
        yield message


def _unavailable(message: str) -> BankError:
    return BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, message)


def unary_calls(stub: Any) -> dict[str, UnaryCall]:
    """A LedgerNode stub's unary methods by the stream body they stand for."""
    return {body: getattr(stub, rpc) for body, rpc in RPC_NAMES.items()}
