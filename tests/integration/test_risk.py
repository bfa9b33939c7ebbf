"""The risk engine in the transfer path, against real processes: BLOCK over
gRPC and HTTP (exact status, no rule details, nothing moved, the refusal
recorded and replayed), the default REVIEW refusal, client-set risk fields
refused, alert-only AML rules, and risk state that lives in the shards (a
velocity window filled before the gateway is killed still fires after).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from gateway.risk.alerts import read_alerts
from shardbank.v1 import types_pb2
from tests.factories import mobile, resident_id
from tests.integration.helpers import balance, cluster_with_rules, open_on_shard
from tests.integration.http_support import Api

pytestmark = pytest.mark.integration

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
BLOCK = types_pb2.RISK_DECISION_BLOCK
ALLOW = types_pb2.RISK_DECISION_ALLOW

# Small thresholds so that tests move little money: >= 10,000.00 blocked,
# >= 5,000.00 held for review, a 6th transfer out in a minute blocked, three
# transfers in [2,700.00, 3,000.00) within a day alert as structuring.
TEST_RULES = """
currency = "CNY"
timezone = "Asia/Shanghai"
dormancy_ms = 31_536_000_000

[bands]
review_score = 50
block_score = 100

[rules.large_amount]
weight = 100
severity = "HIGH"
threshold_minor = { personal = 1_000_000, business = 10_000_000 }

[rules.review_amount]
kind = "large_amount"
weight = 50
threshold_minor = { personal = 500_000, business = 5_000_000 }

[rules.velocity_count_1m]
kind = "velocity_count"
weight = 100
window_s = 60
max_count = { personal = 5, business = 1000 }

[rules.structuring]
alert_only = true
aml_typology = "STRUCTURING"
severity = "HIGH"
threshold_minor = 300_000
band_pct = 10
min_count = 3
"""
FUNDS = 10_000_000


@pytest.fixture(scope="module")
def risky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from cluster_with_rules(tmp_path_factory.mktemp("risk"), TEST_RULES)


@pytest.fixture(scope="module")
def bank(risky: LocalCluster) -> Iterator[BankClient]:
    client = BankClient(risky.gateway_address, token=risky.admin_token)
    try:
        yield client
    finally:
        client.close_channel()


def alerts_of(cluster: LocalCluster, transfer_id: str) -> list[dict[str, object]]:
    return [a for a in read_alerts(cluster.etcd_endpoint) if a["transfer_id"] == transfer_id]


def funded(bank: BankClient, cluster: LocalCluster, shard_id: str) -> types_pb2.Account:
    account = open_on_shard(bank, cluster, shard_id)
    bank.deposit(account.id, FUNDS, "CNY")
    return account


@pytest.mark.parametrize("credit_shard", ["shard-1", "shard-2"])
def test_block_over_grpc_refuses_records_and_replays(
    bank: BankClient, risky: LocalCluster, credit_shard: str
) -> None:
    alice = funded(bank, risky, "shard-1")
    bob = open_on_shard(bank, risky, credit_shard)
    transfer_id = str(uuid.uuid4())
    for _ in range(2):  # the second time is a replay of the recorded refusal
        with pytest.raises(ShardbankError) as refused:
            bank.transfer(alice.id, bob.id, 1_000_000, "CNY", transfer_id=transfer_id)
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.reason == "RISK_BLOCKED"
        assert "large_amount" not in str(refused.value)
    assert balance(bank, alice.id) == FUNDS
    assert balance(bank, bob.id) == 0
    assert [e.transfer.kind for e in bank.history(alice.id).entries] == [types_pb2.TRANSFER_KIND_DEPOSIT]
    stored = bank.get_transfer(transfer_id)  # as admin: the rules are shown
    assert stored.status == ABORTED and stored.reason == "RISK_BLOCKED"
    assert stored.risk.decision == BLOCK
    assert list(stored.risk.rules) == ["large_amount", "review_amount"]
    assert stored.risk.score == 150
    (alert,) = alerts_of(risky, transfer_id)  # one alert, not one per try
    assert alert["alert_id"] == stored.risk.alert_id
    assert alert["decision"] == "BLOCK" and alert["severity"] == "HIGH"
    assert alert["rules"] == ["large_amount", "review_amount"] and alert["account_id"] == alice.id
    assert alert["amount"] == 1_000_000 and alert["status"] == "OPEN"


def test_block_over_http_says_nothing_of_the_rules(bank: BankClient, risky: LocalCluster) -> None:
    api = Api.of(risky)
    alice = funded(bank, risky, "shard-2")
    bob = open_on_shard(bank, risky, "shard-2")
    key = str(uuid.uuid4())
    body = {"debit_account_id": str(alice.id), "credit_account_id": str(bob.id), "amount": "2000000",
            "currency": "CNY"}  # fmt: skip
    replies = [api.post("/v1/transfers", body, headers={"Idempotency-Key": key}) for _ in range(2)]
    for reply in replies:
        assert reply.status == 422, reply.describe()
        assert reply.reason == "RISK_BLOCKED"
        assert "large_amount" not in reply.text and "score" not in reply.text
    assert balance(bank, alice.id) == FUNDS


def test_review_holds_the_debit_until_an_officer_decides(bank: BankClient, risky: LocalCluster) -> None:
    """A REVIEW decision goes to the review desk: the debit is held through
    2PC with a deadline, the customer's view is PENDING / UNDER_REVIEW, and
    the alert says the review is pending."""
    alice = funded(bank, risky, "shard-1")
    bob = open_on_shard(bank, risky, "shard-1")
    transfer_id = str(uuid.uuid4())
    held = bank.transfer(alice.id, bob.id, 600_000, "CNY", transfer_id=transfer_id)
    assert (held.status, held.reason) == (types_pb2.TRANSFER_STATUS_PENDING, "UNDER_REVIEW")
    assert held.review_deadline_unix_ms > 0
    account = bank.get_account(alice.id)
    assert (account.balance, account.held, account.available) == (FUNDS, 600_000, FUNDS - 600_000)
    (alert,) = alerts_of(risky, transfer_id)
    assert alert["decision"] == "REVIEW" and alert["rules"] == ["review_amount"]
    assert alert["review_state"] == "PENDING" and alert["alert_id"] == held.risk.alert_id
    bank.review_transfer(transfer_id, approve=False, note="test: not approved")
    assert bank.get_transfer(transfer_id).reason == "RISK_REJECTED"
    assert (balance(bank, alice.id), balance(bank, bob.id)) == (FUNDS, 0)


def test_client_set_risk_fields_are_refused(bank: BankClient, risky: LocalCluster) -> None:
    alice = funded(bank, risky, "shard-1")
    bob = open_on_shard(bank, risky, "shard-1")
    forged = [
        types_pb2.Transfer(id=str(uuid.uuid4()), kind=types_pb2.TRANSFER_KIND_TRANSFER,
                           debit_account_id=alice.id, credit_account_id=bob.id, amount=100, currency="CNY",
                           risk=types_pb2.RiskAssessment(decision=ALLOW)),
        types_pb2.Transfer(id=str(uuid.uuid4()), kind=types_pb2.TRANSFER_KIND_TRANSFER,
                           debit_account_id=alice.id, credit_account_id=bob.id, amount=100, currency="CNY",
                           review_deadline_unix_ms=1),
    ]  # fmt: skip
    for outcome in bank.submit_transfers(forged):
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert outcome.status == types_pb2.TRANSFER_STATUS_REJECTED
    assert balance(bank, alice.id) == FUNDS


def test_structuring_alerts_without_blocking_or_telling_the_customer(
    bank: BankClient, risky: LocalCluster
) -> None:
    alice = funded(bank, risky, "shard-1")
    bob = open_on_shard(bank, risky, "shard-2")
    ids = [str(uuid.uuid4()) for _ in range(3)]
    outcomes = [bank.transfer(alice.id, bob.id, 290_000, "CNY", transfer_id=i) for i in ids]
    assert [o.status for o in outcomes] == [COMMITTED] * 3
    assert alerts_of(risky, ids[0]) == [] and alerts_of(risky, ids[1]) == []
    (alert,) = alerts_of(risky, ids[2])
    assert alert["decision"] == "ALLOW" and alert["aml_typologies"] == ["STRUCTURING"]
    assert bank.get_transfer(ids[2]).risk.rules == ["structuring"]
    assert balance(bank, bob.id) == 3 * 290_000


def test_customer_sees_the_decision_but_not_the_rules(bank: BankClient, risky: LocalCluster) -> None:
    key = bank.create_api_key("customer", "cust-risk-view")
    customer = BankClient(risky.gateway_address, token=key.token)
    try:
        mine = customer.open_account(name="Li Lei", id_number=resident_id(), phone=mobile())
        other = open_on_shard(bank, risky, "shard-1")
        bank.deposit(mine.id, FUNDS, "CNY")
        transfer_id = str(uuid.uuid4())
        with pytest.raises(ShardbankError) as refused:
            customer.transfer(mine.id, other.id, 1_000_000, "CNY", transfer_id=transfer_id)
        assert refused.value.reason == "RISK_BLOCKED"
        seen = customer.get_transfer(transfer_id)
        assert seen.risk.decision == BLOCK
        assert list(seen.risk.rules) == [] and seen.risk.score == 0 and seen.risk.alert_id == ""
        assert list(bank.get_transfer(transfer_id).risk.rules) == ["large_amount", "review_amount"]
    finally:
        customer.close_channel()


def test_velocity_window_survives_a_gateway_kill(bank: BankClient, risky: LocalCluster) -> None:
    alice = funded(bank, risky, "shard-2")
    bob = open_on_shard(bank, risky, "shard-1")
    for _ in range(5):
        assert bank.transfer(alice.id, bob.id, 1_000, "CNY").status == COMMITTED
    risky.kill("gw-1")
    risky.start_component("gw-1")
    client = BankClient(risky.gateway_address, token=risky.admin_token)
    try:
        transfer_id = str(uuid.uuid4())
        with pytest.raises(ShardbankError) as refused:
            client.transfer(alice.id, bob.id, 1_000, "CNY", transfer_id=transfer_id)
        assert refused.value.reason == "RISK_BLOCKED"
        assert list(client.get_transfer(transfer_id).risk.rules) == ["velocity_count_1m"]
        assert balance(client, alice.id) == FUNDS - 5 * 1_000
    finally:
        client.close_channel()
