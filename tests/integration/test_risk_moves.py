"""The risk view of a shard follows slot moves: a customer's 24 h total on a
shard (GetActivity's customer_out_24h and its `customer_ids` answer, the
daily-limit rule's inputs) counts exactly the accounts that shard owns,
before and after one of them moves in or out, so the gateway's sum over the
shards counts each account once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import meta, service_auth
from shardbank.v1 import ledger_pb2, ledger_pb2_grpc
from tests.factories import mobile, resident_id
from tests.integration.helpers import open_on_shard
from tests.integration.moves_support import move_and_wait, own_cluster, slots_of


def _activity(cluster: LocalCluster, shard_id: str, request: ledger_pb2.GetActivityRequest) -> Any:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        address = meta.list_shards(client)[shard_id]["address"]
    finally:
        client.close()
    with service_auth.signed_channel(address, cluster.cluster_secret, "test") as channel:
        return ledger_pb2_grpc.LedgerNodeStub(channel).GetActivity(request, timeout=10)


def _customer_out(cluster: LocalCluster, shard_id: str, account_id: int) -> int:
    request = ledger_pb2.GetActivityRequest(queries=[ledger_pb2.ActivityQuery(account_id=account_id)])
    (summary,) = _activity(cluster, shard_id, request).summaries
    assert summary.code == 0, summary
    return int(summary.customer_out_24h.amount)


def _customer_total(cluster: LocalCluster, customer_id: str) -> dict[str, int]:
    """What each shard reports for the customer (`customer_ids`): the parts
    the gateway sums. Each account counts on exactly one shard."""
    parts = {}
    for shard_id in ("shard-1", "shard-2"):
        reply = _activity(cluster, shard_id, ledger_pb2.GetActivityRequest(customer_ids=[customer_id]))
        (total,) = reply.customers
        assert total.customer_id == customer_id
        parts[shard_id] = int(total.out_24h.amount)
    return parts


def test_customer_total_follows_an_account_moved_in_and_out(tmp_path: Path) -> None:
    with own_cluster(tmp_path) as cluster:
        admin = BankClient(cluster.gateway_address, token=cluster.admin_token)
        key = admin.create_api_key("customer", "cust-mv")
        customer = BankClient(cluster.gateway_address, token=key.token)
        try:
            here, there = (
                open_on_shard(customer, cluster, "shard-1").id,
                open_on_shard(customer, cluster, "shard-2").id,
            )
            shop = admin.open_account("Shop", resident_id(), mobile(), account_type="business")
            for account_id, spent in ((here, 1_000), (there, 300)):
                admin.deposit(account_id, 10_000, "CNY")
                customer.transfer(account_id, shop.id, spent, "CNY")
            assert _customer_out(cluster, "shard-1", here) == 1_000  # builds shard-1's customer index
            assert _customer_out(cluster, "shard-2", there) == 300
            assert _customer_total(cluster, "cust-mv") == {"shard-1": 1_000, "shard-2": 300}

            move_and_wait(cluster, slots_of([there]), "shard-1")
            assert _customer_out(cluster, "shard-1", here) == 1_300, "the account moved in is not counted"
            assert _customer_total(cluster, "cust-mv") == {"shard-1": 1_300, "shard-2": 0}

            move_and_wait(cluster, slots_of([there]), "shard-2")
            assert _customer_out(cluster, "shard-1", here) == 1_000, "the account moved out is still counted"
            assert _customer_out(cluster, "shard-2", there) == 300
            assert _customer_total(cluster, "cust-mv") == {"shard-1": 1_000, "shard-2": 300}
        finally:
            customer.close_channel()
            admin.close_channel()
