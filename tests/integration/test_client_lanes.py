"""The coalescing client's lanes on real processes: the gateway publishes its
slot map in GetClusterInfo, and a mixed single-/cross-shard load through
`AsyncBankClient(coalesce=True, coalesce_lanes=True)` -- first with a deliberately stale map --
commits every transfer once, each caller's outcome matches GetTransfer, and
the books balance.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from clients import messages, routes
from clients.aio import AsyncBankClient
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from clients.routes import LaneRouter
from shardbank import slots
from shardbank.v1 import types_pb2
from tests.integration.helpers import balance, funded_business_accounts, slot_map

pytestmark = pytest.mark.integration

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
FUNDS_MINOR = 1_000_000
CALL_TIMEOUT_S = 10.0
CALLERS = 24
ROUNDS = 4  # transfers per caller, one after the other


@pytest.fixture(scope="module")
def accounts(client: BankClient, cluster: LocalCluster) -> Iterator[dict[str, list[int]]]:
    yield funded_business_accounts(client, cluster, 3, FUNDS_MINOR)


def test_gateway_publishes_its_slot_map(client: BankClient, cluster: LocalCluster) -> None:
    info = client.cluster_info()
    published = slots.SlotMap.from_ranges(
        info.slot_map_version, [(r.first, r.last, r.shard_id) for r in info.slot_ranges]
    )
    assert published == slot_map(cluster)


def planned(accounts: dict[str, list[int]]) -> list[list[tuple[int, int, int]]]:
    """Per caller, its (payer, payee, amount) in order: one in four crosses shards."""
    one, two = accounts["shard-1"], accounts["shard-2"]
    plans = []
    for caller in range(CALLERS):
        moves = []
        for step in range(ROUNDS):
            n = caller * ROUNDS + step
            side, other = (one, two) if n % 2 else (two, one)
            payee = other[(n + 1) % 3] if n % 4 == 0 else side[(n + 1) % 3]
            moves.append((side[n % 3], payee, 100 + n))
        plans.append(moves)
    return plans


async def run_load(
    cluster: LocalCluster, plans: list[list[tuple[int, int, int]]], stale: slots.SlotMap
) -> tuple[list[types_pb2.Transfer], LaneRouter]:
    bank = AsyncBankClient(
        cluster.gateway_address,
        deadline_s=CALL_TIMEOUT_S,
        token=cluster.admin_token,
        coalesce=True,
        coalesce_lanes=True,
    )
    router = bank.lane_router
    assert router is not None
    await bank.cluster_info()  # the channel is up before the map is replaced
    router.lane(messages.transfer("deposit", 0, 1, 1, "CNY", None, ""))  # starts the first fetch
    # Past the least time between fetches, so the first contradiction refetches at once.
    await asyncio.sleep(routes.REFETCH_S_MIN + 0.1)
    assert router.slot_map is not None and router.slot_map.version > 0
    router.slot_map = stale  # as if a move had flipped slots since the fetch

    async def caller(moves: list[tuple[int, int, int]]) -> list[types_pb2.Transfer]:
        outcomes = []
        for payer, payee, amount in moves:
            outcomes.append(await bank.transfer(payer, payee, amount, "CNY", str(uuid.uuid4())))
        return outcomes

    try:
        per_caller = await asyncio.wait_for(asyncio.gather(*(caller(m) for m in plans)), 60)
    finally:
        await bank.close_channel()
    return [outcome for outcomes in per_caller for outcome in outcomes], router


def test_mixed_load_through_lanes_with_a_stale_map_commits_each_once_and_balances(
    client: BankClient, cluster: LocalCluster, accounts: dict[str, list[int]]
) -> None:
    every = [*accounts["shard-1"], *accounts["shard-2"]]
    before = {account_id: balance(client, account_id) for account_id in every}
    plans = planned(accounts)
    current = slot_map(cluster)
    # Stale: every slot on shard-1, so every transfer looks single-shard.
    stale = slots.SlotMap(current.version - 1 if current.version > 1 else 0, ("shard-1",) * slots.SLOT_COUNT)

    outcomes, router = asyncio.run(run_load(cluster, plans, stale))

    moves = [move for moves in plans for move in moves]
    assert len(outcomes) == len(moves)
    assert all(o.status == COMMITTED for o in outcomes)
    crossing = [current.owner(payer) != current.owner(payee) for payer, payee, _ in moves]
    assert [o.cross_shard for o in outcomes] == crossing
    assert any(crossing) and not all(crossing)
    for outcome in outcomes:
        recorded = client.get_transfer(outcome.id)
        assert (recorded.status, recorded.amount, recorded.cross_shard) == (
            outcome.status,
            outcome.amount,
            outcome.cross_shard,
        )
        assert (recorded.debit_account_id, recorded.credit_account_id) == (
            outcome.debit_account_id,
            outcome.credit_account_id,
        )
    expected = dict(before)
    for payer, payee, amount in moves:
        expected[payer] -= amount
        expected[payee] += amount
    after = {account_id: balance(client, account_id) for account_id in every}
    assert after == expected
    assert sum(after.values()) == sum(before.values())
    # The cross-shard outcomes contradicted the stale map: the client fetched the real one.
    assert router.slot_map == current
