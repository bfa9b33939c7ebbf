"""A test hook that marks transfers for review without the risk engine.

`--review-test-rule 'amount>=N'` (gateway flag, default off) sends every
TRANSFER/PAYMENT of at least N minor units to `ReviewDesk.hold` with an
alert of rule `test_review_rule`. It exists so the review path can be tested
end to end before the engine is wired in; it is staff-configured (a process
flag), never reachable by a client, and logged at start.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.auth.principal import Principal
from shardbank import alerts
from shardbank.v1 import types_pb2

if TYPE_CHECKING:
    from gateway.review.desk import ReviewDesk

RULE_NAME = "test_review_rule"
SCORE = 100
_RULE_RE = re.compile(r"\s*amount\s*>=\s*([0-9]{1,19})\s*")
_HOLDABLE = (types_pb2.TRANSFER_KIND_TRANSFER, types_pb2.TRANSFER_KIND_PAYMENT)


@dataclass(frozen=True)
class ReviewTestRule:
    """Transfers and payments of at least `amount_min` minor units go to review."""

    amount_min: int

    def fires(self, transfer: types_pb2.Transfer) -> bool:
        return transfer.kind in _HOLDABLE and transfer.amount >= self.amount_min

    def assessment(self) -> types_pb2.RiskAssessment:
        return types_pb2.RiskAssessment(
            decision=types_pb2.RISK_DECISION_REVIEW, score=SCORE, rules=[RULE_NAME]
        )


def parse_rule(text: str) -> ReviewTestRule | None:
    """'amount>=N' -> ReviewTestRule(N); '' -> None; anything else is a ValueError."""
    if not text:
        return None
    match = _RULE_RE.fullmatch(text)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError("--review-test-rule must look like amount>=N with N > 0 (minor units)")
    return ReviewTestRule(int(match.group(1)))


def alert_for(
    transfer: types_pb2.Transfer, assessment: types_pb2.RiskAssessment, customer_id: str, at_unix_ms: int
) -> dict[str, Any]:
    """The alert the risk engine would raise for a REVIEW decision (shared schema)."""
    return {
        "alert_id": alerts.new_alert_id(at_unix_ms),
        "created_at_unix_ms": at_unix_ms,
        "updated_at_unix_ms": at_unix_ms,
        "transfer_id": transfer.id,
        "transfer_kind": types_pb2.TransferKind.Name(transfer.kind).removeprefix("TRANSFER_KIND_"),
        "debit_account_id": transfer.debit_account_id,
        "credit_account_id": transfer.credit_account_id,
        "customer_id": customer_id,
        "account_id": transfer.debit_account_id,
        "amount": transfer.amount,
        "currency": transfer.currency,
        "decision": "REVIEW",
        "score": assessment.score,
        "rules": list(assessment.rules),
        "aml_typologies": [],
        "severity": "MEDIUM",
        "status": alerts.OPEN,
        "actor": "risk-engine",
        "note": "",
        "review_state": "",
        "review_deadline_unix_ms": 0,
    }


async def raise_alerts(
    desk: ReviewDesk, transfers: Sequence[types_pb2.Transfer], rule: ReviewTestRule, caller: Principal | None
) -> list[types_pb2.RiskAssessment]:
    """One alert per transfer the hook picked; the assessments naming them."""
    customer_id = caller.customer_id if caller is not None else ""
    assessments = []
    for transfer in transfers:
        assessment = rule.assessment()
        stored = await desk.store.call(
            alerts.create, alert_for(transfer, assessment, customer_id, alerts.now_ms())
        )
        assessment.alert_id = stored["alert_id"]
        assessments.append(assessment)
    return assessments
