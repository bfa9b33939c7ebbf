"""Alerts in etcd, shared by every gateway, under the fixed schema:
`/shardbank/risk/alerts/<alert_id>`, alert_id = `<created ms, 13 digits>-<12 hex>`
(sorts by time). This module writes new alerts, in batches (one etcd
transaction per hundred), each checked against the schema by
`shardbank.alerts.check_alert`; the alert store (`shardbank/alerts.py`) and
the risk officer's API (acknowledge, resolve, review) read and update them.

Alerts are written ahead: before the transfers are routed (RiskGate), from
what the gateway knows then, and settled after the outcome only where it
differs (a review hold's deadline) or where the decision did not become the
transfer's (a resend of a recorded id: the intent is removed). A gateway that
dies mid-call therefore leaves an alert for every transfer it may have moved,
never a flagged transfer without one. Settling compares the stored value with
the intent, so it never overwrites what a risk officer did meanwhile.

A failed write never fails a transfer (the decision is stored on the
transfer record either way); it is logged `risk_alert_write_failed` with the
transfer ids, so an operator can raise it again from the records.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog

from gateway.risk.engine import Assessment
from shardbank import alerts as shared_alerts
from shardbank import meta
from shardbank.v1 import types_pb2

log = structlog.get_logger("gateway.risk")

ALERTS = shared_alerts.ALERTS
# Alerts put in one etcd transaction (etcd's default max-txn-ops is 128).
ALERTS_PER_TXN_MAX = 100
KIND_NAMES = {
    types_pb2.TRANSFER_KIND_TRANSFER: "TRANSFER",
    types_pb2.TRANSFER_KIND_PAYMENT: "PAYMENT",
    types_pb2.TRANSFER_KIND_DEPOSIT: "DEPOSIT",
    types_pb2.TRANSFER_KIND_WITHDRAWAL: "WITHDRAWAL",
}


def new_alert_id(now_ms: int) -> str:
    return shared_alerts.new_alert_id(now_ms)


def alert_record(
    alert_id: str,
    now_ms: int,
    transfer: types_pb2.Transfer,
    assessment: Assessment,
    review_pending: bool = False,
) -> dict[str, Any]:
    """The alert's JSON value (shared schema; see the module doc).
    `review_pending`: the transfer waits for a risk officer (held for review)."""
    return {
        "alert_id": alert_id,
        "created_at_unix_ms": now_ms,
        "updated_at_unix_ms": now_ms,
        "transfer_id": transfer.id,
        "transfer_kind": KIND_NAMES.get(transfer.kind, "TRANSFER"),
        "debit_account_id": transfer.debit_account_id,
        "credit_account_id": transfer.credit_account_id,
        "customer_id": assessment.subject_customer_id,
        "account_id": assessment.subject_account_id,
        "amount": transfer.amount,
        "currency": transfer.currency,
        "decision": assessment.decision_name,
        "score": assessment.score,
        "rules": list(assessment.rules),
        "aml_typologies": list(assessment.aml_typologies),
        "severity": assessment.severity,
        "status": "OPEN",
        "actor": "",
        "note": "",
        "review_state": "PENDING" if review_pending else "",
        "review_deadline_unix_ms": transfer.review_deadline_unix_ms,
    }


# (the alert as written ahead, what it should be now: None = remove it)
Settlement = tuple[dict[str, Any], dict[str, Any] | None]


class AlertSink(Protocol):
    async def write(self, records: Sequence[dict[str, Any]]) -> None: ...

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        """Each intent becomes its final value (or goes), only if unchanged since written."""


class EtcdAlerts:
    """Puts alerts into etcd from a worker thread (the etcd client is synchronous)."""

    def __init__(self, etcd_endpoint: str) -> None:
        self._endpoint = etcd_endpoint
        self._client: Any = None

    async def write(self, records: Sequence[dict[str, Any]]) -> None:
        await self._in_thread("risk_alert_write_failed", records, lambda client: _put(client, records))

    async def settle(self, settlements: Sequence[Settlement]) -> None:
        intents = [intent for intent, _ in settlements]
        await self._in_thread("risk_alert_settle_failed", intents, lambda c: _settle(c, settlements))

    async def _in_thread(
        self, failed_event: str, records: Sequence[dict[str, Any]], work: Callable[[Any], None]
    ) -> None:
        """Run `work` with a connected client off the event loop; a failure is
        logged with the alert and transfer ids and never reaches the transfer."""
        if not records:
            return

        def run() -> None:
            if self._client is None:
                self._client = meta.connect(self._endpoint)
            work(self._client)

        try:
            await asyncio.to_thread(run)
        except Exception as exc:
            self._client = None
            log.error(
                failed_event,
                error=type(exc).__name__,
                alert_ids=[r["alert_id"] for r in records],
                transfer_ids=[r["transfer_id"] for r in records],
            )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _put(client: Any, records: Sequence[dict[str, Any]]) -> None:
    for start in range(0, len(records), ALERTS_PER_TXN_MAX):
        chunk = records[start : start + ALERTS_PER_TXN_MAX]
        client.transaction(
            compare=[],
            success=[client.transactions.put(shared_alerts.key_of(r["alert_id"]), _encode(r)) for r in chunk],
            failure=[],
        )


def _settle(client: Any, settlements: Sequence[Settlement]) -> None:
    for intent, final in settlements:
        key = shared_alerts.key_of(intent["alert_id"])
        ops = client.transactions
        change = ops.delete(key) if final is None else ops.put(key, _encode(final))
        done, _ = client.transaction(
            compare=[client.transactions.value(key) == _encode(intent)], success=[change], failure=[]
        )
        if not done:  # a risk officer acted on it already, or the write-ahead failed
            log.warning("risk_alert_changed_before_settled", alert_id=intent["alert_id"])


def _encode(record: dict[str, Any]) -> str:
    """The stored form; settling compares it byte for byte."""
    return json.dumps(shared_alerts.check_alert(record), separators=(",", ":"))


def read_alerts(etcd_endpoint: str) -> list[dict[str, Any]]:
    """Every alert, oldest first (tests, tools; the alert API pages properly)."""
    client = meta.connect(etcd_endpoint)
    try:
        found = [json.loads(value) for value, _ in client.get_prefix(ALERTS, sort_order="ascend")]
    finally:
        client.close()
    return found
