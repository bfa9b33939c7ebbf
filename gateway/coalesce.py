"""Concurrent sends to one destination share one downstream call.

With one transfer per client call, every call used to pay a whole downstream
RPC of its own (a node's `ApplyTransfers` of 1, the coordinator's
`SubmitTransfers` of 1): hundreds of µs of CPU in the gateway and in the
process it calls, per transfer. The nodes group-commit, but only what arrives
in one call.

Adaptive batching, per destination (a "lane"), as TigerBeetle's clients do:
while fewer than `in_flight_max` calls (1) to that destination are out, a send
goes at once (no added latency at low load); otherwise it queues, and when a
call returns the whole queue goes as ONE call (up to `items_max` items). A
queue that reaches `items_max` goes at once, whatever is in flight. So
batches grow with load and nothing lingers on a timer.

Each caller gets exactly its own items' results, in its order. A failed
downstream call fails only the callers it carried, with its `BankError` (the
dispatch loop resends with the same ids: transfer ids are idempotent). Each
caller keeps its own deadline: the shared call's timeout is the longest of its
callers', and a caller whose own time runs out first is answered UNAVAILABLE
(the dispatch loop turns that into an unsettled result, never a claim that it
happened); its items may still be applied by the shared call, as a resend
with the same id would be.

The same transfer id twice in one coalesced call (two callers racing on one
id) is safe downstream: a node's drain sees its own earlier writes (the second
item finds the first one's record and answers with it), and the coordinator
defers a repeated id to its next round. `tests/unit/test_gateway_coalesce.py`
and the integration test check both.

No gRPC here: the downstream call is injected, so this is tested with fakes.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
import structlog

from shardbank import errors, limits

log = structlog.get_logger("gateway.coalesce")

I = TypeVar("I")  # noqa: E741 (an item, as sent)
R = TypeVar("R")  # its result
T = TypeVar("T", bound=Hashable)  # a destination

# Calls one lane keeps out before new sends queue. 1, as TigerBeetle's
# clients: the whole queue rides the next call. Measured against 2 (S3,
# back to back, 2 runs each): 1 gave more transfers/s, lower p99 and less CPU
# per transfer in the node, coordinator and gateway (bigger batches); the
# destinations already overlap work across their callers (a node's writer
# drains what several calls queued, the coordinator rounds over its queue).
IN_FLIGHT_MAX = 1
# A send of at least this many items goes at once on a call of its own: it
# already spreads the per-call cost thin (~1 ms of CPU per call in each
# process / 256 items = a few µs per item), and queueing it behind other big
# calls would only idle the destination between them (S1: 1000 per call).
SOLO_ITEMS_MIN = 256
# Shortest timeout given to one shared downstream call.
CALL_TIMEOUT_S_MIN = 0.05

Send = Callable[[T, list[I], float], Awaitable[list[R]]]
# Told of every shared call that goes out: (destination, items, callers).
Observe = Callable[[T, int, int], None]


@dataclass(eq=False)
class _Waiter(Generic[I, R]):
    """One caller's items in a lane, and where its results go."""

    items: list[I]
    ends_at: float
    future: asyncio.Future[list[R]]


@dataclass(eq=False)
class _Lane(Generic[I, R]):
    queue: deque[_Waiter[I, R]] = field(default_factory=deque)
    queued_items: int = 0
    in_flight: int = 0


def _ignore(_target: object, _items: int, _callers: int) -> None:
    return None


class Coalescer(Generic[T, I, R]):
    """Shares downstream calls between concurrent callers, per destination.

    `send(target, items, timeout_s)` makes one downstream call and returns one
    result per item in order, or raises `BankError` for the whole call.
    `late_error(target)` is what a caller whose own deadline passed is told.
    """

    def __init__(
        self,
        send: Send[T, I, R],
        late_error: Callable[[T], errors.BankError],
        in_flight_max: int = IN_FLIGHT_MAX,
        items_max: int = limits.BATCH_ITEMS_MAX,
        solo_items_min: int = SOLO_ITEMS_MIN,
        observe: Observe[T] = _ignore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if in_flight_max < 1 or items_max < 1:
            raise ValueError("a lane needs room for one call of one item")
        self._send = send
        self._late_error = late_error
        self._in_flight_max = in_flight_max
        self._items_max = items_max
        self._solo_items_min = solo_items_min
        self._observe = observe
        self._clock = clock
        self._lanes: dict[T, _Lane[I, R]] = {}
        # Strong references to the calls in flight (the loop keeps weak ones only).
        self._calls: set[asyncio.Task[None]] = set()

    async def send(self, target: T, items: list[I], timeout_s: float) -> list[R]:
        """Results for `items`, from a call this caller may share with others."""
        if len(items) >= self._solo_items_min:
            self._observe(target, len(items), 1)
            return await self._send(target, items, timeout_s)
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane()
        waiter: _Waiter[I, R] = _Waiter(items, self._clock() + timeout_s, loop.create_future())
        lane.queue.append(waiter)
        lane.queued_items += len(items)
        self._pump(target, lane)
        timer = loop.call_later(max(0.0, timeout_s), self._expire, target, waiter)
        try:
            # Cancelling this caller cancels its future: a queued waiter is then skipped.
            return await waiter.future
        finally:
            timer.cancel()

    def in_flight(self, target: T) -> int:
        lane = self._lanes.get(target)
        return 0 if lane is None else lane.in_flight

    def _expire(self, target: T, waiter: _Waiter[I, R]) -> None:
        if not waiter.future.done():
            waiter.future.set_exception(self._late_error(target))

    def _pump(self, target: T, lane: _Lane[I, R]) -> None:
        """Start calls while the lane has room, or while its queue is a full batch."""
        while lane.queue and (lane.in_flight < self._in_flight_max or lane.queued_items >= self._items_max):
            batch = self._take(lane)
            if not batch:
                return
            lane.in_flight += 1
            task = asyncio.ensure_future(self._call(target, lane, batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    def _take(self, lane: _Lane[I, R]) -> list[_Waiter[I, R]]:
        """Waiters for one call, in arrival order, at most `items_max` items
        (a single caller's larger batch goes alone: the destination judges it)."""
        batch: list[_Waiter[I, R]] = []
        items = 0
        while lane.queue:
            waiter = lane.queue[0]
            if waiter.future.done():  # gave up (deadline, cancelled) before it was sent
                lane.queue.popleft()
                lane.queued_items -= len(waiter.items)
                continue
            if batch and items + len(waiter.items) > self._items_max:
                break
            lane.queue.popleft()
            lane.queued_items -= len(waiter.items)
            items += len(waiter.items)
            batch.append(waiter)
        return batch

    async def _call(self, target: T, lane: _Lane[I, R], batch: list[_Waiter[I, R]]) -> None:
        try:
            await self._call_once(target, batch)
        finally:
            lane.in_flight -= 1
            for waiter in batch:  # cancelled mid-call (shutdown): never leave a caller hanging
                if not waiter.future.done():
                    waiter.future.set_exception(self._late_error(target))
            self._pump(target, lane)

    async def _call_once(self, target: T, batch: list[_Waiter[I, R]]) -> None:
        items: list[I] = []
        for waiter in batch:
            items.extend(waiter.items)
        timeout_s = max(CALL_TIMEOUT_S_MIN, max(w.ends_at for w in batch) - self._clock())
        self._observe(target, len(items), len(batch))
        try:
            results = await self._send(target, items, timeout_s)
        except errors.BankError as error:
            _fail(batch, error)
            return
        except Exception as exc:  # a bug below: the callers get INTERNAL, the lane keeps serving
            log.exception("coalesced_call_failed", target=str(target), items=len(items))
            _fail(batch, errors.BankError(grpc.StatusCode.INTERNAL, errors.INTERNAL, type(exc).__name__))
            return
        if len(results) != len(items):
            log.error("reply_length_mismatch", target=str(target), sent=len(items), received=len(results))
            _fail(
                batch,
                errors.BankError(
                    grpc.StatusCode.INTERNAL,
                    errors.INTERNAL,
                    f"{target} answered {len(results)} of {len(items)} items",
                ),
            )
            return
        start = 0
        for waiter in batch:
            end = start + len(waiter.items)
            if not waiter.future.done():
                waiter.future.set_result(results[start:end])
            start = end


def _fail(batch: list[_Waiter[I, R]], error: errors.BankError) -> None:
    for waiter in batch:
        if not waiter.future.done():
            waiter.future.set_exception(error)
