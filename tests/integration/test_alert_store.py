"""The alert store (`shardbank.alerts`) against a real etcd: the shared
schema, filters, pagination, acknowledge/resolve and concurrent resolves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import etcd3
import grpc
import pytest

from clients.local_cluster import LocalCluster
from gateway.risk.alerts import EtcdAlerts
from shardbank import alerts, meta
from shardbank.errors import BankError

BASE_MS = 1_760_000_000_000


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """etcd alone."""
    local = LocalCluster(tmp_path_factory.mktemp("alerts"), shards=0, coordinators=0, gateway=False)
    try:
        local.start()
        yield local.etcd_endpoint
    finally:
        local.stop()


@pytest.fixture(scope="module")
def etcd(endpoint: str) -> Iterator[etcd3.Etcd3Client]:
    client = meta.connect(endpoint)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def empty(etcd: etcd3.Etcd3Client) -> None:
    etcd.delete_prefix(alerts.ALERTS)


def alert(at_ms: int, **changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "alert_id": alerts.new_alert_id(at_ms),
        "created_at_unix_ms": at_ms,
        "updated_at_unix_ms": at_ms,
        "transfer_id": "0b6f1c1e-6a57-4c8e-9d0a-3f6c2b1d9e42",
        "transfer_kind": "TRANSFER",
        "debit_account_id": 6222020000000015,
        "credit_account_id": 6222020000000023,
        "customer_id": "cust-1",
        "account_id": 6222020000000015,
        "amount": 5_000_000,
        "currency": "CNY",
        "decision": "REVIEW",
        "score": 70,
        "rules": ["large_amount"],
        "aml_typologies": [],
        "severity": "MEDIUM",
        "status": "OPEN",
        "actor": "risk-engine",
        "note": "",
        "review_state": "",
        "review_deadline_unix_ms": 0,
    }
    value.update(changes)
    return value


def refusal(call: Any) -> BankError:
    with pytest.raises(BankError) as caught:
        call()
    return caught.value


def test_create_get_and_the_schema_is_enforced(etcd: etcd3.Etcd3Client) -> None:
    stored = alerts.create(etcd, alert(BASE_MS))
    got, revision = alerts.get(etcd, stored["alert_id"])
    assert got == stored and revision > 0
    assert sorted(got) == sorted(alerts.FIELDS)
    assert refusal(lambda: alerts.create(etcd, stored)).reason == alerts.ALERT_EXISTS
    for bad in (
        {"decision": "MAYBE"},
        {"amount": 1.5},
        {"amount": 0},
        {"rules": ["Not A Rule!"]},
        {"status": "CLOSED"},
        {"note": "x" * 501},
    ):
        assert refusal(lambda b=bad: alerts.create(etcd, alert(BASE_MS, **b))).reason == alerts.INVALID_ALERT  # type: ignore[misc]
    missing = alert(BASE_MS)
    del missing["severity"]
    assert refusal(lambda: alerts.create(etcd, missing)).reason == alerts.INVALID_ALERT
    assert refusal(lambda: alerts.get(etcd, "0000000000001-aaaaaaaaaaaa")).code == grpc.StatusCode.NOT_FOUND
    assert refusal(lambda: alerts.get(etcd, "../../slotmap")).reason == alerts.INVALID_ALERT_ID


def test_list_filters_and_paginates_newest_first(etcd: etcd3.Etcd3Client) -> None:
    made = []
    for i in range(7):
        changes: dict[str, Any] = {"rules": ["velocity_1h"]} if i % 2 else {}
        if i == 3:
            changes.update(decision="BLOCK", account_id=42, debit_account_id=42)
        made.append(alerts.create(etcd, alert(BASE_MS + i * 1000, **changes)))
    newest_first = [a["alert_id"] for a in reversed(made)]
    seen: list[str] = []
    token = ""
    while True:
        page, token = alerts.page(etcd, alerts.Filter(), 3, token)
        seen.extend(a["alert_id"] for a in page)
        assert len(page) <= 3
        if not token:
            break
    assert seen == newest_first
    velocity, _ = alerts.page(etcd, alerts.Filter(rule="velocity_1h"), 50)
    assert [a["alert_id"] for a in velocity] == [
        made[5]["alert_id"],
        made[3]["alert_id"],
        made[1]["alert_id"],
    ]
    blocked, _ = alerts.page(etcd, alerts.Filter(decision="BLOCK", account_id=42), 50)
    assert [a["alert_id"] for a in blocked] == [made[3]["alert_id"]]
    window, _ = alerts.page(
        etcd, alerts.Filter(created_since_unix_ms=BASE_MS + 2000, created_until_unix_ms=BASE_MS + 4000), 50
    )
    assert [a["created_at_unix_ms"] for a in window] == [BASE_MS + 4000, BASE_MS + 3000, BASE_MS + 2000]
    alerts.acknowledge(etcd, made[0]["alert_id"], "risk_officer:k1")
    acked, _ = alerts.page(etcd, alerts.Filter(status="ACKNOWLEDGED"), 50)
    assert [a["alert_id"] for a in acked] == [made[0]["alert_id"]]
    for bad_call, reason in (
        (lambda: alerts.page(etcd, alerts.Filter(), 501), "INVALID_PAGE_SIZE"),
        (lambda: alerts.page(etcd, alerts.Filter(), 10, "garbage!"), "INVALID_PAGE_TOKEN"),
        (lambda: alerts.page(etcd, alerts.Filter(status="NOPE"), 10), alerts.INVALID_FILTER),
        (lambda: alerts.page(etcd, alerts.Filter(created_since_unix_ms=5, created_until_unix_ms=4), 10),
         alerts.INVALID_FILTER),
    ):  # fmt: skip
        error = refusal(bad_call)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


def test_acknowledge_resolve_and_review_state(etcd: etcd3.Etcd3Client) -> None:
    alert_id = alerts.create(etcd, alert(BASE_MS))["alert_id"]
    acked = alerts.acknowledge(etcd, alert_id, "risk_officer:k1", "looking")
    assert (acked["status"], acked["actor"], acked["note"]) == ("ACKNOWLEDGED", "risk_officer:k1", "looking")
    assert alerts.acknowledge(etcd, alert_id, "risk_officer:k2")["actor"] == "risk_officer:k1"
    assert (
        refusal(lambda: alerts.resolve(etcd, alert_id, "risk_officer:k1", " ")).reason == alerts.INVALID_NOTE
    )
    done = alerts.resolve(etcd, alert_id, "risk_officer:k1", "false positive")
    assert (done["status"], done["note"]) == ("RESOLVED", "false positive")
    again = refusal(lambda: alerts.resolve(etcd, alert_id, "risk_officer:k2", "me too"))
    assert (again.code, again.reason) == (grpc.StatusCode.FAILED_PRECONDITION, alerts.ALERT_RESOLVED)
    assert (
        refusal(lambda: alerts.acknowledge(etcd, alert_id, "risk_officer:k2")).reason == alerts.ALERT_RESOLVED
    )
    # The review outcome is recorded whatever the alert's status; a repeat keeps the first note.
    pending = alerts.set_review_state(etcd, alert_id, "PENDING", "risk-engine", "", BASE_MS + 60_000)
    assert alerts.shown_review_state(pending, BASE_MS) == "PENDING"
    assert alerts.shown_review_state(pending, BASE_MS + 60_000) == "EXPIRED"
    assert alerts.set_review_state(etcd, alert_id, "APPROVED", "risk_officer:k1", "ok")["note"] == "ok"
    assert alerts.set_review_state(etcd, alert_id, "APPROVED", "risk_officer:k2", "")["note"] == "ok"


def test_a_stale_read_cannot_clobber_a_resolve(etcd: etcd3.Etcd3Client) -> None:
    alert_id = alerts.create(etcd, alert(BASE_MS))["alert_id"]
    _, read_revision = alerts.get(etcd, alert_id)
    alerts.acknowledge(etcd, alert_id, "risk_officer:k1")
    stale = refusal(lambda: alerts.resolve(etcd, alert_id, "risk_officer:k2", "done", read_revision))
    assert (stale.code, stale.reason) == (grpc.StatusCode.ABORTED, alerts.ALERT_CONFLICT)
    assert alerts.get(etcd, alert_id)[0]["status"] == "ACKNOWLEDGED"


def test_concurrent_resolves_exactly_one_wins(etcd: etcd3.Etcd3Client, endpoint: str) -> None:
    alert_id = alerts.create(etcd, alert(BASE_MS))["alert_id"]
    officers = 6
    barrier = threading.Barrier(officers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def officer(n: int) -> None:
        client = meta.connect(endpoint)  # each officer its own gateway's connection
        barrier.wait()
        try:
            alerts.resolve(client, alert_id, f"risk_officer:k{n}", f"resolved by {n}")
            result = f"won:{n}"
        except BankError as error:
            result = error.reason
        finally:
            client.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=officer, args=(n,)) for n in range(officers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [o for o in outcomes if o.startswith("won:")]
    assert len(outcomes) == officers and len(winners) == 1, outcomes
    assert sorted(set(outcomes) - set(winners)) == [alerts.ALERT_RESOLVED]
    stored, _ = alerts.get(etcd, alert_id)
    assert stored["note"] == f"resolved by {winners[0].split(':')[1]}"


def test_purge_deletes_only_old_resolved_alerts(etcd: etcd3.Etcd3Client) -> None:
    old_resolved = alerts.create(etcd, alert(BASE_MS))["alert_id"]
    alerts.resolve(etcd, old_resolved, "risk_officer:k1", "closed")
    old_open = alerts.create(etcd, alert(BASE_MS + 1))["alert_id"]
    recent = alerts.create(etcd, alert(BASE_MS + 10_000, status="RESOLVED"))["alert_id"]
    assert alerts.purge(etcd, BASE_MS + 5_000) == 1
    assert refusal(lambda: alerts.get(etcd, old_resolved)).code == grpc.StatusCode.NOT_FOUND
    assert alerts.get(etcd, old_open)[0]["status"] == "OPEN"
    assert alerts.get(etcd, recent)[0]["status"] == "RESOLVED"


def test_the_gateways_write_ahead_and_settle(etcd: etcd3.Etcd3Client, endpoint: str) -> None:
    """EtcdAlerts (gateway.risk.alerts): intents written before routing are
    settled by compare-and-set, so an officer's change made meanwhile wins."""
    sink = EtcdAlerts(endpoint)
    try:
        updated, removed, touched = (alert(BASE_MS + i, actor="") for i in range(3))
        asyncio.run(sink.write([updated, removed, touched]))
        alerts.acknowledge(etcd, touched["alert_id"], "risk_officer:k1", "on it")
        final = {**updated, "review_state": "PENDING", "review_deadline_unix_ms": BASE_MS + 60_000}
        too_late = {**touched, "review_state": "PENDING"}
        asyncio.run(sink.settle([(updated, final), (removed, None), (touched, too_late)]))
        assert alerts.get(etcd, updated["alert_id"])[0] == final
        assert refusal(lambda: alerts.get(etcd, removed["alert_id"])).code == grpc.StatusCode.NOT_FOUND
        kept = alerts.get(etcd, touched["alert_id"])[0]
        assert (kept["status"], kept["review_state"], kept["note"]) == ("ACKNOWLEDGED", "", "on it")
    finally:
        sink.close()
