"""Coalescing on real processes: many concurrent single-transfer calls share
downstream calls (gateway.coalesce), yet each caller gets its own outcome,
a duplicated id moves money once, and a refusal stays a refusal.

Also what coalescing relies on: a node's ApplyTransfers and the coordinator's
SubmitTransfers given the same id twice in ONE request answer both with the
one outcome and move the money once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from clients import messages
from clients.aio import AsyncBankClient
from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import service_auth
from shardbank.v1 import coordinator_pb2, coordinator_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2
from tests.integration.helpers import balance, funded_business_accounts, leader, open_on_shard
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
FUNDS_MINOR = 100_000
CALL_TIMEOUT_S = 10.0
# Distinct transfers sent at once, one per call (plus two duplicates and a refusal).
DISTINCT = 120


def signed(cluster: LocalCluster, address: str) -> grpc.Channel:
    """Calls straight to a node or coordinator need a service token, as the gateway's do."""
    return service_auth.signed_channel(address, cluster.cluster_secret, "test")


@pytest.fixture(scope="module")
def accounts(client: BankClient, cluster: LocalCluster) -> Iterator[dict[str, list[int]]]:
    """Three funded business accounts per shard, and an empty one on shard-1."""
    opened = funded_business_accounts(client, cluster, 3, FUNDS_MINOR)
    opened["empty"] = [open_on_shard(client, cluster, "shard-1").id]
    yield opened


def twice_in_one_request(
    client: BankClient,
    channel: grpc.Channel,
    call: Callable[[grpc.Channel, list[types_pb2.Transfer]], list[types_pb2.Transfer]],
    payer: int,
    payee: int,
) -> tuple[types_pb2.Transfer, types_pb2.Transfer]:
    """Both answers to one request carrying the same transfer twice; checks
    that the money moved exactly once."""
    before = balance(client, payer), balance(client, payee)
    item = messages.transfer("transfer", payer, payee, 123, "CNY", str(uuid.uuid4()), "twice")
    try:
        first, second = call(channel, [item, item])
    finally:
        channel.close()
    assert (balance(client, payer), balance(client, payee)) == (before[0] - 123, before[1] + 123)
    return first, second


def apply_at_node(channel: grpc.Channel, items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
    request = ledger_pb2.ApplyTransfersRequest(transfers=items)
    return list(
        ledger_pb2_grpc.LedgerNodeStub(channel).ApplyTransfers(request, timeout=CALL_TIMEOUT_S).transfers
    )


def submit_at_leader(channel: grpc.Channel, items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
    request = coordinator_pb2.CoordinatorSubmitRequest(transfers=items)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    return list(stub.SubmitTransfers(request, timeout=CALL_TIMEOUT_S).transfers)


def test_a_node_given_one_id_twice_in_one_request_answers_both_alike_and_moves_money_once(
    client: BankClient, cluster: LocalCluster, accounts: dict[str, list[int]]
) -> None:
    channel = signed(cluster, cluster.node_addresses["shard-1"])
    payer, payee = accounts["shard-1"][0], accounts["shard-1"][1]
    first, second = twice_in_one_request(client, channel, apply_at_node, payer, payee)
    assert first.status == COMMITTED
    assert second == first


def test_the_coordinator_given_one_id_twice_in_one_request_answers_both_alike_and_moves_money_once(
    client: BankClient, cluster: LocalCluster, accounts: dict[str, list[int]]
) -> None:
    channel = signed(cluster, leader(cluster).address)
    payer, payee = accounts["shard-1"][2], accounts["shard-2"][2]
    first, second = twice_in_one_request(client, channel, submit_at_leader, payer, payee)
    assert first.status == COMMITTED
    assert first.cross_shard
    assert (second.id, second.status, second.code) == (first.id, first.status, first.code)


def downstream(cluster: LocalCluster) -> tuple[float, float]:
    """(downstream transfer calls, callers they carried) so far, from the gateway's /metrics."""
    samples = scrape(cluster.metrics_addresses["gw-1"])
    calls = value(samples, "shardbank_gateway_downstream_callers_count")
    callers = value(samples, "shardbank_gateway_downstream_callers_sum")
    return calls, callers


def node_apply_calls(cluster: LocalCluster) -> float:
    return sum(
        value(
            scrape(cluster.metrics_addresses[shard_id]),
            "shardbank_rpc_duration_seconds_count",
            component="ledger_node",
            rpc="ApplyTransfers",
        )
        for shard_id in ("shard-1", "shard-2")
    )


async def submit_all(cluster: LocalCluster, items: list[types_pb2.Transfer]) -> list[types_pb2.Transfer]:
    """Each item in a call of its own, all at once (no client-side coalescing)."""
    bank = AsyncBankClient(cluster.gateway_address, deadline_s=CALL_TIMEOUT_S, token=cluster.admin_token)
    try:
        replies = await asyncio.gather(*(bank.submit_transfers([item]) for item in items))
    finally:
        await bank.close_channel()
    return [reply[0] for reply in replies]


def test_concurrent_single_calls_share_downstream_calls_and_each_gets_its_own_outcome(
    client: BankClient, cluster: LocalCluster, accounts: dict[str, list[int]]
) -> None:
    one, two = accounts["shard-1"], accounts["shard-2"]
    every = [*one, *two, *accounts["empty"]]
    before = {account_id: balance(client, account_id) for account_id in every}
    moves: list[tuple[int, int, int]] = []  # (payer, payee, amount) of each distinct transfer
    items: list[types_pb2.Transfer] = []
    for n in range(DISTINCT):
        payer = one[n % 3] if n % 2 else two[n % 3]
        # Every third one crosses shards; the rest stay on the payer's shard.
        same_side = one if payer in one else two
        other_side = two if payer in one else one
        payee = other_side[(n + 1) % 3] if n % 3 == 0 else same_side[(n + 1) % 3]
        amount = 100 + n
        moves.append((payer, payee, amount))
        items.append(messages.transfer("transfer", payer, payee, amount, "CNY", str(uuid.uuid4()), f"c{n}"))
    # Two callers racing on one id, single-shard and cross-shard: one outcome, one movement.
    racing_single, racing_cross = items[1], items[0]
    assert racing_cross.debit_account_id in two and racing_cross.credit_account_id in one
    items += [racing_single, racing_cross]
    refused = messages.transfer("transfer", accounts["empty"][0], one[0], 1, "CNY", str(uuid.uuid4()), "")
    items.append(refused)

    calls_before, callers_before = downstream(cluster)
    applies_before = node_apply_calls(cluster)
    outcomes = asyncio.run(submit_all(cluster, items))
    calls, callers = downstream(cluster)
    applies = node_apply_calls(cluster)

    assert [o.id for o in outcomes] == [i.id for i in items]  # each caller got its own item back
    for outcome, item in zip(outcomes[:DISTINCT], items[:DISTINCT], strict=True):
        assert outcome.status == COMMITTED, outcome
        assert (outcome.debit_account_id, outcome.credit_account_id, outcome.amount) == (
            item.debit_account_id,
            item.credit_account_id,
            item.amount,
        )
    assert outcomes[DISTINCT].status == COMMITTED and outcomes[DISTINCT].id == outcomes[1].id
    assert outcomes[DISTINCT + 1].status == COMMITTED and outcomes[DISTINCT + 1].cross_shard
    assert outcomes[-1].status == ABORTED
    assert outcomes[-1].reason == "INSUFFICIENT_FUNDS"

    # Money moved once per distinct transfer, the refusal moved none.
    expected = dict(before)
    for payer, payee, amount in moves:
        expected[payer] -= amount
        expected[payee] += amount
    assert {account_id: balance(client, account_id) for account_id in every} == expected

    # Every single call went downstream once, and they shared calls (the
    # gateway's own count); a node never saw more calls than transfers.
    assert callers - callers_before == len(items)
    assert calls - calls_before < callers - callers_before, (calls, calls_before, callers, callers_before)
    on_one = {*one, *accounts["empty"]}
    single_shard = sum(1 for i in items if (i.debit_account_id in on_one) == (i.credit_account_id in on_one))
    assert 0 < applies - applies_before <= single_shard, (applies, applies_before, single_shard)
