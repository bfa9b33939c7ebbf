"""Weighted score -> decision, for one transfer. Pure: no I/O, `now` given.

The score is the sum of the weights of the fired rules that are not
alert-only; score >= block_score blocks, >= review_score holds for review,
else the transfer is allowed. Alert-only rules (AML typologies: structuring,
funnels, dormant reactivation) never change the decision, so the customer is
not tipped off, but they raise an alert.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.risk.config import SEVERITIES, RiskConfig, Rule
from gateway.risk.features import Features
from gateway.risk.rules import KINDS, Kind
from shardbank.v1 import types_pb2

ALLOW = types_pb2.RISK_DECISION_ALLOW
REVIEW = types_pb2.RISK_DECISION_REVIEW
BLOCK = types_pb2.RISK_DECISION_BLOCK
DECISION_NAMES = {ALLOW: "ALLOW", REVIEW: "REVIEW", BLOCK: "BLOCK"}


@dataclass(frozen=True)
class Assessment:
    """The engine's answer for one transfer (the seam with review: see review.py)."""

    decision: types_pb2.RiskDecision.ValueType
    score: int
    rules: tuple[str, ...]
    aml_typologies: tuple[str, ...]
    severity: str
    # Only alert-only rules fired (decision ALLOW): alert, do not hold or block.
    alert_only: bool
    # Which account the fired rules looked at (the credit side for funnel_in alone).
    subject_account_id: int
    subject_customer_id: str

    @property
    def needs_alert(self) -> bool:
        return self.decision != ALLOW or self.alert_only

    @property
    def decision_name(self) -> str:
        return DECISION_NAMES[self.decision]

    def to_proto(self, alert_id: str = "") -> types_pb2.RiskAssessment:
        return types_pb2.RiskAssessment(
            decision=self.decision, score=self.score, rules=list(self.rules), alert_id=alert_id
        )


_COMPILED: dict[int, tuple[RiskConfig, tuple[tuple[Rule, Kind], ...]]] = {}


def _compiled(config: RiskConfig) -> tuple[tuple[Rule, Kind], ...]:
    """Each rule with its kind, looked up once per configuration (hot path)."""
    found = _COMPILED.get(id(config))
    if found is None or found[0] is not config:
        _COMPILED.clear()  # one configuration in force at a time (plus a reload)
        found = (config, tuple((rule, KINDS[rule.kind]) for rule in config.rules))
        _COMPILED[id(config)] = found
    return found[1]


def assess(features: Features, config: RiskConfig) -> Assessment:
    same_currency = features.transfer.currency == config.currency
    fired = [
        rule
        for rule, kind in _compiled(config)
        if (same_currency or not kind.amounts) and kind.check(features, rule, config)
    ]
    score = sum(rule.weight for rule in fired if not rule.alert_only)
    if score >= config.block_score:
        decision = BLOCK
    elif score >= config.review_score:
        decision = REVIEW
    else:
        decision = ALLOW
    severity_index = max((SEVERITIES.index(rule.severity) for rule in fired), default=0)
    if decision == BLOCK:
        severity_index = len(SEVERITIES) - 1
    elif decision == REVIEW:
        severity_index = max(severity_index, 1)
    subject = features.debit or features.credit
    if fired and all(KINDS[rule.kind].on_credit for rule in fired):
        subject = features.credit
    return Assessment(
        decision=decision,
        score=score,
        rules=tuple(rule.name for rule in fired),
        aml_typologies=tuple(dict.fromkeys(r.aml_typology for r in fired if r.aml_typology)),
        severity=SEVERITIES[severity_index],
        alert_only=decision == ALLOW and bool(fired),
        subject_account_id=subject.account_id if subject is not None else 0,
        subject_customer_id=subject.customer_id if subject is not None else "",
    )
