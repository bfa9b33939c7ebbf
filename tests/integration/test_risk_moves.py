"""The risk view of a shard follows slot moves: a customer's 24 h total on a
shard (GetActivity's customer_out_24h, the daily-limit rule's input) counts
exactly the accounts that shard holds, before and after one of them moves in
or out."""

from __future__ import annotations

from pathlib import Path

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import meta, service_auth
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc
from tests.factories import mobile, resident_id
from tests.integration.helpers import OPEN_ATTEMPTS_MAX, slot_map
from tests.integration.moves_support import move_and_wait, own_cluster, slots_of


def _customer_out(cluster: LocalCluster, shard_id: str, account_id: int) -> int:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        address = meta.list_shards(client)[shard_id]["address"]
    finally:
        client.close()
    with service_auth.signed_channel(address, cluster.cluster_secret, "test") as channel:
        reply = ledger_pb2_grpc.LedgerNodeStub(channel).GetActivity(
            ledger_pb2.GetActivityRequest(queries=[ledger_pb2.ActivityQuery(account_id=account_id)]),
            timeout=10,
        )
    (summary,) = reply.summaries
    assert summary.code == 0, summary
    return int(summary.customer_out_24h.amount)


def _open_on(customer: BankClient, cluster: LocalCluster, shard_id: str) -> int:
    slots = slot_map(cluster)
    for _ in range(OPEN_ATTEMPTS_MAX):
        account = customer.open_account("Sun Li", resident_id(), mobile())
        if slots.owner(account.id) == shard_id:
            return int(account.id)
    raise AssertionError(f"no account landed on {shard_id}")


def test_customer_total_follows_an_account_moved_in_and_out(tmp_path: Path) -> None:
    with own_cluster(tmp_path) as cluster:
        admin = BankClient(cluster.gateway_address, token=cluster.admin_token)
        key = admin.create_api_key("customer", "cust-mv")
        customer = BankClient(cluster.gateway_address, token=key.token)
        try:
            here, there = _open_on(customer, cluster, "shard-1"), _open_on(customer, cluster, "shard-2")
            shop = admin.open_account("Shop", resident_id(), mobile(), account_type="business")
            for account_id, spent in ((here, 1_000), (there, 300)):
                admin.deposit(account_id, 10_000, "CNY")
                customer.transfer(account_id, shop.id, spent, "CNY")
            assert _customer_out(cluster, "shard-1", here) == 1_000  # builds shard-1's customer index
            assert _customer_out(cluster, "shard-2", there) == 300

            move_and_wait(cluster, slots_of([there]), "shard-1")
            assert _customer_out(cluster, "shard-1", here) == 1_300, "the account moved in is not counted"

            move_and_wait(cluster, slots_of([there]), "shard-2")
            assert _customer_out(cluster, "shard-1", here) == 1_000, "the account moved out is still counted"
            assert _customer_out(cluster, "shard-2", there) == 300
        finally:
            customer.close_channel()
            admin.close_channel()
