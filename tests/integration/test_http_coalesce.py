"""Concurrent single-transfer HTTP requests against a real cluster: whether or
not the edge puts some of them in one `SubmitTransfers` call
(gateway.http.coalesce), each must get exactly the answer it would get alone.

Several callers (admin, a teller whose role may deposit but not transfer, an
auditor who may not submit at all) send at once, with an insufficient-funds
transfer, a replayed id, a conflicting id and malformed bodies among good
ones; then the balances must show that exactly the accepted transfers moved.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from clients.local_cluster import LocalCluster
from tests.integration.http_support import Api, Reply, assert_clean_json_error, start_cluster

pytestmark = pytest.mark.integration

# Requests in flight at once: enough that several wait behind one another.
THREADS = 24
# Good admin transfers in the burst, each of AMOUNT.
GOOD_TRANSFERS = 20
AMOUNT = 100
FUNDED = 100_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from start_cluster(tmp_path_factory, "http-coalesce")


@dataclass(frozen=True)
class Sent:
    token: str
    path: str
    body: Any
    request_id: str


def _key(api: Api, role: str) -> str:
    reply = api.ok(api.post("/v1/keys", {"role": role}), 201)
    return str(reply["token"])


def _transfer(debit: str, credit: str, amount: int, transfer_id: str | None = None) -> dict[str, Any]:
    return {
        "id": transfer_id or str(uuid.uuid4()),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": str(amount),
        "currency": "CNY",
    }


def _send(api: Api, sent: Sent) -> Reply:
    caller = Api(api.base, sent.token)
    headers = {"X-Request-Id": sent.request_id}
    if isinstance(sent.body, bytes):
        return caller.post(sent.path, raw=sent.body, headers=headers)
    return caller.post(sent.path, sent.body, headers=headers)


def _burst(api: Api, requests: list[Sent]) -> list[Reply]:
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda s: _send(api, s), requests))


def test_concurrent_single_transfers_each_get_their_own_answer(cluster: LocalCluster) -> None:
    api = Api.of(cluster)
    assert api.token is not None
    teller, auditor = _key(api, "teller"), _key(api, "auditor")
    # Business accounts: the repository's risk rules hold a personal account's
    # 11th transfer in a minute for review (202), which is not this test's subject.
    payer, payee, broke, teller_side = (
        str(api.open_account(account_type="ACCOUNT_TYPE_BUSINESS")["id"]) for _ in range(4)
    )
    api.deposit(payer, FUNDED)
    replayed = _transfer(payer, payee, 7)
    api.ok(api.post("/v1/transfers", replayed), 201)
    before = {a: api.balance(a) for a in (payer, payee, broke, teller_side)}

    def sent(token: str, path: str, body: Any) -> Sent:
        return Sent(token, path, body, f"coalesce-{uuid.uuid4().hex}")

    good = [sent(api.token, "/v1/transfers", _transfer(payer, payee, AMOUNT)) for _ in range(GOOD_TRANSFERS)]
    no_funds = sent(api.token, "/v1/transfers", _transfer(broke, payee, AMOUNT))
    replay = sent(api.token, "/v1/transfers", replayed)
    conflict = sent(api.token, "/v1/transfers", _transfer(payer, payee, 8, replayed["id"]))
    malformed = sent(api.token, "/v1/transfers", {**_transfer(payer, payee, AMOUNT), "amount": "1.5"})
    not_json = sent(api.token, "/v1/transfers", b'{"id": ')
    teller_deposit = sent(teller, "/v1/deposits", {"id": str(uuid.uuid4()), "credit_account_id": teller_side,
                                                   "amount": "300", "currency": "CNY"})  # fmt: skip
    teller_transfer = sent(teller, "/v1/transfers", _transfer(payer, payee, AMOUNT))
    auditor_transfers = [sent(auditor, "/v1/transfers", _transfer(payer, payee, AMOUNT)) for _ in range(3)]
    requests = [*good, no_funds, replay, conflict, malformed, not_json, teller_deposit, teller_transfer]
    requests += auditor_transfers
    # Interleave callers so that any lane's queue has others' requests around it.
    order = sorted(range(len(requests)), key=lambda i: (i * 7) % len(requests))
    replies = dict(zip(order, _burst(api, [requests[i] for i in order]), strict=True))
    answer = {id(requests[i]): reply for i, reply in replies.items()}

    for request in requests:
        reply = answer[id(request)]
        assert reply.headers.get("X-Request-Id") == request.request_id, reply.describe()
    for request in good:
        reply = answer[id(request)]
        assert reply.status == 201, reply.describe()
        assert reply.body["id"] == request.body["id"] and reply.body["amount"] == str(AMOUNT)
        assert reply.body["status"] == "TRANSFER_STATUS_COMMITTED"
        assert reply.headers["Location"] == f"/v1/transfers/{request.body['id']}"

    def refused(request: Sent, status: int, reason: str) -> dict[str, Any]:
        reply = answer[id(request)]
        assert reply.status == status and reply.reason == reason, reply.describe()
        assert_clean_json_error(reply)
        assert reply.body["details"]["request_id"] == request.request_id
        return dict(reply.body)

    funds = refused(no_funds, 422, "INSUFFICIENT_FUNDS")
    assert funds["details"]["transfer_id"] == no_funds.body["id"]
    assert answer[id(replay)].status == 201 and answer[id(replay)].body["amount"] == "7"
    refused(conflict, 409, "TRANSFER_ID_CONFLICT")
    refused(malformed, 400, "INVALID_BODY")
    refused(not_json, 400, "MALFORMED_JSON")
    assert answer[id(teller_deposit)].status == 201, answer[id(teller_deposit)].describe()
    refused(teller_transfer, 403, "PERMISSION_DENIED")
    for request in auditor_transfers:
        refused(request, 403, "PERMISSION_DENIED")

    moved = GOOD_TRANSFERS * AMOUNT
    assert api.balance(payer) == before[payer] - moved
    assert api.balance(payee) == before[payee] + moved
    assert api.balance(broke) == before[broke]
    assert api.balance(teller_side) == before[teller_side] + 300
