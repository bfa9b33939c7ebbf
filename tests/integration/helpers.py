"""Shared steps of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clients.client import BankClient
from clients.local_cluster import LocalCluster
from shardbank import meta
from shardbank.slots import SlotMap
from shardbank.v1 import types_pb2
from tests.factories import mobile, resident_id

OPEN_ATTEMPTS_MAX = 200


def slot_map(cluster: LocalCluster) -> SlotMap:
    client = meta.connect(cluster.etcd_endpoint)
    try:
        found = meta.read_slot_map(client)
    finally:
        client.close()
    assert found is not None
    return found


def open_account(
    client: BankClient, account_type: str = "personal", currency: str = "CNY"
) -> types_pb2.Account:
    return client.open_account(
        name="Li Lei",
        id_number=resident_id(),
        phone=mobile(),
        currency=currency,
        account_type=account_type,
    )


def open_on_shard(
    client: BankClient, cluster: LocalCluster, shard_id: str, account_type: str = "personal"
) -> types_pb2.Account:
    """Open accounts until one lands on `shard_id` (placement is by hash)."""
    slots = slot_map(cluster)
    for _ in range(OPEN_ATTEMPTS_MAX):
        account = open_account(client, account_type)
        if slots.owner(account.id) == shard_id:
            return account
    raise AssertionError(f"no account landed on {shard_id} in {OPEN_ATTEMPTS_MAX} tries")


def funded_business_accounts(
    client: BankClient, cluster: LocalCluster, per_shard: int, amount_minor: int
) -> dict[str, list[int]]:
    """`per_shard` funded business accounts on each of shard-1 and shard-2
    (business: the risk check allows them the velocity a load needs, where a
    personal one is held for review after 10 transfers a minute)."""
    opened: dict[str, list[int]] = {"shard-1": [], "shard-2": []}
    for shard_id, ids in opened.items():
        for _ in range(per_shard):
            account = open_on_shard(client, cluster, shard_id, account_type="business")
            assert (
                client.deposit(account.id, amount_minor, "CNY").status == types_pb2.TRANSFER_STATUS_COMMITTED
            )
            ids.append(account.id)
    return opened


def balance(client: BankClient, account_id: int) -> int:
    return client.get_account(account_id).balance


def cluster_with_rules(data_dir: Path, rules: str) -> Iterator[LocalCluster]:
    """A 2-shard cluster whose gateway runs these risk rules (TOML text);
    every process stopped by PID at the end."""
    path = data_dir / "risk.toml"
    path.write_text(rules)
    local = LocalCluster(data_dir, shards=2, coordinators=1, risk_config=str(path))
    try:
        local.start()
        yield local
    finally:
        local.stop()


def leader(cluster: LocalCluster) -> meta.Leader:
    """The coordinator that leads now (etcd's leader key)."""
    client = meta.connect(cluster.etcd_endpoint)
    try:
        found = meta.read_leader(client)
    finally:
        client.close()
    assert found is not None, "no coordinator leader"
    return found


def leader_id(cluster: LocalCluster) -> str:
    return leader(cluster).coordinator_id
