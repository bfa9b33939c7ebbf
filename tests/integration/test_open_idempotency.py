"""Opening an account is safe to retry: an idempotency key makes a resend
after a lost reply return the account the first try opened.

The account id is derived from (the caller's API key, the idempotency key),
so the retry lands on the same shard with the same id, and the node answers
"same id, same body" with the first outcome, writing nothing.
"""

from __future__ import annotations

import uuid

import grpc
import pytest

from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from shardbank import errors
from tests.factories import mobile, resident_id
from tests.integration.http_support import Api

pytestmark = pytest.mark.integration


def _journal_seqs(client: BankClient) -> dict[str, int]:
    return {s.shard_id: s.info.journal_seq for s in client.cluster_info().shards}


def _open(client: BankClient, id_number: str, phone: str, key: str, currency: str = "CNY") -> int:
    account = client.open_account("Wang Fang", id_number, phone, currency, idempotency_key=key)
    return int(account.id)


def test_same_key_same_body_is_the_same_account_and_writes_nothing(client: BankClient) -> None:
    key, id_number, phone = f"open-{uuid.uuid4().hex}", resident_id(), mobile()
    first = _open(client, id_number, phone, key)
    seqs = _journal_seqs(client)
    assert _open(client, id_number, phone, key) == first
    assert _journal_seqs(client) == seqs, "a replayed opening wrote to a journal"
    assert client.get_account(first).holder.name == "Wang Fang"


def test_same_key_another_body_is_refused_and_writes_nothing(client: BankClient) -> None:
    key, id_number, phone = f"open-{uuid.uuid4().hex}", resident_id(), mobile()
    first = _open(client, id_number, phone, key)
    seqs = _journal_seqs(client)
    with pytest.raises(ShardbankError) as refused:
        _open(client, id_number, phone, key, currency="USD")
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.ALREADY_EXISTS, errors.ACCOUNT_EXISTS
    )  # fmt: skip
    assert "idempotency key" in refused.value.message
    assert _journal_seqs(client) == seqs
    assert client.get_account(first).currency == "CNY"


def test_the_key_is_scoped_to_the_callers_api_key(cluster: LocalCluster, client: BankClient) -> None:
    teller = BankClient(cluster.gateway_address, token=client.create_api_key("teller").token)
    try:
        key, id_number, phone = f"open-{uuid.uuid4().hex}", resident_id(), mobile()
        assert _open(client, id_number, phone, key) != _open(teller, id_number, phone, key)
    finally:
        teller.close_channel()


def test_without_a_key_each_call_opens_a_new_account(client: BankClient) -> None:
    id_number, phone = resident_id(), mobile()
    first = client.open_account("Wang Fang", id_number, phone)
    second = client.open_account("Wang Fang", id_number, phone)
    assert first.id != second.id  # each call gets its own fresh key


def test_bad_key_is_refused_before_anything_is_written(client: BankClient) -> None:
    seqs = _journal_seqs(client)
    with pytest.raises(ShardbankError) as refused:
        _open(client, resident_id(), mobile(), "no spaces allowed")
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT, errors.INVALID_IDEMPOTENCY_KEY
    )  # fmt: skip
    assert _journal_seqs(client) == seqs


def test_http_body_key_replays_the_opening(cluster: LocalCluster) -> None:
    api = Api.of(cluster)
    body = {
        "currency": "CNY",
        "type": "ACCOUNT_TYPE_PERSONAL",
        "idempotency_key": f"http-{uuid.uuid4().hex}",
        "holder": {
            "name": "Zhao Lei",
            "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
            "id_number": resident_id(),
            "phone": mobile(),
        },
    }
    first, again = api.post("/v1/accounts", body), api.post("/v1/accounts", body)
    assert first.status in (200, 201) and again.status == first.status, (first.describe(), again.describe())
    assert first.body["id"] == again.body["id"], (first.body, again.body)
