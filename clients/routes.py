"""Which coalescing lane a transfer rides in: the client's copy of the slot map.

The gateway answers a `SubmitTransfers` call when its slowest item is done,
and a cross-shard item (two-phase commit through the coordinator: several
synced rounds) is much slower than a single-shard one (one node, one group
commit). So the coalescing client keeps one lane per route class, one for
single-shard items and one for cross-shard items, and a single-shard caller
no longer waits for a 2PC item it happened to share a call with. One lane per
shard was measured too: no lower latency (the gateway sends a call's items to
both nodes at once) and ~25% more gateway CPU per transfer for the extra
inbound calls (docs/performance.md).

The lane is decided here with the gateway's own routing function
(`gateway.routing.transfer_target`) over the slot map the gateway publishes
in `GetClusterInfo` (`ClusterInfo.slot_ranges`). The map is only a hint: the
gateway routes every item by its current map, so a stale or missing map
costs batching and latency, never correctness. Without a map (not fetched
yet, the key's role may not read cluster info, an older gateway that sends
no ranges) every item rides in the one shared lane, as before lanes existed.

The map is fetched in the background, never on a caller's path: at the first
item, every `REFRESH_S` after, and soon after an outcome contradicts the
lane it rode in (a committed item that crossed shards in a shard's lane, or
one that did not in the cross-shard lane: a slot has moved).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable

import structlog

from gateway import routing
from shardbank import slots
from shardbank.v1 import bank_pb2, types_pb2

log = structlog.get_logger("clients.routes")

FetchClusterInfo = Callable[[], Awaitable[bank_pb2.ClusterInfo]]


class Lane(enum.Enum):
    """A coalescing lane: items of one lane share calls."""

    SHARED = "shared"  # no slot map: everything together, as before lanes
    SINGLE_SHARD = "single-shard"
    CROSS_SHARD = "cross-shard"


# Periodic refresh of the map: slot moves are rare, and a stale map only
# costs batching until an outcome contradicts it (which refreshes sooner).
REFRESH_S = 30.0
# Least time between two fetches, whatever triggers them: a burst of
# contradicting outcomes (a move just flipped) fetches once, and a gateway
# that refuses the call is asked again only this often.
REFETCH_S_MIN = 1.0


def slot_map_of(info: bank_pb2.ClusterInfo) -> slots.SlotMap | None:
    """The published map, checked; None when the gateway published none."""
    if not info.slot_ranges:
        return None
    if info.slot_count != slots.SLOT_COUNT:
        raise ValueError(f"gateway has {info.slot_count} slots, this client {slots.SLOT_COUNT}")
    return slots.SlotMap.from_ranges(
        info.slot_map_version, ((r.first, r.last, r.shard_id) for r in info.slot_ranges)
    )


def contradicts(lane: Lane, outcome: types_pb2.Transfer) -> bool:
    """True when a committed outcome crossed shards and its lane said otherwise
    (or the reverse): the map the lane came from is stale."""
    if lane is Lane.SHARED or outcome.status != types_pb2.TRANSFER_STATUS_COMMITTED:
        return False
    return outcome.cross_shard != (lane is Lane.CROSS_SHARD)


class LaneRouter:
    """The lane of each item, from a slot map refreshed in the background."""

    def __init__(
        self, fetch: FetchClusterInfo, refresh_s: float = REFRESH_S, refetch_s_min: float = REFETCH_S_MIN
    ) -> None:
        if refresh_s <= 0 or refetch_s_min < 0:
            raise ValueError("refresh_s must be positive and refetch_s_min not negative")
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._refetch_s_min = refetch_s_min
        self.slot_map: slots.SlotMap | None = None
        self._fetched_at: float | None = None  # loop time of the last fetch started
        self._stale = False
        self._task: asyncio.Task[None] | None = None

    def lane(self, item: types_pb2.Transfer) -> Lane:
        """Where the gateway will send `item` by the map this client holds."""
        self._maybe_refresh()
        slot_map = self.slot_map
        if slot_map is None:
            return Lane.SHARED
        if routing.transfer_target(item, slot_map.owner).is_coordinator:
            return Lane.CROSS_SHARD
        return Lane.SINGLE_SHARD

    def observe(self, lane: Lane, outcome: types_pb2.Transfer) -> None:
        if contradicts(lane, outcome):
            self._stale = True

    def _maybe_refresh(self) -> None:
        if self._task is not None:
            return
        now = asyncio.get_running_loop().time()
        fetched_at = self._fetched_at
        if fetched_at is not None:
            since_s = now - fetched_at
            if since_s < self._refetch_s_min or (since_s < self._refresh_s and not self._stale):
                return
        self._fetched_at = now
        self._stale = False
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            slot_map = slot_map_of(await self._fetch())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the map it had: it is only a hint
            log.info("slot_map_fetch_failed", error=type(exc).__name__, detail=str(exc)[:200])
        else:
            if slot_map is None or self.slot_map is None or slot_map.version != self.slot_map.version:
                log.debug("slot_map_fetched", version=slot_map.version if slot_map else 0)
            self.slot_map = slot_map
        finally:
            self._task = None

    async def aclose(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
