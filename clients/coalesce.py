"""Coalescing: concurrent single transfers of one process share one batch.

Callers that send one transfer at a time (a web handler per request) would
each pay a round trip and a group commit of one. The coalescer queues their
items and sends them together in one `SubmitTransfers` call (TigerBeetle's
clients do the same). Each caller gets its own item's outcome.

Items are queued per lane. With a `router` (`clients.routes.LaneRouter`)
there is one lane for single-shard items and one for cross-shard items, so
a single-shard caller is answered when its node is done, not when a 2PC item
that shared its call is; without a router (or before it has a slot map)
there is one shared lane.

Each lane has at most `lane_calls_max` calls out. An idle lane sends its
first item `linger_s` later with whatever joined it; while the lane's calls
are out, items queue, and when one returns the whole queue goes at once as
one call. A batch that reaches `batch_items_max` goes at once whatever is out.
So batches grow with load and the calls per second of a lane stay bounded by
its round trip, not by the linger: with lanes, a fixed linger alone sent
~5-item calls as fast as callers came back, and the per-call cost in the
client and the gateway ate the gain (docs/performance.md).

The coalescer sends each batch once; retrying is the caller's business (the
async client retries an item by queueing it again with the same id, so
retried items coalesce too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from clients import errors
from clients.routes import Lane, LaneRouter
from shardbank import errors as bank_errors
from shardbank.v1 import types_pb2

SendBatch = Callable[[list[types_pb2.Transfer]], Awaitable[list[types_pb2.Transfer]]]
Waiter = tuple[types_pb2.Transfer, asyncio.Future[types_pb2.Transfer]]

# How long the first item of an idle lane waits for company.
LINGER_S_DEFAULT = 0.001
# Calls out per lane before items wait for one to return: one, as the
# gateway's own lanes (more calls of fewer items each cost more CPU per
# transfer on every hop).
LANE_CALLS_MAX_DEFAULT = 1


def _expire(future: asyncio.Future[types_pb2.Transfer], transfer_id: str, deadline_s: float) -> None:
    if not future.done():
        future.set_exception(
            errors.make_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "",
                f"transfer {transfer_id} not answered within {deadline_s:.3f} s; it may still take "
                "effect: retry with the same id or ask GetTransfer",
            )
        )


class _LaneQueue:
    """One lane: its queued items, the linger timer of its first, its calls out."""

    __slots__ = ("calls_out", "queued", "timer")

    def __init__(self) -> None:
        self.queued: list[Waiter] = []
        self.timer: asyncio.TimerHandle | None = None
        self.calls_out = 0


class TransferCoalescer:
    def __init__(
        self,
        send: SendBatch,
        batch_items_max: int,
        linger_s: float = LINGER_S_DEFAULT,
        router: LaneRouter | None = None,
        lane_calls_max: int = LANE_CALLS_MAX_DEFAULT,
    ) -> None:
        if batch_items_max < 1:
            raise ValueError("batch_items_max must be at least 1")
        if lane_calls_max < 1:
            raise ValueError("lane_calls_max must be at least 1")
        self._send = send
        self._batch_items_max = batch_items_max
        self._linger_s = linger_s
        self._router = router
        self._lane_calls_max = lane_calls_max
        # At most one per `Lane` member; a lane stays once made.
        self._lanes: dict[Lane, _LaneQueue] = {}
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: types_pb2.Transfer, deadline_s: float | None = None) -> types_pb2.Transfer:
        """The item's outcome (not checked: a refusal is an outcome too).

        With `deadline_s`, a caller not answered by then gets DeadlineExceeded
        (the item may or may not take effect: ask again with the same id); an
        item whose caller has gone is not sent if it is still queued.
        """
        loop = asyncio.get_running_loop()
        lane = self._router.lane(item) if self._router is not None else Lane.SHARED
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = _LaneQueue()
        future: asyncio.Future[types_pb2.Transfer] = loop.create_future()
        queue.queued.append((item, future))
        if len(queue.queued) >= self._batch_items_max:
            self._flush(lane)
        elif queue.timer is None and queue.calls_out < self._lane_calls_max:
            queue.timer = loop.call_later(self._linger_s, self._flush, lane)
        if deadline_s is None:
            return await future
        expiry = loop.call_later(deadline_s, _expire, future, item.id, deadline_s)
        try:
            return await future
        finally:
            expiry.cancel()

    def _flush(self, lane: Lane) -> None:
        queue = self._lanes[lane]
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        waiting = [waiter for waiter in queue.queued if not waiter[1].done()]  # callers gone: not sent
        batch, queue.queued = waiting[: self._batch_items_max], waiting[self._batch_items_max :]
        if not batch:
            return
        queue.calls_out += 1
        task = asyncio.get_running_loop().create_task(self._send_batch(lane, batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _call_returned(self, lane: Lane) -> None:
        """A call of the lane is back: what queued meanwhile goes now, as one call."""
        queue = self._lanes[lane]
        queue.calls_out -= 1
        if queue.queued and queue.calls_out < self._lane_calls_max:
            self._flush(lane)

    async def _send_batch(self, lane: Lane, batch: list[Waiter]) -> None:
        try:
            self._answer(lane, batch, await self._send([item for item, _ in batch]))
        except Exception as exc:  # the whole call failed: every caller of the batch sees it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        finally:
            # After the callers' wake-ups: those that send again at once join
            # the lane's next call instead of waiting for the one after it.
            asyncio.get_running_loop().call_soon(self._call_returned, lane)

    def _answer(self, lane: Lane, batch: list[Waiter], outcomes: list[types_pb2.Transfer]) -> None:
        if len(outcomes) != len(batch):
            raise errors.Internal(
                grpc.StatusCode.INTERNAL,
                bank_errors.INTERNAL,
                f"sent {len(batch)} transfers, got {len(outcomes)} outcomes",
            )
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if self._router is not None:
                self._router.observe(lane, outcome)
            if not future.done():  # a caller that gave up (cancelled) needs no answer
                future.set_result(outcome)

    async def aclose(self) -> None:
        """Send what is queued and wait for every batch in flight."""
        while any(queue.queued for queue in self._lanes.values()) or self._in_flight:
            for lane, queue in self._lanes.items():
                if queue.queued:
                    self._flush(lane)
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._router is not None:
            await self._router.aclose()
