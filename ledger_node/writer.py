"""Group commit: many RPCs, one state-machine pass, one synced WriteBatch.

RPC handlers `submit()` a request and await its future. One writer task takes
everything queued (up to `limits.GROUP_COMMIT_ITEMS_MAX` items), applies it to
the in-memory `Ledger`, writes the resulting WriteBatch with the WAL synced,
and only then resolves the futures: an answered write survives kill -9.

The apply and the synced write run back to back on the event loop, with no
await between them. That blocks the loop for one fsync per drain, and buys
this: no RPC handler can run while memory is ahead of disk, so a read served
from memory never shows a change that a crash could still undo. Requests that
arrive meanwhile wait in gRPC's queue and ride the next drain.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import structlog

from ledger_node.state import Ledger, Request, Response
from ledger_node.store import Store
from shardbank import errors, limits, metrics
from shardbank.errors import BankError
from shardbank.v1 import ledger_pb2

# Items waiting for the writer: beyond this a caller gets RESOURCE_EXHAUSTED
# OVERLOADED at once instead of a reply that would miss its deadline anyway.
QUEUED_ITEMS_MAX = 4 * limits.GROUP_COMMIT_ITEMS_MAX

log = structlog.get_logger("ledger_node.writer")


def item_count(request: Request) -> int:
    """Items in a write request (what a drain is measured in)."""
    if isinstance(request, ledger_pb2.ImportSlotsRequest):
        return len(request.accounts) + len(request.records) + len(request.history)
    if hasattr(request, "transfers"):
        return len(request.transfers)
    if hasattr(request, "accounts"):
        return len(request.accounts)
    if hasattr(request, "updates"):
        return len(request.updates)
    if isinstance(request, ledger_pb2.MarkSlotsRequest):
        return 1
    return len(request.items)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Pending:
    request: Request
    items: int
    future: asyncio.Future[Response]


class Writer:
    """The single owner of a shard's state once the node is serving."""

    def __init__(
        self,
        ledger: Ledger,
        store: Store,
        on_fatal: Callable[[BaseException], Awaitable[None]],
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._on_fatal = on_fatal
        self._clock_ms = clock_ms
        self._last_ms = 0
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._broken = False
        self.drains = 0
        self._drain_items = 0

    @property
    def queued_items(self) -> int:
        """Items waiting for a drain (read by the metrics scrape)."""
        return self._queued_items

    async def submit(self, request: Request) -> Response:
        """Queue a write request; its response once durable (or a whole-request BankError)."""
        if self._broken or self._stopping:
            raise BankError(grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "the node is stopping")
        items = item_count(request)
        if self._queued_items + items > QUEUED_ITEMS_MAX:
            raise BankError(grpc.StatusCode.RESOURCE_EXHAUSTED, errors.OVERLOADED, "writer queue is full")
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, items, future))
        self._queued_items += items
        self._wakeup.set()
        return await future

    async def run(self) -> None:
        """The writer task: drain, apply, write, answer; until stopped and empty."""
        while not self._broken:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken = self._take()
            try:
                self._drain(taken)
            except BaseException as exc:  # a bug or a disk failure: memory may be ahead of disk
                self._broken = True
                for pending in [*taken, *self._queue]:
                    if not pending.future.done():
                        pending.future.set_exception(
                            BankError(
                                grpc.StatusCode.UNAVAILABLE, errors.SHARD_UNAVAILABLE, "the node failed"
                            )
                        )
                self._queue.clear()
                await self._on_fatal(exc)
                return
            # Let handlers that woke meanwhile queue before the next drain.
            await asyncio.sleep(0)

    def stop(self) -> None:
        """Finish what is queued, refuse new work, then let run() return."""
        self._stopping = True
        self._wakeup.set()

    def _take(self) -> list[_Pending]:
        taken = [self._queue.popleft()]
        items = taken[0].items
        while self._queue and items + self._queue[0].items <= limits.GROUP_COMMIT_ITEMS_MAX:
            pending = self._queue.popleft()
            taken.append(pending)
            items += pending.items
        self._queued_items -= items
        self._drain_items = items
        return taken

    def _drain(self, taken: list[_Pending]) -> None:
        # Never let time go backwards inside the ledger (history, prepared_at).
        now_ms = max(self._clock_ms(), self._last_ms)
        self._last_ms = now_ms
        began = time.perf_counter()
        responses, writes = self._ledger.apply([p.request for p in taken], now_ms)
        applied = time.perf_counter()
        self._store.write(writes)
        # Three observations per drain, not per item: the hot path stays cheap.
        metrics.GROUP_COMMIT_APPLY.observe(applied - began)
        metrics.GROUP_COMMIT_SYNC.observe(time.perf_counter() - applied)
        metrics.GROUP_COMMIT_ITEMS.observe(self._drain_items)
        self.drains += 1
        for pending, response in zip(taken, responses, strict=True):
            if not pending.future.done():  # the caller may have been cancelled
                pending.future.set_result(response)
