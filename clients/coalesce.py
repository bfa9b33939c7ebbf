"""Coalescing: concurrent single transfers of one process share one batch.

Callers that send one transfer at a time (a web handler per request) would
each pay a round trip and a group commit of one. The coalescer queues their
items and sends them together in one `SubmitTransfers` call, flushed when the
batch is full or `linger_s` after its first item, whichever comes first
(TigerBeetle's clients do the same). Each caller gets its own item's outcome.

The coalescer sends each batch once; retrying is the caller's business (the
async client retries an item by queueing it again with the same id, so
retried items coalesce too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from clients import errors
from shardbank import errors as bank_errors
from shardbank.v1 import types_pb2

SendBatch = Callable[[list[types_pb2.Transfer]], Awaitable[list[types_pb2.Transfer]]]

# How long the first item of a batch waits for company.
LINGER_S_DEFAULT = 0.001


class TransferCoalescer:
    def __init__(self, send: SendBatch, batch_items_max: int, linger_s: float = LINGER_S_DEFAULT) -> None:
        if batch_items_max < 1:
            raise ValueError("batch_items_max must be at least 1")
        self._send = send
        self._batch_items_max = batch_items_max
        self._linger_s = linger_s
        self._queued: list[tuple[types_pb2.Transfer, asyncio.Future[types_pb2.Transfer]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: types_pb2.Transfer) -> types_pb2.Transfer:
        """The item's outcome (not checked: a refusal is an outcome too)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[types_pb2.Transfer] = loop.create_future()
        self._queued.append((item, future))
        if len(self._queued) >= self._batch_items_max:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._linger_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._queued = self._queued, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send_batch(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send_batch(
        self, batch: list[tuple[types_pb2.Transfer, asyncio.Future[types_pb2.Transfer]]]
    ) -> None:
        try:
            outcomes = await self._send([item for item, _ in batch])
            if len(outcomes) != len(batch):
                raise errors.Internal(
                    grpc.StatusCode.INTERNAL,
                    bank_errors.INTERNAL,
                    f"sent {len(batch)} transfers, got {len(outcomes)} outcomes",
                )
        except Exception as exc:  # the whole call failed: every caller of the batch sees it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():  # a caller that gave up (cancelled) needs no answer
                future.set_result(outcome)

    async def aclose(self) -> None:
        """Send what is queued and wait for every batch in flight."""
        self._flush()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
