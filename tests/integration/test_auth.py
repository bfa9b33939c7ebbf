"""Authentication, roles, ownership, masking, audit and rate limits against a
real cluster, over HTTP (which goes through the same gRPC interceptor, in
process) and gRPC."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from clients import health
from clients.client import BankClient
from clients.errors import ShardbankError
from clients.local_cluster import LocalCluster
from gateway.auth import audit, keys
from shardbank import meta
from shardbank.v1 import bank_pb2, bank_pb2_grpc
from tests.factories import mobile, resident_id

TIMEOUT_S = 20.0
# Rounds of 200 requests the rate-limit test may send (the burst is 100 at 50/s).
RATE_ROUNDS_MAX = 10
# Sequential gRPC calls that must drain one key's bucket (burst 100, 50/s refill).
RATE_GRPC_CALLS_MAX = 2000


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("auth"), shards=2, coordinators=1)
    try:
        local.start()
        yield local
    finally:
        local.stop()


def http(
    cluster: LocalCluster,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    auth: str | None = None,
) -> Reply:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{cluster.http_address}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return Reply(response.status, json.loads(response.read() or b"null"), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Reply(error.code, json.loads(error.read() or b"null"), dict(error.headers))


def make_key(cluster: LocalCluster, role: str, customer_id: str = "") -> tuple[str, str]:
    reply = http(cluster, "POST", "/v1/keys", cluster.admin_token, {"role": role, "customer_id": customer_id})
    assert reply.status == 201, reply.body
    return reply.body["key"]["key_id"], reply.body["token"]


def open_account(cluster: LocalCluster, token: str, customer_id: str = "", phone: str = "") -> dict[str, Any]:
    holder = {
        "name": "Li Lei",
        "id_type": "ID_DOCUMENT_TYPE_CN_RESIDENT_ID",
        "id_number": resident_id(),
        "phone": phone or mobile(),
        "customer_id": customer_id,
    }
    reply = http(
        cluster,
        "POST",
        "/v1/accounts",
        token,
        {"currency": "CNY", "type": "ACCOUNT_TYPE_PERSONAL", "holder": holder},
    )
    assert reply.status == 201, reply.body
    return dict(reply.body)


def deposit(cluster: LocalCluster, token: str, account_id: str, amount: int) -> Reply:
    body = {
        "id": str(uuid.uuid4()),
        "credit_account_id": account_id,
        "amount": str(amount),
        "currency": "CNY",
    }
    return http(cluster, "POST", "/v1/deposits", token, body)


def transfer(cluster: LocalCluster, token: str, debit: str, credit: str, amount: int) -> Reply:
    body = {
        "id": str(uuid.uuid4()),
        "debit_account_id": debit,
        "credit_account_id": credit,
        "amount": str(amount),
        "currency": "CNY",
    }
    return http(cluster, "POST", "/v1/transfers", token, body)


def test_admin_token_file_is_private_and_reused(cluster: LocalCluster) -> None:
    path = cluster.admin_token_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == cluster.admin_token
    assert keys.parse_token(cluster.admin_token) is not None


def test_missing_invalid_and_revoked_credentials_are_401(cluster: LocalCluster) -> None:
    missing = http(cluster, "GET", "/v1/cluster", None)
    assert missing.status == 401
    assert (missing.body["code"], missing.body["reason"]) == ("UNAUTHENTICATED", "UNAUTHENTICATED")
    for auth in ("Bearer nope", "Basic dXNlcjpwYXNz", f"Bearer {keys.new_token().text}"):
        refused = http(cluster, "GET", "/v1/cluster", None, auth=auth)
        assert refused.status == 401, auth
        assert refused.body["reason"] == "INVALID_CREDENTIALS"
    key_id, token = make_key(cluster, "operator")
    assert http(cluster, "GET", "/v1/cluster", token).status == 200
    revoked = http(cluster, "DELETE", f"/v1/keys/{key_id}", cluster.admin_token)
    assert revoked.status == 200 and revoked.body["revoked"] is True
    after = http(cluster, "GET", "/v1/cluster", token)
    assert after.status == 401 and after.body["reason"] == "INVALID_CREDENTIALS"
    listed = http(cluster, "GET", "/v1/keys", cluster.admin_token).body["keys"]
    assert any(k["key_id"] == key_id and k["revoked"] for k in listed)
    assert all("hash" not in k for k in listed)


def test_grpc_needs_a_token_but_health_does_not(cluster: LocalCluster) -> None:
    assert health.grpc_health(cluster.gateway_address, 2.0) == health.SERVING
    with BankClient(cluster.gateway_address, token="") as bank, pytest.raises(ShardbankError) as refused:
        bank.cluster_info()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with BankClient(cluster.gateway_address, token=cluster.admin_token) as bank:
        assert bank.cluster_info().shards


def test_each_role_is_refused_what_it_must_not_do(cluster: LocalCluster) -> None:
    account = open_account(cluster, cluster.admin_token)
    roles = ("customer", "teller", "risk_officer", "auditor", "operator", "service")
    tokens = {role: make_key(cluster, role, "c-403" if role == "customer" else "")[1] for role in roles}
    freeze = f"/v1/accounts/{account['id']}:freeze"
    one = {"amount": "1", "currency": "CNY"}
    forbidden = [
        ("customer", "POST", "/v1/deposits", {**one, "credit_account_id": account["id"],
                                              "id": str(uuid.uuid4())}),
        ("customer", "POST", freeze, {"reason": "x"}),
        ("teller", "POST", freeze, {"reason": "x"}),
        ("teller", "POST", "/v1/transfers", {**one, "debit_account_id": account["id"],
                                             "credit_account_id": account["id"], "id": str(uuid.uuid4())}),
        ("risk_officer", "POST", "/v1/withdrawals", {**one, "debit_account_id": account["id"],
                                                     "id": str(uuid.uuid4())}),
        ("risk_officer", "POST", f"/v1/accounts/{account['id']}:close", {"reason": "x"}),
        ("auditor", "POST", "/v1/accounts", {"currency": "CNY"}),
        ("auditor", "POST", freeze, {"reason": "x"}),
        ("operator", "GET", "/v1/audit", None),
        ("operator", "GET", f"/v1/accounts/{account['id']}/transfers", None),
        ("service", "POST", "/v1/keys", {"role": "admin"}),
        ("customer", "GET", "/v1/cluster", None),
    ]  # fmt: skip
    for role, method, path, body in forbidden:
        reply = http(cluster, method, path, tokens[role], body)
        assert reply.status == 403, (role, method, path, reply.body)
        assert (reply.body["code"], reply.body["reason"]) == ("PERMISSION_DENIED", "PERMISSION_DENIED")
    assert http(cluster, "GET", f"/v1/accounts/{account['id']}", tokens["risk_officer"]).status == 200
    assert http(cluster, "GET", "/v1/audit", tokens["auditor"]).status == 200


def test_customer_flow_and_isolation(cluster: LocalCluster) -> None:
    _, alice = make_key(cluster, "customer", "alice")
    _, bob = make_key(cluster, "customer", "bob")
    _, teller = make_key(cluster, "teller")
    # The customer_id in the body is ignored: a customer opens for itself.
    own = open_account(cluster, alice, customer_id="bob")
    assert own["holder"]["customer_id"] == "alice"
    bobs = open_account(cluster, bob)
    assert deposit(cluster, teller, own["id"], 10_000).status == 201
    assert deposit(cluster, teller, bobs["id"], 10_000).status == 201
    moved = transfer(cluster, alice, own["id"], bobs["id"], 2_500)
    assert moved.status in (201, 202), moved.body
    # Bob's account does not exist as far as Alice can tell.
    for path in (f"/v1/accounts/{bobs['id']}", f"/v1/accounts/{bobs['id']}/transfers"):
        hidden = http(cluster, "GET", path, alice)
        assert hidden.status == 404 and hidden.body["reason"] == "ACCOUNT_NOT_FOUND", path
    stolen = transfer(cluster, alice, bobs["id"], own["id"], 100)
    assert stolen.status == 404 and stolen.body["reason"] == "ACCOUNT_NOT_FOUND"
    assert http(cluster, "GET", f"/v1/accounts/{own['id']}/transfers", alice).status == 200
    # A transfer is visible to a customer only when one side is theirs.
    _, carol = make_key(cluster, "customer", "carol")
    assert http(cluster, "GET", f"/v1/transfers/{moved.body['id']}", bob).status == 200
    assert http(cluster, "GET", f"/v1/transfers/{moved.body['id']}", carol).status == 404
    balance = http(cluster, "GET", f"/v1/accounts/{bobs['id']}", teller).body["balance"]
    assert balance == "12500"


def test_masking_by_role(cluster: LocalCluster) -> None:
    _, alice = make_key(cluster, "customer", "alice-mask")
    account = open_account(cluster, alice, phone="+8613812345678")
    path = f"/v1/accounts/{account['id']}"
    assert account["holder"]["phone"] == "+86 138****5678"
    for role, masked in (("teller", False), ("auditor", False), ("risk_officer", True), ("operator", True)):
        shown = http(cluster, "GET", path, make_key(cluster, role)[1]).body["holder"]
        assert (shown["phone"] == "+86 138****5678") == masked, role
        assert ("*" in shown["id_number"]) == masked, role
    mine = http(cluster, "GET", path, alice).body["holder"]
    assert "*" in mine["id_number"] and mine["phone"] == "+86 138****5678"


def test_audit_records_privileged_actions_and_the_chain_verifies(cluster: LocalCluster) -> None:
    risk_id, risk = make_key(cluster, "risk_officer")
    account = open_account(cluster, cluster.admin_token)
    frozen = http(cluster, "POST", f"/v1/accounts/{account['id']}:freeze", risk, {"reason": "fraud"})
    assert frozen.status == 200
    again = http(cluster, "POST", f"/v1/accounts/{account['id']}:freeze", risk, {"reason": "twice"})
    assert again.status == 422
    page = http(cluster, "GET", f"/v1/audit?target={account['id']}&page_size=10", cluster.admin_token).body
    records = page["records"]
    actions = [(r["action"], r.get("actor_key_id"), r.get("actor_role"), r.get("code", 0)) for r in records]
    assert actions[0] == ("account.freeze", risk_id, "risk_officer", 9)  # FAILED_PRECONDITION, newest first
    assert records[0]["reason"] == "ACCOUNT_ALREADY_FROZEN"
    assert actions[1] == ("account.freeze", risk_id, "risk_officer", 0)
    assert actions[2][0] == "account.open" and actions[2][2] == "admin"
    assert records[0]["peer"] == "http:127.0.0.1" and records[0]["request_id"]  # the HTTP client
    created = http(cluster, "GET", "/v1/audit?action=key.create&page_size=1000", cluster.admin_token).body
    assert risk_id in {r["target"] for r in created["records"]}
    client = meta.connect(cluster.etcd_endpoint)
    try:
        assert audit.verify_audit_chain(client) >= 4
    finally:
        client.close()


def test_rate_limit_is_429_with_retry_after(cluster: LocalCluster) -> None:
    """Calls refused by role still take from the bucket (the limit comes first),
    so cheap 403s drain it; rounds until the bucket runs dry, bounded."""
    _, token = make_key(cluster, "operator")
    replies: list[Reply] = []
    with ThreadPoolExecutor(16) as pool:
        for _ in range(RATE_ROUNDS_MAX):
            replies += pool.map(lambda _: http(cluster, "GET", "/v1/keys", token), range(200))
            if any(r.status == 429 for r in replies):
                break
    limited = [r for r in replies if r.status == 429]
    assert limited, sorted({r.status for r in replies})
    assert limited[0].body["reason"] == "RATE_LIMITED"
    assert int(limited[0].headers["Retry-After"]) >= 1
    assert {r.status for r in replies} <= {403, 429}


def test_http_and_grpc_share_one_rate_limit_bucket_per_key(cluster: LocalCluster) -> None:
    """The HTTP edge runs the gRPC server's own interceptor in process: a key
    drained over gRPC is limited over HTTP at once (a bucket of its own would
    let all 16 requests through: the burst is 100)."""
    _, token = make_key(cluster, "operator")
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(cluster.gateway_address) as channel:
        stub = bank_pb2_grpc.BankStub(channel)
        for _ in range(RATE_GRPC_CALLS_MAX):
            try:
                stub.ListApiKeys(bank_pb2.ListApiKeysRequest(), metadata=metadata, timeout=TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc
        else:
            pytest.fail(f"not rate limited after {RATE_GRPC_CALLS_MAX} gRPC calls")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: http(cluster, "GET", "/v1/keys", token), range(16)))
    limited = [r for r in replies if r.status == 429]
    assert limited, sorted(r.status for r in replies)
    assert limited[0].body["reason"] == "RATE_LIMITED"
    assert int(limited[0].headers["Retry-After"]) >= 1


def test_teller_cash_movements_are_audited_service_ones_are_journalled(cluster: LocalCluster) -> None:
    teller_id, teller = make_key(cluster, "teller")
    service_id, service = make_key(cluster, "service")
    account = open_account(cluster, cluster.admin_token)
    assert deposit(cluster, teller, account["id"], 500).status == 201
    assert deposit(cluster, service, account["id"], 700).status == 201
    page = http(cluster, "GET", f"/v1/audit?target={account['id']}&page_size=50", cluster.admin_token).body
    cash = [(r["action"], r["actor_key_id"]) for r in page["records"] if r["action"].startswith("money.")]
    assert cash == [("money.deposit", teller_id)]
    assert service_id not in {r["actor_key_id"] for r in page["records"]}
    history = http(cluster, "GET", f"/v1/accounts/{account['id']}/transfers", cluster.admin_token).body
    assert sorted(int(e["transfer"]["amount"]) for e in history["entries"]) == [500, 700]


def test_a_tellers_http_deposit_is_audited_with_the_http_clients_address(cluster: LocalCluster) -> None:
    teller_id, teller = make_key(cluster, "teller")
    account = open_account(cluster, teller)
    body = {"id": str(uuid.uuid4()), "credit_account_id": account["id"], "amount": "5000", "currency": "CNY"}
    assert http(cluster, "POST", "/v1/deposits", teller, body).status == 201
    page = http(cluster, "GET", f"/v1/audit?target={account['id']}&page_size=10", cluster.admin_token).body
    deposits = [r for r in page["records"] if r["action"] == "money.deposit"]
    assert [(r["actor_key_id"], r["peer"]) for r in deposits] == [(teller_id, "http:127.0.0.1")]
