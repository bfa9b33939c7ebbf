"""Cross-shard transfers through the gateway and the coordinator leader (2PC),
and recovery of in-doubt transfers by the leader, on real processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from shardbank import meta, service_auth
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2
from tests.integration.helpers import balance, open_on_shard

pytestmark = pytest.mark.integration

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
# Generous bounds for liveness (not performance): the 5 s figures are
# measured by loadtest/failover.py and quoted in the notes.
LEADER_CHANGE_WAIT_S = 20.0
RESOLVE_WAIT_S = 30.0


def test_cross_shard_transfer_commits(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 10_000, "CNY")
    transfer_id = str(uuid.uuid4())
    result = client.transfer(alice.id, bob.id, 2_500, "CNY", transfer_id=transfer_id, memo="rent")
    assert result.status == COMMITTED
    assert balance(client, alice.id) == 7_500
    assert balance(client, bob.id) == 2_500
    found = client.get_transfer(transfer_id)
    assert found.status == COMMITTED
    assert found.cross_shard
    assert found.memo == "rent"
    # Replayed: same outcome, no second movement.
    assert (
        client.transfer(alice.id, bob.id, 2_500, "CNY", transfer_id=transfer_id, memo="rent").status
        == COMMITTED
    )
    assert balance(client, alice.id) == 7_500
    with pytest.raises(ShardbankError) as conflict:
        client.transfer(alice.id, bob.id, 2_501, "CNY", transfer_id=transfer_id, memo="rent")
    assert conflict.value.reason == "TRANSFER_ID_CONFLICT"
    for account_id in (alice.id, bob.id):
        account = client.get_account(account_id)
        assert account.held == 0
        assert account.pending_credit == 0


def test_cross_shard_refusals_abort_with_the_reason(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-2")
    bob = open_on_shard(client, cluster, "shard-1")
    shop = open_on_shard(client, cluster, "shard-1", account_type="business")
    client.deposit(alice.id, 1_000, "CNY")

    with pytest.raises(ShardbankError) as overdraft:
        client.transfer(alice.id, bob.id, 1_001, "CNY")
    assert overdraft.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert overdraft.value.reason == "INSUFFICIENT_FUNDS"

    client.freeze(bob.id, reason="investigation")
    frozen_id = str(uuid.uuid4())
    with pytest.raises(ShardbankError) as frozen:
        client.transfer(alice.id, bob.id, 100, "CNY", transfer_id=frozen_id)
    assert frozen.value.reason == "ACCOUNT_FROZEN"
    assert client.get_transfer(frozen_id).status == ABORTED

    assert client.transfer(alice.id, shop.id, 400, "CNY", kind="payment").status == COMMITTED
    with pytest.raises(ShardbankError) as not_merchant:
        client.transfer(alice.id, bob.id, 1, "CNY", kind="payment")
    assert not_merchant.value.reason in ("NOT_A_MERCHANT", "ACCOUNT_FROZEN")

    assert balance(client, alice.id) == 600
    assert balance(client, bob.id) == 0
    assert balance(client, shop.id) == 400
    for account_id in (alice.id, bob.id, shop.id):
        account = client.get_account(account_id)
        assert (account.held, account.pending_credit) == (0, 0)


# ---- recovery and failover: a cluster of our own ------------------------------


@pytest.fixture()
def failover_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster", shards=2, coordinators=2)
    try:
        local.start()
        yield local
    finally:
        local.stop()


def _leader(cluster: LocalCluster) -> meta.Leader | None:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        return meta.read_leader(client)
    finally:
        client.close()


def _node(cluster: LocalCluster, shard_id: str) -> tuple[grpc.Channel, ledger_pb2_grpc.LedgerNodeStub]:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        address = meta.list_shards(client)[shard_id]["address"]
    finally:
        client.close()
    # Calls straight to a node need a service token, as the coordinator's do.
    channel = service_auth.signed_channel(address, cluster.cluster_secret, "test")
    return channel, ledger_pb2_grpc.LedgerNodeStub(channel)


def _plant_prepared(cluster: LocalCluster, transfer: types_pb2.Transfer, epoch: int, decide: bool) -> None:
    """Do what a coordinator does up to a crash: prepare both legs, maybe decide."""
    debit_channel, debit_node = _node(cluster, "shard-1")
    credit_channel, credit_node = _node(cluster, "shard-2")
    try:
        debit = debit_node.Prepare(
            ledger_pb2.PrepareRequest(
                epoch=epoch, items=[ledger_pb2.PrepareItem(transfer=transfer, role=types_pb2.LEG_ROLE_DEBIT)]
            ),
            timeout=5,
        )
        credit = credit_node.Prepare(
            ledger_pb2.PrepareRequest(
                epoch=epoch, items=[ledger_pb2.PrepareItem(transfer=transfer, role=types_pb2.LEG_ROLE_CREDIT)]
            ),
            timeout=5,
        )
        assert debit.legs[0].state == ledger_pb2.LEG_STATE_PREPARED, debit
        assert credit.legs[0].state == ledger_pb2.LEG_STATE_PREPARED, credit
        if decide:
            decided = debit_node.Decide(
                ledger_pb2.DecideRequest(
                    epoch=epoch,
                    items=[
                        ledger_pb2.DecideItem(
                            transfer_id=transfer.id, decision=ledger_pb2.DECISION_COMMIT, transfer=transfer
                        )
                    ],
                ),
                timeout=5,
            )
            assert decided.legs[0].state == ledger_pb2.LEG_STATE_COMMITTED, decided
    finally:
        debit_channel.close()
        credit_channel.close()


def _wait_final(client: BankClient, transfer_id: str) -> int:
    deadline = time.monotonic() + RESOLVE_WAIT_S
    while time.monotonic() < deadline:
        status = client.get_transfer(transfer_id).status
        if status in (COMMITTED, ABORTED):
            return status
        time.sleep(0.2)
    raise AssertionError(f"transfer {transfer_id} still in doubt after {RESOLVE_WAIT_S} s")


def test_leader_failover_resolves_in_doubt_transfers(failover_cluster: LocalCluster) -> None:
    cluster = failover_cluster
    client = BankClient(cluster.gateway_address, token=cluster.admin_token)
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 10_000, "CNY")
    leader = _leader(cluster)
    assert leader is not None

    def body(amount: int) -> types_pb2.Transfer:
        return types_pb2.Transfer(
            id=str(uuid.uuid4()),
            kind=types_pb2.TRANSFER_KIND_TRANSFER,
            debit_account_id=alice.id,
            credit_account_id=bob.id,
            amount=amount,
            currency="CNY",
        )

    undecided, decided = body(1_000), body(2_000)
    _plant_prepared(cluster, undecided, leader.epoch, decide=False)
    _plant_prepared(cluster, decided, leader.epoch, decide=True)
    in_flight = client.get_account(alice.id)
    assert in_flight.held == 1_000  # the undecided hold; the decided one is posted

    cluster.kill(leader.coordinator_id)
    deadline = time.monotonic() + LEADER_CHANGE_WAIT_S
    new_leader = _leader(cluster)
    while (new_leader is None or new_leader.coordinator_id == leader.coordinator_id) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
        new_leader = _leader(cluster)
    assert new_leader is not None and new_leader.coordinator_id != leader.coordinator_id
    assert new_leader.epoch > leader.epoch

    assert _wait_final(client, undecided.id) == ABORTED  # presumed abort
    assert _wait_final(client, decided.id) == COMMITTED  # the decision stands
    deadline = time.monotonic() + RESOLVE_WAIT_S
    while client.get_account(bob.id).pending_credit and time.monotonic() < deadline:
        time.sleep(0.2)
    assert balance(client, alice.id) == 8_000
    assert balance(client, bob.id) == 2_000
    for account_id in (alice.id, bob.id):
        account = client.get_account(account_id)
        assert (account.held, account.pending_credit) == (0, 0)

    # The deposed leader's epoch is fenced: shards refuse it.
    channel, node = _node(cluster, "shard-1")
    try:
        with pytest.raises(grpc.RpcError) as fenced:
            node.Prepare(
                ledger_pb2.PrepareRequest(
                    epoch=leader.epoch,
                    items=[ledger_pb2.PrepareItem(transfer=body(1), role=types_pb2.LEG_ROLE_DEBIT)],
                ),
                timeout=5,
            )
        assert fenced.value.code() == grpc.StatusCode.ABORTED
    finally:
        channel.close()

    # And new transfers flow through the new leader.
    assert client.transfer(alice.id, bob.id, 500, "CNY").status == COMMITTED
    client.close_channel()


def test_credit_leg_prepared_without_a_direct_decide_is_presumed_aborted(
    client: BankClient, cluster: LocalCluster
) -> None:
    """A leader that dies between the credit Prepare and the direct Decide
    leaves a PREPARED credit leg and no record: recovery tombstones the record
    holder and aborts the leg; the late direct Decide then meets the tombstone
    and moves nothing (docs/2pc.md, "Direct decide")."""
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 1_000, "CNY")
    leader = _leader(cluster)
    assert leader is not None
    transfer = types_pb2.Transfer(
        id=str(uuid.uuid4()),
        kind=types_pb2.TRANSFER_KIND_TRANSFER,
        debit_account_id=alice.id,
        credit_account_id=bob.id,
        amount=400,
        currency="CNY",
    )
    debit_channel, debit_node = _node(cluster, "shard-1")
    credit_channel, credit_node = _node(cluster, "shard-2")
    try:
        credit = credit_node.Prepare(
            ledger_pb2.PrepareRequest(
                epoch=leader.epoch,
                items=[ledger_pb2.PrepareItem(transfer=transfer, role=types_pb2.LEG_ROLE_CREDIT)],
            ),
            timeout=5,
        )
        assert credit.legs[0].state == ledger_pb2.LEG_STATE_PREPARED, credit
        assert client.get_account(bob.id).pending_credit == 400
        assert _wait_final(client, transfer.id) == ABORTED
        deadline = time.monotonic() + RESOLVE_WAIT_S
        while client.get_account(bob.id).pending_credit and time.monotonic() < deadline:
            time.sleep(0.2)
        late = debit_node.Decide(
            ledger_pb2.DecideRequest(
                epoch=leader.epoch,
                items=[
                    ledger_pb2.DecideItem(
                        transfer_id=transfer.id,
                        decision=ledger_pb2.DECISION_COMMIT,
                        transfer=transfer,
                        direct=True,
                    )
                ],
            ),
            timeout=5,
        )
    finally:
        debit_channel.close()
        credit_channel.close()
    assert late.legs[0].state == ledger_pb2.LEG_STATE_ABORTED, late
    assert late.legs[0].reason == "CONTRADICTORY_DECISION"
    assert (balance(client, alice.id), balance(client, bob.id)) == (1_000, 0)
    for account_id in (alice.id, bob.id):
        account = client.get_account(account_id)
        assert (account.held, account.pending_credit) == (0, 0)
