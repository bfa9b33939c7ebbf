"""The per-customer daily limit counts all of a customer's accounts, whichever
shard holds them: the gateway asks every shard for the customer's money out
in the last 24 h and sums (GetActivityRequest.customer_ids).

Before, each shard reported only the accounts it held, so a customer with an
account on each of two shards could pay out up to twice the limit.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from shardbank.v1 import types_pb2
from tests.factories import mobile, resident_id
from tests.integration.helpers import balance, cluster_with_rules, open_on_shard

pytestmark = pytest.mark.integration

LIMIT_MINOR = 125_000
RULES = f"""
currency = "CNY"
timezone = "Asia/Shanghai"

[bands]
review_score = 50
block_score = 100

[rules.customer_daily_limit]
weight = 100
severity = "HIGH"
limit_minor = {{ personal = {LIMIT_MINOR}, business = {LIMIT_MINOR} }}
"""
FUNDS = 1_000_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from cluster_with_rules(tmp_path_factory.mktemp("customer-limit"), RULES)


def test_the_daily_limit_sums_the_customers_accounts_on_every_shard(limited: LocalCluster) -> None:
    admin = BankClient(limited.gateway_address, token=limited.admin_token)
    key = admin.create_api_key("customer", "cust-limit")
    customer = BankClient(limited.gateway_address, token=key.token)
    try:
        here = open_on_shard(customer, limited, "shard-1").id
        there = open_on_shard(customer, limited, "shard-2").id
        shop = admin.open_account("Shop", resident_id(), mobile(), account_type="business")
        for account_id in (here, there):
            admin.deposit(account_id, FUNDS, "CNY")

        # 70,000 + 50,000 out today: 120,000, within 125,000.
        first = customer.transfer(there, shop.id, 70_000, "CNY")
        second = customer.transfer(here, shop.id, 50_000, "CNY")
        assert first.status == second.status == types_pb2.TRANSFER_STATUS_COMMITTED

        # 10,000 more from shard-1 passes the limit only with shard-2's
        # 70,000 counted: shard-1 alone has seen 50,000 + 10,000.
        with pytest.raises(ShardbankError) as refused:
            customer.transfer(here, shop.id, 10_000, "CNY")
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "RISK_BLOCKED"
        assert balance(admin, here) == FUNDS - 50_000
        assert balance(admin, there) == FUNDS - 70_000

        # A payment the remaining 5,000 covers still goes through, from either shard.
        assert customer.transfer(there, shop.id, 5_000, "CNY").status == types_pb2.TRANSFER_STATUS_COMMITTED
    finally:
        customer.close_channel()
        admin.close_channel()
