"""Lanes of the coalescing client (`clients.routes`, `clients.coalesce`), with
a fake send and a fake cluster-info fetch: which lane an item rides in, that
a slow lane does not hold a fast one up, one call out per lane, the map's
refresh (a stale one only costs batching), deadlines and failures per lane.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from clients import errors, messages
from clients.coalesce import TransferCoalescer
from clients.routes import Lane, LaneRouter, contradicts, slot_map_of
from shardbank import slots
from shardbank.v1 import bank_pb2, types_pb2

EVEN = slots.SlotMap.even(["shard-1", "shard-2"], version=3)
# Everything on shard-1: by this map no transfer crosses shards.
ALL_ON_ONE = slots.SlotMap.even(["shard-1"], version=2)


def accounts_on(slot_map: slots.SlotMap, shard_id: str, count: int) -> list[int]:
    found = [n for n in range(1, 10_000) if slot_map.owner(n) == shard_id]
    assert len(found) >= count
    return found[:count]


A1, A2 = accounts_on(EVEN, "shard-1", 2)
B1, B2 = accounts_on(EVEN, "shard-2", 2)


def transfer(from_id: int, to_id: int, amount: int = 1) -> types_pb2.Transfer:
    return messages.transfer("transfer", from_id, to_id, amount, "CNY", None, "")


def info(slot_map: slots.SlotMap) -> bank_pb2.ClusterInfo:
    return bank_pb2.ClusterInfo(
        slot_map_version=slot_map.version,
        slot_count=slots.SLOT_COUNT,
        slot_ranges=[
            bank_pb2.SlotRange(first=first, last=last, shard_id=shard)
            for first, last, shard in slot_map.ranges()
        ],
    )


class FakeCluster:
    """Answers like the gateway would with `truth` as its slot map, and
    publishes `published` (which may be stale) in cluster info."""

    def __init__(self, truth: slots.SlotMap, published: slots.SlotMap | None) -> None:
        self.truth = truth
        self.published = published
        self.fetches = 0
        self.calls: list[list[types_pb2.Transfer]] = []
        self.release: dict[bool, asyncio.Event] = {}  # cross_shard -> gate of its calls
        self.fail_cross = False

    async def fetch(self) -> bank_pb2.ClusterInfo:
        self.fetches += 1
        if self.published is None:
            raise errors.make_error(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "no")
        return info(self.published)

    def crosses(self, item: types_pb2.Transfer) -> bool:
        return self.truth.owner(item.debit_account_id) != self.truth.owner(item.credit_account_id)

    async def send(self, items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
        self.calls.append(list(items))
        for cross in sorted({self.crosses(item) for item in items}):
            gate = self.release.get(cross)
            if gate is not None:
                await gate.wait()
            if cross and self.fail_cross:
                raise errors.make_error(grpc.StatusCode.UNAVAILABLE, "SHARD_UNAVAILABLE", "down")
        outcomes = []
        for item in items:
            outcome = types_pb2.Transfer()
            outcome.CopyFrom(item)
            outcome.status = types_pb2.TRANSFER_STATUS_COMMITTED
            outcome.cross_shard = self.crosses(item)
            outcomes.append(outcome)
        return outcomes


@contextlib.asynccontextmanager
async def lanes(
    published: slots.SlotMap | None = EVEN, **router_kwargs: float
) -> AsyncIterator[tuple[FakeCluster, TransferCoalescer, LaneRouter]]:
    """A coalescer with lanes over a fake cluster whose true map is EVEN. With
    a published map, one item is sent first so that the map has landed."""
    cluster = FakeCluster(EVEN, published)
    router = LaneRouter(cluster.fetch, **router_kwargs)
    bank = TransferCoalescer(cluster.send, 1000, 0.001, router)
    if published is not None:
        await bank.submit(transfer(A1, A2))  # starts the first fetch
        await asyncio.sleep(0)
    try:
        yield cluster, bank, router
    finally:
        await bank.aclose()


def test_published_map_round_trips_and_none_without_ranges() -> None:
    assert slot_map_of(info(EVEN)) == EVEN
    assert slot_map_of(bank_pb2.ClusterInfo(slot_map_version=3, slot_count=slots.SLOT_COUNT)) is None
    wrong_count = info(EVEN)
    wrong_count.slot_count = 16
    with pytest.raises(ValueError, match="slots"):
        slot_map_of(wrong_count)
    gap = info(EVEN)
    del gap.slot_ranges[-1]
    with pytest.raises(ValueError, match="without an owner"):
        slot_map_of(gap)


def test_lane_selection_by_the_published_map() -> None:
    async def main() -> list[Lane]:
        cluster = FakeCluster(EVEN, EVEN)
        router = LaneRouter(cluster.fetch)
        before = router.lane(transfer(A1, B1))  # no map yet: the fetch has only started
        await asyncio.sleep(0)
        deposit = messages.transfer("deposit", 0, B1, 5, "CNY", None, "")
        withdrawal = messages.transfer("withdrawal", A1, 0, 5, "CNY", None, "")
        lanes = [before, *(router.lane(t) for t in (transfer(A1, A2), transfer(B1, B2), transfer(A1, B1)))]
        lanes += [router.lane(deposit), router.lane(withdrawal)]
        await router.aclose()
        assert cluster.fetches == 1
        return lanes

    assert asyncio.run(main()) == [
        Lane.SHARED,
        Lane.SINGLE_SHARD,
        Lane.SINGLE_SHARD,
        Lane.CROSS_SHARD,
        Lane.SINGLE_SHARD,
        Lane.SINGLE_SHARD,
    ]


def test_single_shard_callers_do_not_wait_for_a_cross_shard_call() -> None:
    async def main() -> None:
        async with lanes() as (cluster, bank, _):
            cluster.release[True] = asyncio.Event()  # cross-shard calls hang until released
            cross = asyncio.ensure_future(bank.submit(transfer(A1, B1)))
            singles = await asyncio.wait_for(
                asyncio.gather(bank.submit(transfer(A1, A2)), bank.submit(transfer(B2, B1))), 5
            )
            assert [s.cross_shard for s in singles] == [False, False]
            assert not cross.done()
            cluster.release[True].set()
            assert (await asyncio.wait_for(cross, 5)).cross_shard
        # After the first item: the singles shared one call, the cross-shard item had its own.
        assert [len(call) for call in cluster.calls] == [1, 1, 2]

    asyncio.run(main())


def test_one_call_out_per_lane_and_what_queued_goes_as_one_call() -> None:
    async def main() -> None:
        async with lanes() as (cluster, bank, _):
            cluster.release[False] = asyncio.Event()
            first = asyncio.ensure_future(bank.submit(transfer(A1, A2, 1)))
            await asyncio.sleep(0.02)  # past the linger: the first call is out and hangs
            later = [asyncio.ensure_future(bank.submit(transfer(B1, B2, n))) for n in (2, 3, 4)]
            await asyncio.sleep(0.02)  # well past the linger: still queued behind the first call
            assert len(cluster.calls) == 2
            cluster.release[False].set()
            outcomes = await asyncio.wait_for(asyncio.gather(first, *later), 5)
            assert [o.amount for o in outcomes] == [1, 2, 3, 4]
        assert [len(call) for call in cluster.calls] == [1, 1, 3]

    asyncio.run(main())


def test_stale_map_still_answers_every_item_and_is_refreshed() -> None:
    async def main() -> None:
        # The gateway first publishes a map older than the one it routes by.
        async with lanes(ALL_ON_ONE, refetch_s_min=0.0) as (cluster, bank, router):
            assert router.lane(transfer(A1, B1)) is Lane.SINGLE_SHARD  # wrong, by the stale map
            cluster.published = EVEN  # the gateway has caught up
            outcomes = await asyncio.gather(*(bank.submit(transfer(A1, b, 7)) for b in (B1, B2)))
            # Rode in the single-shard lane, but answered as the gateway routed them.
            assert [o.cross_shard for o in outcomes] == [True, True]
            assert all(o.status == types_pb2.TRANSFER_STATUS_COMMITTED for o in outcomes)
            router.lane(transfer(A1, A2))  # the next item starts the refresh the contradiction asked for
            await asyncio.sleep(0)
            assert cluster.fetches == 2
            assert router.lane(transfer(A1, B1)) is Lane.CROSS_SHARD

    asyncio.run(main())


def test_map_is_refetched_only_after_refresh_unless_contradicted() -> None:
    async def main() -> None:
        async with lanes(refresh_s=0.05, refetch_s_min=0.0) as (cluster, bank, _):
            for _ in range(3):
                await bank.submit(transfer(A1, B1))  # agrees with the map: no fetch
            assert cluster.fetches == 1
            await asyncio.sleep(0.06)
            await bank.submit(transfer(A1, A2))
            await asyncio.sleep(0)
            assert cluster.fetches == 2

    asyncio.run(main())


def test_no_map_readable_means_one_shared_lane_and_a_bounded_retry() -> None:
    async def main() -> None:
        # Cluster info refused (a customer key, say).
        async with lanes(None, refetch_s_min=0.05) as (cluster, bank, _):
            outcomes = await asyncio.gather(bank.submit(transfer(A1, B1)), bank.submit(transfer(A1, A2)))
            assert [o.cross_shard for o in outcomes] == [True, False]
            assert [len(call) for call in cluster.calls] == [2]  # together, as before lanes
            for _ in range(3):
                await bank.submit(transfer(A1, A2))
            assert cluster.fetches == 1  # not asked again before refetch_s_min

    asyncio.run(main())


def test_a_failed_call_fails_only_its_own_lane() -> None:
    async def main() -> None:
        async with lanes() as (cluster, bank, _):
            cluster.fail_cross = True
            results = await asyncio.gather(
                bank.submit(transfer(A1, B1)), bank.submit(transfer(B1, B2)), return_exceptions=True
            )
            assert isinstance(results[0], errors.Unavailable)
            assert isinstance(results[1], types_pb2.Transfer) and not results[1].cross_shard

    asyncio.run(main())


def test_a_caller_past_its_deadline_gets_deadline_exceeded_and_a_queued_item_is_not_sent() -> None:
    async def main() -> None:
        async with lanes() as (cluster, bank, _):
            cluster.release[False] = asyncio.Event()
            hanging = asyncio.ensure_future(bank.submit(transfer(A1, A2, 1), deadline_s=0.05))
            await asyncio.sleep(0.01)  # its call is out
            queued = asyncio.ensure_future(bank.submit(transfer(B1, B2, 2), deadline_s=0.05))
            for waiter in (hanging, queued):
                with pytest.raises(errors.DeadlineExceeded, match="same id"):
                    await asyncio.wait_for(waiter, 5)
            cluster.release[False].set()
        sent = [item.amount for call in cluster.calls for item in call]
        assert 2 not in sent  # its caller had gone before a call could take it

    asyncio.run(main())


@pytest.mark.parametrize(
    ("lane", "cross_shard", "status", "stale"),
    [
        (Lane.SINGLE_SHARD, True, types_pb2.TRANSFER_STATUS_COMMITTED, True),
        (Lane.CROSS_SHARD, False, types_pb2.TRANSFER_STATUS_COMMITTED, True),
        (Lane.SINGLE_SHARD, False, types_pb2.TRANSFER_STATUS_COMMITTED, False),
        (Lane.CROSS_SHARD, True, types_pb2.TRANSFER_STATUS_COMMITTED, False),
        (Lane.SHARED, True, types_pb2.TRANSFER_STATUS_COMMITTED, False),
        (Lane.CROSS_SHARD, False, types_pb2.TRANSFER_STATUS_ABORTED, False),
    ],
)
def test_contradicts(
    lane: Lane, cross_shard: bool, status: types_pb2.TransferStatus.ValueType, stale: bool
) -> None:
    outcome = types_pb2.Transfer(cross_shard=cross_shard, status=status)
    assert contradicts(lane, outcome) is stale


def test_bad_limits_are_refused() -> None:
    cluster = FakeCluster(EVEN, EVEN)
    with pytest.raises(ValueError):
        LaneRouter(cluster.fetch, refresh_s=0)
    with pytest.raises(ValueError):
        TransferCoalescer(cluster.send, 10, 0.001, None, lane_calls_max=0)
