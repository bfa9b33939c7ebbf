"""Review holds end to end on real processes (gRPC and HTTP): a transfer the
gateway's review test hook marks REVIEW is held by 2PC (debit held, credit
pending), then approved (it completes), rejected (hold released) or left to
expire (recovery releases it), with the books balancing throughout; a
gateway or coordinator leader killed with -9 while transfers wait loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from clients import cli
from clients.client import AsyncBankClient, BankClient
from clients.errors import NotFound, ShardbankError
from clients.local_cluster import LocalCluster
from gateway.auth.audit import AuditLog
from gateway.review.desk import ReviewConfig, ReviewDesk
from gateway.review.store import AlertStore
from gateway.upstream import Cluster
from shardbank import errors, ids, meta, moves, service_auth
from shardbank.slots import slot_of
from shardbank.v1 import ledger_pb2, risk_pb2, types_pb2
from tests.integration import moves_support
from tests.integration.helpers import open_on_shard, slot_map
from tests.integration.http_support import Api

REVIEW_MIN = 100_000  # minor units: the hook holds transfers of at least this
FUNDS = 1_000_000
PENDING = types_pb2.TRANSFER_STATUS_PENDING
COMMITTED = types_pb2.TRANSFER_STATUS_COMMITTED
ABORTED = types_pb2.TRANSFER_STATUS_ABORTED
WAIT_S_MAX = 40.0


def review_args(deadline_ms: int) -> list[str]:
    return ["--review-test-rule", f"amount>={REVIEW_MIN}", "--review-deadline-ms", str(deadline_ms)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        tmp_path_factory.mktemp("review"), shards=2, coordinators=2, gateway_args=review_args(300_000)
    )
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[BankClient]:
    with BankClient(cluster.gateway_address, token=cluster.admin_token) as bank:
        yield bank


def key_client(cluster: LocalCluster, admin: BankClient, role: str, customer_id: str = "") -> BankClient:
    token = admin.create_api_key(role, customer_id).token
    return BankClient(cluster.gateway_address, token=token)


@pytest.fixture(scope="module")
def officer(cluster: LocalCluster, admin: BankClient) -> Iterator[BankClient]:
    with key_client(cluster, admin, "risk_officer") as bank:
        yield bank


def funded_pair(
    admin: BankClient, cluster: LocalCluster, debit_shard: str, credit_shard: str
) -> tuple[int, int]:
    a = open_on_shard(admin, cluster, debit_shard).id
    b = open_on_shard(admin, cluster, credit_shard).id
    admin.deposit(a, FUNDS, "CNY")
    return a, b


def books(admin: BankClient, cluster: LocalCluster) -> int:
    """Sum of every balance in CNY: each shard's cash account and every customer account the tests opened."""
    total = 0
    for shard_id in slot_map(cluster).shard_ids():
        cash = ids.system_account_id(int(shard_id.split("-")[1]), "CNY")
        with contextlib.suppress(NotFound):  # a cash account opens on its shard's first deposit
            total += admin.get_account(cash).balance
    for account_id in OPENED:
        total += admin.get_account(account_id).balance
    return total


OPENED: list[int] = []


def state(admin: BankClient, account_id: int) -> tuple[int, int, int, int]:
    account = admin.get_account(account_id)
    return account.balance, account.held, account.available, account.pending_credit


def hold(admin: BankClient, a: int, b: int, amount: int = 200_000) -> types_pb2.Transfer:
    OPENED.extend(x for x in (a, b) if x not in OPENED)
    held = admin.transfer(a, b, amount, "CNY", transfer_id=str(uuid.uuid4()))
    assert (held.status, held.code, held.reason) == (PENDING, 0, errors.UNDER_REVIEW), held
    assert held.review_deadline_unix_ms > 0 and held.risk.alert_id
    return held


def refused(call: object) -> ShardbankError:
    with pytest.raises(ShardbankError) as caught:
        call()  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize("credit_shard", ["shard-2", "shard-1"], ids=["cross-shard", "same-shard"])
def test_approve_completes_the_held_transfer(
    cluster: LocalCluster, admin: BankClient, officer: BankClient, credit_shard: str
) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", credit_shard)
    held = hold(admin, a, b)
    # During review: the money is held, the customer cannot spend it, the books balance.
    assert state(admin, a) == (FUNDS, 200_000, FUNDS - 200_000, 0)
    assert state(admin, b) == (0, 0, 0, 200_000)
    assert books(admin, cluster) == 0
    assert refused(lambda: admin.withdraw(a, FUNDS - 100_000, "CNY")).reason == errors.INSUFFICIENT_FUNDS
    assert admin.get_transfer(held.id).reason == errors.UNDER_REVIEW

    done = officer.review_transfer(held.id, approve=True, note="customer called back")
    assert done.transfer.status == COMMITTED and done.alert_id == held.risk.alert_id
    assert state(admin, a) == (FUNDS - 200_000, 0, FUNDS - 200_000, 0)
    assert state(admin, b) == (200_000, 0, 200_000, 0)
    assert books(admin, cluster) == 0
    assert admin.get_transfer(held.id).status == COMMITTED
    # Idempotent; the other decision on a final one is refused with the reason.
    assert officer.review_transfer(held.id, approve=True).transfer.status == COMMITTED
    assert refused(lambda: officer.review_transfer(held.id, approve=False)).reason == errors.REVIEW_APPROVED
    assert state(admin, b)[0] == 200_000
    alert = officer.get_alert(held.risk.alert_id)
    assert (alert.review_state, alert.note, alert.transfer_id) == (
        "APPROVED",
        "customer called back",
        held.id,
    )
    assert alert.actor.startswith("risk_officer:")
    audit = admin.list_audit(action="risk.review.approve", target=held.id)
    assert [r.actor_role for r in audit.records if r.code == 0] == ["risk_officer", "risk_officer"]


def test_reject_releases_the_hold(cluster: LocalCluster, admin: BankClient, officer: BankClient) -> None:
    a, b = funded_pair(admin, cluster, "shard-2", "shard-1")
    held = hold(admin, a, b, 300_000)
    assert state(admin, a)[1] == 300_000
    done = officer.review_transfer(held.id, approve=False, note="mule account")
    assert (done.transfer.status, done.transfer.reason) == (ABORTED, errors.RISK_REJECTED)
    assert state(admin, a) == (FUNDS, 0, FUNDS, 0)
    assert state(admin, b) == (0, 0, 0, 0)
    assert books(admin, cluster) == 0
    assert officer.review_transfer(held.id, approve=False).transfer.reason == errors.RISK_REJECTED
    assert refused(lambda: officer.review_transfer(held.id, approve=True)).reason == errors.RISK_REJECTED
    assert officer.get_alert(held.risk.alert_id).review_state == "REJECTED"
    # The same id resent is the same (final) outcome: nothing moves.
    resent = types_pb2.Transfer(
        id=held.id, kind=held.kind, debit_account_id=a, credit_account_id=b, amount=300_000, currency="CNY"
    )
    again = admin.submit_transfers([resent])
    assert (again[0].status, again[0].reason) == (ABORTED, errors.RISK_REJECTED)
    assert state(admin, a)[0] == FUNDS


def test_an_account_frozen_during_review_is_not_moved_by_approval(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
    held = hold(admin, a, b)
    officer.freeze(b, "fraud report")
    frozen = refused(lambda: officer.review_transfer(held.id, approve=True))
    assert (frozen.code, frozen.reason) == (grpc.StatusCode.FAILED_PRECONDITION, errors.ACCOUNT_FROZEN)
    assert state(admin, a)[1] == 200_000 and state(admin, b)[3] == 200_000
    assert officer.review_transfer(held.id, approve=False).transfer.reason == errors.RISK_REJECTED
    assert state(admin, a) == (FUNDS, 0, FUNDS, 0) and state(admin, b) == (0, 0, 0, 0)
    officer.unfreeze(b, "cleared")


def test_small_transfers_are_not_held(cluster: LocalCluster, admin: BankClient, officer: BankClient) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
    OPENED.extend((a, b))
    done = admin.transfer(a, b, REVIEW_MIN - 1, "CNY")
    assert done.status == COMMITTED and not done.review_deadline_unix_ms
    refusal = refused(lambda: officer.review_transfer(done.id, approve=True))
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.FAILED_PRECONDITION, errors.NOT_UNDER_REVIEW)


def test_customer_sees_pending_under_review_and_no_rule(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    with key_client(cluster, admin, "customer", "cust-review") as customer:
        own = customer.open_account("Li Lei", "11010519491231002X", "+8613812345678")
        other = open_on_shard(admin, cluster, "shard-2").id
        OPENED.extend((own.id, other))
        admin.deposit(own.id, FUNDS, "CNY")
        held = customer.transfer(own.id, other, 150_000, "CNY")
        assert (held.status, held.reason) == (PENDING, errors.UNDER_REVIEW)
        # The decision alone: no rules, score or alert id for the customer.
        decision_only = types_pb2.RiskAssessment(decision=types_pb2.RISK_DECISION_REVIEW)
        assert held.risk == decision_only
        seen = customer.get_transfer(held.id)
        assert (seen.status, seen.reason, seen.risk) == (PENDING, errors.UNDER_REVIEW, decision_only)
        assert list(admin.get_transfer(held.id).risk.rules) == ["test_review_rule"]
        alert = officer.get_alert(admin.get_transfer(held.id).risk.alert_id)
        assert (alert.customer_id, alert.account_id, alert.amount) == ("cust-review", own.id, 150_000)
        officer.review_transfer(held.id, approve=True)
        assert customer.get_transfer(held.id).status == COMMITTED
        page = customer.history(own.id)
        risks = [e.transfer.risk for e in page.entries]
        assert risks and not any(r.rules or r.score or r.alert_id for r in risks)


def test_permissions_and_bad_input_over_grpc(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
    held = hold(admin, a, b)
    with (
        key_client(cluster, admin, "teller") as teller,
        key_client(cluster, admin, "customer", "c-1") as cust,
    ):
        for caller in (teller, cust):
            denied = refused(lambda c=caller: c.review_transfer(held.id, approve=True))  # type: ignore[misc]
            assert denied.code == grpc.StatusCode.PERMISSION_DENIED
            assert refused(lambda c=caller: c.list_alerts()).code == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[misc]
    # A risk officer does not move money.
    assert refused(lambda: officer.transfer(a, b, 10, "CNY")).code == grpc.StatusCode.PERMISSION_DENIED
    assert refused(lambda: officer.deposit(a, 10, "CNY")).code == grpc.StatusCode.PERMISSION_DENIED
    bad = {
        "transfer id": (lambda: officer.review_transfer("not-a-uuid", True), errors.INVALID_TRANSFER_ID),
        "note": (lambda: officer.review_transfer(held.id, True, "x" * 501), "INVALID_NOTE"),
        "page size": (lambda: officer.list_alerts(page_size=501), errors.INVALID_PAGE_SIZE),
        "page token": (lambda: officer.list_alerts(page_token="bogus"), errors.INVALID_PAGE_TOKEN),
        "status filter": (lambda: officer.list_alerts(status="CLOSED"), "INVALID_FILTER"),
        "alert id": (lambda: officer.get_alert("1-2"), "INVALID_ALERT_ID"),
        "resolve without note": (lambda: officer.resolve_alert(held.risk.alert_id, ""), "INVALID_NOTE"),
    }
    for what, (call, reason) in bad.items():
        error = refused(call)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason), what
    missing = refused(lambda: officer.review_transfer(str(uuid.uuid4()), True))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, errors.TRANSFER_NOT_FOUND)
    # Nothing above changed the hold.
    assert state(admin, a)[1] == 200_000
    officer.review_transfer(held.id, approve=False)


def test_alerts_list_ack_resolve_and_review_over_http(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    a, b = funded_pair(admin, cluster, "shard-2", "shard-2")
    held = hold(admin, a, b)
    officer_token = admin.create_api_key("risk_officer").token
    api = Api(f"http://{cluster.http_address}", officer_token)
    listed = api.ok(api.get(f"/v1/risk/alerts?account_id={a}&status=OPEN&page_size=10"))
    (alert,) = listed["alerts"]
    assert (alert["transfer_id"], alert["review_state"], alert["decision"]) == (held.id, "PENDING", "REVIEW")
    alert_id = alert["alert_id"]
    acked = api.ok(api.post(f"/v1/risk/alerts/{alert_id}:acknowledge", {"note": "looking"}))
    assert acked["status"] == "ACKNOWLEDGED"
    reply = api.post(
        f"/v1/risk/transfers/{held.id}:review", {"action": "REVIEW_ACTION_APPROVE", "note": "ok"}
    )
    body = api.ok(reply)
    assert body["transfer"]["status"] == "TRANSFER_STATUS_COMMITTED" and body["alert_id"] == alert_id
    resolved = api.ok(api.post(f"/v1/risk/alerts/{alert_id}:resolve", {"note": "approved after call"}))
    assert (resolved["status"], resolved["review_state"]) == ("RESOLVED", "APPROVED")
    again = api.post(f"/v1/risk/alerts/{alert_id}:resolve", {"note": "twice"})
    assert (again.status, again.reason) == (422, "ALERT_RESOLVED")
    assert state(admin, b)[0] == 200_000
    # Precise 400s, and 403 for roles that may not.
    for path, expected in (
        ("/v1/risk/alerts?page_size=501", errors.INVALID_PAGE_SIZE),
        ("/v1/risk/alerts?status=NOPE", "INVALID_FILTER"),
        ("/v1/risk/alerts/123", "INVALID_ALERT_ID"),
    ):
        got = api.get(path)
        assert (got.status, got.reason) == (400, expected), got.describe()
    bad_action = api.post(f"/v1/risk/transfers/{held.id}:review", {"action": "REVIEW_ACTION_UNSPECIFIED"})
    assert (bad_action.status, bad_action.reason) == (400, errors.INVALID_ACTION), bad_action.describe()
    teller = Api(f"http://{cluster.http_address}", admin.create_api_key("teller").token)
    assert (
        teller.post(f"/v1/risk/transfers/{held.id}:review", {"action": "REVIEW_ACTION_REJECT"}).status == 403
    )
    money = {"debit_account_id": str(a), "credit_account_id": str(b), "amount": "1", "currency": "CNY"}
    moved = api.post("/v1/transfers", money, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert (moved.status, moved.reason) == (403, "PERMISSION_DENIED")
    assert "/v1/risk/alerts" in api.ok(api.get("/openapi.json"))["paths"]


def test_cli_lists_alerts_and_reviews(
    cluster: LocalCluster, admin: BankClient, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
    held = hold(admin, a, b)
    token = admin.create_api_key("risk_officer").token
    common = ["--gateway", cluster.gateway_address, "--token", token]
    assert cli.main(["risk", "alerts", "--account", str(a), "--status", "OPEN", "--json", *common]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [x["transfer_id"] for x in listed["alerts"]] == [held.id]
    alert_id = listed["alerts"][0]["alert_id"]
    assert cli.main(["risk", "ack", alert_id, *common]) == 0
    assert "ACKNOWLEDGED" in capsys.readouterr().out
    assert cli.main(["risk", "review", held.id, "--reject", "--note", "no", *common]) == 0
    assert "RISK_REJECTED" in capsys.readouterr().out
    assert cli.main(["risk", "review", held.id, "--approve", *common]) == 1
    assert "FAILED_PRECONDITION RISK_REJECTED" in capsys.readouterr().err
    assert cli.main(["risk", "resolve", alert_id, "--note", "rejected: mule", *common]) == 0
    assert "RESOLVED" in capsys.readouterr().out
    assert state(admin, a) == (FUNDS, 0, FUNDS, 0)


def test_async_client_lists_and_reviews(cluster: LocalCluster, admin: BankClient) -> None:
    a, b = funded_pair(admin, cluster, "shard-2", "shard-1")
    held = hold(admin, a, b)
    token = admin.create_api_key("risk_officer").token

    async def review() -> tuple[risk_pb2.ListAlertsResponse, risk_pb2.ReviewTransferResponse]:
        async with AsyncBankClient(cluster.gateway_address, token=token) as bank:
            return await bank.list_alerts(account_id=a), await bank.review_transfer(held.id, approve=False)

    page, done = asyncio.run(review())
    assert [x.transfer_id for x in page.alerts] == [held.id]
    assert (done.transfer.status, done.transfer.reason) == (ABORTED, errors.RISK_REJECTED)
    assert state(admin, a) == (FUNDS, 0, FUNDS, 0)


def test_freeze_on_severe_freezes_and_audits_as_the_risk_engine(
    cluster: LocalCluster, admin: BankClient
) -> None:
    account = open_on_shard(admin, cluster, "shard-2").id

    async def freeze(enabled: bool) -> ledger_pb2.AccountResult | None:
        upstream = Cluster(
            cluster.etcd_endpoint, service_auth.channel_interceptors(cluster.cluster_secret, "risk-test")
        )
        await upstream.start()
        audit_log = AuditLog(cluster.etcd_endpoint)
        try:
            desk = ReviewDesk(
                upstream, AlertStore(cluster.etcd_endpoint), ReviewConfig(freeze_on_severe=enabled), audit_log
            )
            return await desk.freeze_on_severe(account, "funnel_pass_through")
        finally:
            audit_log.close()
            await upstream.close()

    assert asyncio.run(freeze(enabled=False)) is None
    assert admin.get_account(account).status == types_pb2.ACCOUNT_STATUS_ACTIVE
    result = asyncio.run(freeze(enabled=True))
    assert result is not None and result.code == 0
    frozen = admin.get_account(account)
    assert frozen.status == types_pb2.ACCOUNT_STATUS_FROZEN
    assert (frozen.status_history[-1].actor, frozen.status_history[-1].reason) == (
        "risk-engine",
        "risk rule funnel_pass_through",
    )
    records = admin.list_audit(action="account.freeze", target=str(account)).records
    assert [(r.actor_key_id, r.reason) for r in records] == [("risk-engine", "funnel_pass_through")]


def _wait_leader(cluster: LocalCluster, other_than: str = "") -> meta.Leader:
    deadline = time.monotonic() + WAIT_S_MAX
    client = meta.connect(cluster.etcd_endpoint)
    try:
        while time.monotonic() < deadline:
            leader = meta.read_leader(client)
            if leader is not None and leader.coordinator_id != other_than:
                return leader
            time.sleep(0.2)
    finally:
        client.close()
    raise AssertionError("no coordinator leader elected")


def test_gateway_kill_9_loses_no_held_transfer(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
    held = [hold(admin, a, b, 100_000 + i) for i in range(3)]
    cluster.kill("gw-1")
    cluster.start_component("gw-1")
    pending = officer.list_alerts(account_id=a, page_size=10)
    assert sorted(x.transfer_id for x in pending.alerts if x.review_state == "PENDING") == sorted(
        h.id for h in held
    )
    officer.review_transfer(held[0].id, approve=True)
    officer.review_transfer(held[1].id, approve=False)
    officer.review_transfer(held[2].id, approve=False)
    assert state(admin, a) == (FUNDS - 100_000, 0, FUNDS - 100_000, 0)
    assert state(admin, b)[0] == 100_000
    assert books(admin, cluster) == 0


def test_coordinator_leader_killed_during_review(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    a, b = funded_pair(admin, cluster, "shard-2", "shard-1")
    held = hold(admin, a, b)
    leader = _wait_leader(cluster)
    cluster.kill(leader.coordinator_id)
    _wait_leader(cluster, other_than=leader.coordinator_id)
    # The new leader finds the hold still waiting (not presumed abandoned) and honours the approval.
    assert admin.get_transfer(held.id).status == PENDING
    done = officer.review_transfer(held.id, approve=True)
    assert done.transfer.status == COMMITTED
    assert state(admin, b)[0] == 200_000 and books(admin, cluster) == 0
    cluster.start_component(leader.coordinator_id)


# --------------------------------------------------------------------- deadline


@pytest.fixture
def short_review_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path, shards=2, coordinators=2, gateway_args=review_args(6_000))
    try:
        local.start()
        yield local
    finally:
        local.stop()


def test_review_deadline_releases_the_hold_even_across_leader_failover(
    short_review_cluster: LocalCluster,
) -> None:
    cluster = short_review_cluster
    with BankClient(cluster.gateway_address, token=cluster.admin_token) as admin:
        a, b = funded_pair(admin, cluster, "shard-1", "shard-2")
        c = open_on_shard(admin, cluster, "shard-1").id
        first = admin.transfer(a, b, 200_000, "CNY")
        second = admin.transfer(a, c, 300_000, "CNY")
        assert first.reason == second.reason == errors.UNDER_REVIEW
        info = {s.shard_id: s.info for s in admin.cluster_info().shards}
        # Waiting on purpose: review holds, not in doubt.
        assert sum(i.review_holds for i in info.values()) == 4
        assert sum(i.in_doubt_legs for i in info.values()) == 0
        leader = _wait_leader(cluster)
        cluster.kill(leader.coordinator_id)
        deadline = time.monotonic() + WAIT_S_MAX
        while time.monotonic() < deadline:
            outcomes = [admin.get_transfer(t.id) for t in (first, second)]
            if all(o.status == ABORTED for o in outcomes):
                break
            time.sleep(0.5)
        assert [(o.status, o.reason) for o in outcomes] == [(ABORTED, errors.REVIEW_EXPIRED)] * 2
        assert state(admin, a) == (FUNDS, 0, FUNDS, 0)
        assert state(admin, b) == state(admin, c) == (0, 0, 0, 0)
        late = refused(lambda: admin.review_transfer(first.id, approve=True))
        assert (late.code, late.reason) == (grpc.StatusCode.FAILED_PRECONDITION, errors.REVIEW_EXPIRED)
        assert admin.get_alert(first.risk.alert_id).review_state == "EXPIRED"
        listed = admin.list_alerts(decision="REVIEW", page_size=10)
        assert {x.transfer_id for x in listed.alerts} == {first.id, second.id}
        assert all(x.review_state == "EXPIRED" for x in listed.alerts)
        assert isinstance(listed, risk_pb2.ListAlertsResponse)


def test_a_review_hold_moves_with_its_slot_and_is_approved_on_the_new_shard(
    cluster: LocalCluster, admin: BankClient, officer: BankClient
) -> None:
    """A hold waits on purpose (up to a day): a slot move must not wait for it
    nor lose it. The PREPARED record and its held money move with the debit
    account, still not in doubt, and the officer's approval lands on the new
    owner."""
    debit, credit = funded_pair(admin, cluster, "shard-1", "shard-2")
    OPENED.extend((debit, credit))
    total = books(admin, cluster)
    held = admin.transfer(debit, credit, REVIEW_MIN, "CNY")
    assert (held.status, held.reason) == (PENDING, errors.UNDER_REVIEW)
    move = moves_support.move_and_wait(cluster, [slot_of(debit)], "shard-2", 90.0)
    assert move.phase == moves.COMPLETED, move
    assert slot_map(cluster).owners[slot_of(debit)] == "shard-2"
    assert state(admin, debit)[:2] == (FUNDS, REVIEW_MIN)  # (balance, held) as before the move
    assert admin.get_transfer(held.id).reason == errors.UNDER_REVIEW
    officer.review_transfer(held.id, approve=True, note="moved, then approved")
    assert admin.get_transfer(held.id).status == COMMITTED
    assert state(admin, debit)[:2] == (FUNDS - REVIEW_MIN, 0)
    assert admin.get_account(credit).balance == REVIEW_MIN
    assert books(admin, cluster) == total
