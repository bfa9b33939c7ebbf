"""The node's end of `WriteStream`: many write messages on one long-lived call.

A unary call costs the node ~600 µs of CPU in grpc.aio plumbing whatever it
carries; a message on an open stream costs a small fraction of that. Callers
(gateway, coordinator) keep one stream per node and send each batch they
would have sent as a unary `ApplyTransfers`/`Prepare`/`Decide`/`Finish` as one
message on it.

Each message is answered on its own (`answer`, the same code as the unary
handler's, run as its own task) so several messages of one stream, and of
other callers, meet in one group commit; replies go out in the order writes
finish, each tagged with the id of its message. At most `in_flight_max`
messages of one stream are being answered at once: past that the node stops
reading, and HTTP/2 flow control holds the caller back. One writer coroutine
(the handler's generator) yields the replies, so replies never interleave.

The stream ends when the caller half-closes or the node stops (after every
reply to a message read has gone: the caller fails the messages the node never
read UNAVAILABLE, and resends them elsewhere or later), or when the call is
cancelled (caller gone): answers still
running then finish in the writer and their replies are dropped, exactly as a
unary call's answer is when its caller hangs up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from shardbank.v1 import ledger_pb2

# Messages of one stream being answered at once. A caller's coalescer keeps
# a few batches in flight per node; 256 leaves room for the coordinator's
# parallel 2PC rounds, while a runaway caller can hold at most 256 x
# BATCH_ITEMS_MAX items in the writer queue (which has its own item bound).
IN_FLIGHT_MAX = 256

Answer = Callable[[ledger_pb2.WriteMessage], Awaitable[ledger_pb2.WriteReply]]


class DetachedContext:
    """What a message's answer may know of its stream, copied at open.

    An answer runs as its own task and can outlive the call (the caller was
    killed while the writer still held its message); grpc frees a call when
    its caller goes, and touching the freed call's context from cygrpc is a
    segfault. So answers get this copy, never the live context."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def serve(
    requests: AsyncIterator[ledger_pb2.WriteMessage],
    answer: Answer,
    stopping: asyncio.Event,
    in_flight_max: int = IN_FLIGHT_MAX,
) -> AsyncIterator[ledger_pb2.WriteReply]:
    """Read messages, answer each concurrently, yield replies until the caller
    is done or the node is `stopping` (then: no more reads, the answers
    already running get their replies out, and the stream ends OK)."""
    replies: asyncio.Queue[ledger_pb2.WriteReply | None] = asyncio.Queue()
    room = asyncio.Semaphore(in_flight_max)
    answering: set[asyncio.Task[ledger_pb2.WriteReply]] = set()

    def deliver(task: asyncio.Task[ledger_pb2.WriteReply]) -> None:
        answering.discard(task)
        room.release()
        if not task.cancelled() and task.exception() is None:
            replies.put_nowait(task.result())

    async def read() -> None:
        async for message in requests:
            await room.acquire()
            task = asyncio.ensure_future(answer(message))
            answering.add(task)
            task.add_done_callback(deliver)

    async def read_then_drain() -> None:
        reading = asyncio.ensure_future(read())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((reading, stop), return_when=asyncio.FIRST_COMPLETED)
            while answering:
                await asyncio.wait(set(answering))
        finally:
            reading.cancel()
            stop.cancel()
            replies.put_nowait(None)
        if reading.done() and not reading.cancelled() and reading.exception() is not None:
            raise reading.exception()  # type: ignore[misc]

    reader = asyncio.ensure_future(read_then_drain())
    try:
        while (reply := await replies.get()) is not None:
            yield reply
        await reader  # re-raises a read failure: the call ends with its status
    finally:
        reader.cancel()
