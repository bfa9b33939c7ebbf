"""Money movement on one shard through the gateway, against real processes."""

from __future__ import annotations

import uuid

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from shardbank.v1 import types_pb2
from tests.factories import resident_id
from tests.integration.helpers import balance, open_account, open_on_shard

pytestmark = pytest.mark.integration

COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED


def test_open_deposit_withdraw_transfer_payment(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-1")
    shop = open_on_shard(client, cluster, "shard-1", account_type="business")
    assert alice.status == types_pb2.ACCOUNT_STATUS_ACTIVE
    assert alice.balance == 0

    assert client.deposit(alice.id, 100_000, "CNY").status == COMMITTED
    assert client.withdraw(alice.id, 10_050, "CNY").status == COMMITTED
    assert client.transfer(alice.id, bob.id, 20_000, "CNY").status == COMMITTED
    assert client.transfer(bob.id, shop.id, 5_000, "CNY", kind="payment").status == COMMITTED

    assert balance(client, alice.id) == 100_000 - 10_050 - 20_000
    assert balance(client, bob.id) == 15_000
    assert balance(client, shop.id) == 5_000


def test_payment_needs_a_merchant(client: BankClient, cluster: LocalCluster) -> None:
    payer = open_on_shard(client, cluster, "shard-2")
    person = open_on_shard(client, cluster, "shard-2")
    client.deposit(payer.id, 1_000, "CNY")
    with pytest.raises(ShardbankError) as refused:
        client.transfer(payer.id, person.id, 100, "CNY", kind="payment")
    assert refused.value.reason == "NOT_A_MERCHANT"
    assert balance(client, payer.id) == 1_000


def test_overdraft_refused_and_nothing_changed(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-1")
    client.deposit(alice.id, 1_000, "CNY")
    with pytest.raises(ShardbankError) as refused:
        client.transfer(alice.id, bob.id, 1_001, "CNY")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "INSUFFICIENT_FUNDS"
    with pytest.raises(ShardbankError) as refused_withdrawal:
        client.withdraw(alice.id, 1_001, "CNY")
    assert refused_withdrawal.value.reason == "INSUFFICIENT_FUNDS"
    assert balance(client, alice.id) == 1_000
    assert balance(client, bob.id) == 0
    history = client.history(alice.id)
    assert [e.transfer.kind for e in history.entries] == [types_pb2.TRANSFER_KIND_DEPOSIT]


def test_idempotent_replay_and_conflict(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-2")
    bob = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 5_000, "CNY")
    transfer_id = str(uuid.uuid4())
    first = client.transfer(alice.id, bob.id, 1_000, "CNY", transfer_id=transfer_id)
    again = client.transfer(alice.id, bob.id, 1_000, "CNY", transfer_id=transfer_id)
    assert first.status == again.status == COMMITTED
    assert balance(client, alice.id) == 4_000
    assert balance(client, bob.id) == 1_000

    with pytest.raises(ShardbankError) as conflict:
        client.transfer(alice.id, bob.id, 999, "CNY", transfer_id=transfer_id)
    assert conflict.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert conflict.value.reason == "TRANSFER_ID_CONFLICT"
    assert balance(client, alice.id) == 4_000

    # A refusal is an outcome too: resent, it fails the same way even after funding.
    refused_id = str(uuid.uuid4())
    with pytest.raises(ShardbankError):
        client.transfer(alice.id, bob.id, 10_000, "CNY", transfer_id=refused_id)
    client.deposit(alice.id, 10_000, "CNY")
    with pytest.raises(ShardbankError) as still_refused:
        client.transfer(alice.id, bob.id, 10_000, "CNY", transfer_id=refused_id)
    assert still_refused.value.reason == "INSUFFICIENT_FUNDS"
    assert client.get_transfer(refused_id).status == ABORTED
    assert balance(client, alice.id) == 14_000


def test_freeze_blocks_debit_and_credit(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-1")
    bob = open_on_shard(client, cluster, "shard-1")
    client.deposit(alice.id, 2_000, "CNY")
    client.deposit(bob.id, 2_000, "CNY")
    frozen = client.freeze(alice.id, reason="suspected fraud")
    assert frozen.status == types_pb2.ACCOUNT_STATUS_FROZEN
    for attempt in (
        lambda: client.transfer(alice.id, bob.id, 100, "CNY"),
        lambda: client.transfer(bob.id, alice.id, 100, "CNY"),
        lambda: client.deposit(alice.id, 100, "CNY"),
        lambda: client.withdraw(alice.id, 100, "CNY"),
    ):
        with pytest.raises(ShardbankError) as refused:
            attempt()
        assert refused.value.reason == "ACCOUNT_FROZEN"
    assert balance(client, alice.id) == 2_000
    assert balance(client, bob.id) == 2_000

    thawed = client.unfreeze(alice.id, reason="cleared")
    assert thawed.status == types_pb2.ACCOUNT_STATUS_ACTIVE
    history = [(c.to_status, c.reason) for c in thawed.status_history]
    assert history[-2:] == [
        (types_pb2.ACCOUNT_STATUS_FROZEN, "suspected fraud"),
        (types_pb2.ACCOUNT_STATUS_ACTIVE, "cleared"),
    ]
    assert all(c.actor and c.at_unix_ms > 0 for c in thawed.status_history)
    assert client.transfer(alice.id, bob.id, 100, "CNY").status == COMMITTED


def test_close_rules(client: BankClient, cluster: LocalCluster) -> None:
    alice = open_on_shard(client, cluster, "shard-2")
    client.deposit(alice.id, 300, "CNY")
    with pytest.raises(ShardbankError) as not_empty:
        client.close(alice.id, reason="customer request")
    assert not_empty.value.reason == "BALANCE_NOT_ZERO"
    client.withdraw(alice.id, 300, "CNY")
    closed = client.close(alice.id, reason="customer request")
    assert closed.status == types_pb2.ACCOUNT_STATUS_CLOSED
    with pytest.raises(ShardbankError) as refused:
        client.deposit(alice.id, 100, "CNY")
    assert refused.value.reason == "ACCOUNT_CLOSED"
    with pytest.raises(ShardbankError):
        client.unfreeze(alice.id, reason="reopen?")
    assert client.get_account(alice.id).status == types_pb2.ACCOUNT_STATUS_CLOSED


def test_history_paging_newest_first(client: BankClient) -> None:
    account = open_account(client)
    amounts = list(range(1, 26))
    for amount in amounts:
        client.deposit(account.id, amount, "CNY")
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = client.history(account.id, page_size=10, page_token=token)
        pages += 1
        seen += [entry.transfer.amount for entry in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(amounts))
    first = client.history(account.id, page_size=1).entries[0]
    assert first.balance_after == sum(amounts)


def test_bad_input_is_refused_precisely(client: BankClient) -> None:
    account = open_account(client)
    client.deposit(account.id, 1_000, "CNY")
    cases = [
        (lambda: client.deposit(account.id, 0, "CNY"), "INVALID_AMOUNT"),
        (lambda: client.deposit(account.id, -5, "CNY"), "INVALID_AMOUNT"),
        (lambda: client.deposit(account.id, 10**15 + 1, "CNY"), "INVALID_AMOUNT"),
        (lambda: client.deposit(account.id, 100, "XXX"), "INVALID_CURRENCY"),
        (lambda: client.deposit(account.id, 100, "USD"), "CURRENCY_MISMATCH"),
        (lambda: client.transfer(account.id, account.id, 100, "CNY"), "SAME_ACCOUNT"),
        (lambda: client.transfer(account.id, 1234567890123456, 100, "CNY"), "INVALID_ACCOUNT_ID"),
        (lambda: client.deposit(account.id, 100, "CNY", transfer_id="not-a-uuid"), "INVALID_TRANSFER_ID"),
    ]
    for call, reason in cases:
        with pytest.raises(ShardbankError) as refused:
            call()
        assert refused.value.reason == reason, reason
    assert balance(client, account.id) == 1_000
    valid = resident_id()
    wrong_check = valid[:17] + ("0" if valid[17] != "0" else "1")
    with pytest.raises(ShardbankError) as bad_id:
        client.open_account(name="Han Meimei", id_number=wrong_check, phone="+8613800000000")
    assert bad_id.value.reason == "INVALID_ID_NUMBER"
    with pytest.raises(ShardbankError) as bad_name:
        client.open_account(name="bad\x07name", id_number=resident_id(), phone="+8613800000000")
    assert bad_name.value.reason == "INVALID_NAME"
